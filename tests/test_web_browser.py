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
from collections.abc import Iterator
from pathlib import Path

import pytest
from browserkit import NEEDS_CHROMIUM, By, Page, browser, closed_port
from fanoutkit import ReaderProcess, running_daemon
from rtspserver import RtspServer
from waiting import wait_for

import framebus
from framebus.demo import DEMO_MOUNTS, DEMO_SUBSCRIBERS

pytestmark = NEEDS_CHROMIUM
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


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with RtspServer(DEMO_MOUNTS) as server:
        yield from _page(server, tmp_path_factory.mktemp("browser"))


def _page(server: RtspServer, tmp: Path) -> Iterator[Page]:
    cameras = {"lobby": {"url": server.url("lobby")}, "yard": {"url": server.url("yard")},
               "gate": {"url": f"rtsp://127.0.0.1:{closed_port()}/gate"}}
    subscribers = {sub.name: {"camera": sub.camera, "format": sub.format,
                              **({"width": sub.width} if sub.width else {})}
                   for sub in DEMO_SUBSCRIBERS}  # lobby-bgr24, yard-gray
    with running_daemon(cameras, subscribers, tmp / "fifos",
                        http={"listen": "127.0.0.1:0"}) as daemon:
        readers = [ReaderProcess(tmp / "fifos" / f"{name}.fifo") for name in subscribers]
        try:
            with browser(daemon, tmp) as page:
                yield page
        finally:
            for reader in readers:
                reader.kill()


def test_the_page_shows_every_camera_and_its_state(page: Page) -> None:
    assert page.driver.current_url == page.url  # ?token= redirected to /, the token gone
    page.wait(lambda: page.driver.find_elements(By.CSS_SELECTOR, "article.camera"), "cameras")
    names = [card.get_attribute("data-name")
             for card in page.driver.find_elements(By.CSS_SELECTOR, "article.camera")]
    assert sorted(names) == ["gate", "lobby", "yard"]  # sorted among streaming and not
    page.wait(lambda: page.state("lobby") == "streaming", "lobby to stream")
    page.wait(lambda: page.state("gate") in ("connecting", "backoff")
              and page.card("gate").find_element(By.CSS_SELECTOR, ".reason").text,
              "gate's state and reason")
    # a camera that does not stream is a compact row: no picture, no live view offered
    assert "compact" in page.card("gate").get_attribute("class")
    assert not page.card("gate").find_element(By.CSS_SELECTOR, "button.toggle").is_displayed()
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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "\u2014": not known yet
        return 0.0


def test_the_summary_counts_streaming_cameras_and_names_the_others(page: Page) -> None:
    page.wait(lambda: page.state("lobby") == page.state("yard") == "streaming", "both to stream")
    summary = page.wait(lambda: "2 of 3 cameras streaming" in (text := page.text("#summary"))
                        and text, "the summary")
    assert "not streaming: gate (" in summary  # named, with its state
    assert "lobby" not in summary and "yard" not in summary


def test_each_subscriber_shows_fps_latency_and_last_sent(page: Page) -> None:
    figures = """return Array.from(document.querySelectorAll("#subscribers tbody tr"),
        (row) => Array.from(row.children, (cell) => cell.textContent))"""
    head = page.driver.execute_script(
        'return Array.from(document.querySelectorAll("#subscribers th"), (th) => th.textContent)')
    assert head[5:8] == ["fps", "latency\np50 / p99", "last sent"]

    def shown() -> bool:  # every reader connected, its frames counted over >= 2 answers
        rows = page.driver.execute_script(figures)
        return len(rows) == 2 and all(
            row[4] == "connected" and _number(row[5]) > 1 and row[6].startswith("\u2264")
            and row[6].endswith(" ms") and row[7] in ("0 s ago", "1 s ago") for row in rows)

    page.wait(shown, "each subscriber's fps, latency p50/p99 and last sent")


def test_the_header_shows_the_version_and_an_uptime_that_grows(page: Page) -> None:
    first = page.wait(lambda: page.text("#daemon"), "the version and uptime")
    assert first.startswith(f"version {framebus.__version__}, up ")
    page.wait(lambda: page.text("#daemon") not in ("", first), "the uptime to grow", timeout=5)


def test_cameras_have_fps_and_frame_age_sparklines(page: Page) -> None:
    script = """const svg = document.querySelectorAll(
        `article[data-name="${arguments[0]}"] svg.spark`);
    return Array.from(svg, (s) => [s.namespaceURI.endsWith("/svg"),
        s.querySelector("path").getAttribute("d")])"""

    def drawn() -> bool:  # a line of at least 4 answers in each, inline SVG
        lines = page.driver.execute_script(script, "lobby")
        return len(lines) == 2 and all(svg and d.count("L") >= 3 for svg, d in lines)

    page.wait(drawn, "lobby's fps and frame-age lines")
    values = page.driver.execute_script(
        'return Array.from(document.querySelectorAll(\'article[data-name="lobby"] '
        '.spark-value\'), (v) => v.textContent)')
    assert _number(values[0]) > 1 and values[1].endswith(" s")


def test_screenshot(page: Page, tmp_path: Path) -> None:
    """A picture of the page, once every live image shows (the README's docs/status-page.png
    with FRAMEBUS_SCREENSHOT=docs/status-page.png)."""
    for name in ("lobby", "yard"):
        page.wait(lambda name=name: page.driver.execute_script(PIXELS, name), f"{name}'s image")
    page.wait(lambda: page.state("gate") == "backoff", "gate in backoff")
    page.wait(lambda: page.driver.execute_script(  # some history in the sparklines
        'return document.querySelector(\'article[data-name="lobby"] svg.spark path\')'
        '.getAttribute("d").split("L").length > 8'), "lobby's fps line")
    target = Path(os.environ.get("FRAMEBUS_SCREENSHOT") or tmp_path / "status-page.png")
    assert page.driver.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
