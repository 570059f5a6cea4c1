"""Headless Chromium for the status page's browser tests (Debian's chromium + chromium-driver,
driven by selenium): a signed-in page, and bounded waits on what it shows."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framebus.daemon import Daemon

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a dev extra) is missing")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/debian-packages.txt; "
           "make setup installs them)")

WAIT_S = 30.0
__all__ = ["CHROMIUM", "NEEDS_CHROMIUM", "WAIT_S", "By", "Page", "browser", "closed_port"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
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

    def text(self, selector: str) -> str:
        """The text of the first element matching ``selector`` ("" if none), in one script."""
        return str(self.driver.execute_script(
            "const node = document.querySelector(arguments[0]);"
            "return node ? node.textContent : ''", selector))

    def wait(self, condition: Any, what: str, timeout: float = WAIT_S) -> Any:
        # an element the page replaced between find and read is stale: look again
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda _driver: condition(), message=f"waiting for {what}")


@contextmanager
def browser(daemon: Daemon, tmp: Path, port: int | None = None,
            size: tuple[int, int] = (1400, 940)) -> Iterator[Page]:
    """Chromium signed in (?token=) on the daemon's page, at ``port`` if given (a proxy's)."""
    assert daemon.control is not None and daemon.http_token is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--window-size={size[0]},{size[1]}", f"--user-data-dir={tmp / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        address = f"127.0.0.1:{port}" if port else daemon.control.address
        url = f"http://{address}/"
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        driver.get(f"{url}?token={daemon.http_token.get_secret_value()}")
        yield Page(driver, daemon, url)
    finally:
        driver.quit()
