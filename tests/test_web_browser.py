"""The status page in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by selenium) signs in with ?token= on a daemon with the demo's two RTSP cameras (lobby
H.264 1280x720, yard H.265 640x360) and a third, gate, pointed at a closed loopback port.

It checks what a person would see: every camera, lobby "streaming" and gate not, a live image
that changes, a snapshot link that returns an image, the session cookie out of the page's
reach, and a live view that really stops (the daemon's count) when switched off. Every wait
is bounded (WebDriverWait). With FRAMEBUS_SCREENSHOT=PATH the page is also saved there
(``make screenshot`` writes docs/status-page.png, which the README shows)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fanoutkit import ReaderProcess, running_daemon
from rtspserver import RtspServer
from waiting import wait_for

from framebus.daemon import Daemon
from framebus.demo import DEMO_MOUNTS, DEMO_SUBSCRIBERS

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a dev extra) is missing")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/debian-packages.txt; "
           "make setup installs them)")

WAIT_S = 30.0
# a sample of the image's pixels, drawn into a canvas (same-origin: the canvas is not tainted)
PIXELS = """
const img = document.querySelector(`article[data-name="${arguments[0]}"] img.live`);
if (!img || !img.complete || !img.naturalWidth) return null;
const canvas = document.createElement("canvas");
canvas.width = 64; canvas.height = 36;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0, 64, 36);
return Array.from(context.getImageData(0, 0, 64, 36).data).join(",");
"""
FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(async (r) => done([r.status, r.headers.get("content-type"),
  (await r.arrayBuffer()).byteLength])).catch((e) => done([0, String(e), 0]));
"""


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Page:
    driver: Any
    daemon: Daemon
    url: str

    def card(self, name: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, f'article[data-name="{name}"]')

    def state(self, name: str) -> str:
        return str(self.card(name).find_element(By.CSS_SELECTOR, ".state").text)

    def wait(self, condition: Any, what: str, timeout: float = WAIT_S) -> Any:
        # an element the page replaced between find and read is stale: look again
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda _driver: condition(), message=f"waiting for {what}")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with RtspServer(DEMO_MOUNTS) as server:
        yield from _page(server, tmp_path_factory.mktemp("browser"))


def _page(server: RtspServer, tmp: Path) -> Iterator[Page]:
    cameras = {"lobby": {"url": server.url("lobby")}, "yard": {"url": server.url("yard")},
               "gate": {"url": f"rtsp://127.0.0.1:{_closed_port()}/gate"}}
    subscribers = {sub.name: {"camera": sub.camera, "format": sub.format,
                              **({"width": sub.width} if sub.width else {})}
                   for sub in DEMO_SUBSCRIBERS}  # lobby-bgr24, yard-gray
    with running_daemon(cameras, subscribers, tmp / "fifos",
                        http={"listen": "127.0.0.1:0"}) as daemon:
        readers = [ReaderProcess(tmp / "fifos" / f"{name}.fifo") for name in subscribers]
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,940",
                     f"--user-data-dir={tmp / 'chromium'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            assert daemon.control is not None and daemon.http_token is not None
            url = f"http://{daemon.control.address}/"
            driver.set_page_load_timeout(WAIT_S)
            driver.set_script_timeout(WAIT_S)
            driver.get(f"{url}?token={daemon.http_token.get_secret_value()}")
            yield Page(driver, daemon, url)
        finally:
            driver.quit()
            for reader in readers:
                reader.kill()


def test_the_page_shows_every_camera_and_its_state(page: Page) -> None:
    assert page.driver.current_url == page.url  # ?token= redirected to /, the token gone
    page.wait(lambda: page.driver.find_elements(By.CSS_SELECTOR, "article.camera"), "cameras")
    names = [card.get_attribute("data-name")
             for card in page.driver.find_elements(By.CSS_SELECTOR, "article.camera")]
    assert names == ["gate", "lobby", "yard"]  # sorted, as the API lists them
    page.wait(lambda: page.state("lobby") == "streaming", "lobby to stream")
    page.wait(lambda: page.state("gate") in ("connecting", "backoff")
              and page.card("gate").find_element(By.CSS_SELECTOR, ".reason").text,
              "gate's state and reason")
    assert "no picture" in page.card("gate").text
    lobby = page.card("lobby").text
    assert "1280\u00d7720" in lobby and "h264" in lobby
    page.wait(lambda: "connected" in page.driver.find_element(By.ID, "subscribers").text,
              "a subscriber's reader")
    # the table's rows are rebuilt every second, so read their first cells in one script
    # (atomic in the page's event loop) rather than element by element
    assert page.driver.execute_script(
        'return Array.from(document.querySelectorAll("#subscribers tbody tr td:first-child"),'
        ' (cell) => cell.textContent)') == ["lobby-bgr24", "yard-gray"]
    # the session cookie is HttpOnly: no script on the page can read it
    assert "framebus_session" not in page.driver.execute_script("return document.cookie")


def test_the_live_image_changes(page: Page) -> None:
    page.wait(lambda: page.state("lobby") == "streaming", "lobby to stream")
    first = page.wait(lambda: page.driver.execute_script(PIXELS, "lobby"), "a live image")
    width = page.driver.execute_script(
        'return document.querySelector(\'article[data-name="lobby"] img.live\').naturalWidth')
    assert width == 640  # the page asks for 640 wide
    page.wait(lambda: page.driver.execute_script(PIXELS, "lobby") not in (None, first),
              "the live image to change", timeout=10)


def test_the_snapshot_link_returns_an_image(page: Page) -> None:
    link = page.card("lobby").find_element(By.CSS_SELECTOR, "a.snapshot")
    href = link.get_attribute("href")
    assert href == f"{page.url}v1/cameras/lobby/snapshot.jpg"
    status, content_type, size = page.driver.execute_async_script(FETCH, href)
    assert (status, content_type) == (200, "image/jpeg") and size > 1000


def test_switching_a_live_view_off_ends_its_stream(page: Page) -> None:
    assert page.daemon.control is not None
    live = page.daemon.control.api.web.live
    page.wait(lambda: live.running == 2, "lobby's and yard's live views")  # gate sends none
    toggle = page.card("yard").find_element(By.CSS_SELECTOR, "button.toggle")
    toggle.click()
    wait_for(lambda: live.running == 1, 10, "the daemon to end yard's view")
    assert "live view off" in page.card("yard").text
    toggle.click()
    wait_for(lambda: live.running == 2, 10, "yard's view to run again")


def test_screenshot(page: Page, tmp_path: Path) -> None:
    """A picture of the page, once every live image shows (the README's docs/status-page.png
    with FRAMEBUS_SCREENSHOT=docs/status-page.png)."""
    for name in ("lobby", "yard"):
        page.wait(lambda name=name: page.driver.execute_script(PIXELS, name), f"{name}'s image")
    page.wait(lambda: page.state("gate") == "backoff", "gate in backoff")
    target = Path(os.environ.get("FRAMEBUS_SCREENSHOT") or tmp_path / "status-page.png")
    assert page.driver.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
