"""The status page says when a camera decodes in software although its configuration asks for
hardware (issue 23): headless Chromium (browserkit) on a daemon with a camera on CUDA GPU 97
(which no host has: it falls back) beside a software camera. Every wait is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserkit import NEEDS_CHROMIUM, By, Page, browser
from fanoutkit import running_daemon
from rtspserver import Mount, RtspServer

pytestmark = NEEDS_CHROMIUM
DECODER = """const card = document.querySelector(`article[data-name="${arguments[0]}"]`);
const dd = Array.from(card.querySelectorAll("dt")).find((dt) => dt.textContent === "decoder")
  .nextElementSibling;
return [dd.textContent, dd.title, dd.className, getComputedStyle(dd).color];"""
WARN = "rgb(183, 110, 0)"  # --warn (light scheme)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("hwaccel")
    with RtspServer([Mount(n, width=320, height=180) for n in ("dock", "hall")]) as server:
        cameras = {"dock": {"url": server.url("dock"), "hwaccel": "cuda",
                            "hwaccel_device": "97"},
                   "hall": {"url": server.url("hall")}}
        with running_daemon(cameras, {}, tmp / "fifos", http={"listen": "127.0.0.1:0"}) as daemon, \
                browser(daemon, tmp) as page:
            yield page


def test_a_camera_decoding_in_software_against_its_config_says_so_and_why(page: Page) -> None:
    page.wait(lambda: page.state("dock") == page.state("hall") == "streaming", "both to stream")
    text, title, classes, color = page.wait(
        lambda: (found := page.driver.execute_script(DECODER, "dock"))[0] != "\u2014" and found,
        "dock's decoder")
    assert text == "h264 (software)"
    assert title.startswith("hardware decoding not used: cuda unavailable: "), title
    assert "fallback" in classes.split() and color == WARN
    text, title, classes, color = page.driver.execute_script(DECODER, "hall")
    assert (text, title) == ("h264", "") and "fallback" not in classes.split()
    assert page.card("dock").find_element(By.CSS_SELECTOR, ".state").text == "streaming"
