"""The status page never shows stale data as live, and many dead cameras do not hide the
subscribers (issue 21). Headless Chromium (browserkit) reaches the daemon through a FaultProxy,
so the test can make the daemon hang (blackhole: every request times out) or vanish (the
proxy closed: connections refused) under the page's feet. The daemon has one streaming camera
(lobby) and five pointed at closed loopback ports. Every wait is bounded."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from browserkit import NEEDS_CHROMIUM, By, Page, browser, closed_port
from fanoutkit import ReaderProcess, running_daemon
from faultproxy import FaultProxy
from rtspserver import RtspServer

from framebus.demo import DEMO_MOUNTS

pytestmark = NEEDS_CHROMIUM
DEAD = [f"dead{i}" for i in range(1, 6)]
GREEN = "rgb(26, 127, 55)"  # --ok, the badge of a streaming camera (light scheme)
BADGES = """return Array.from(document.querySelectorAll("article.camera"), (card) => {
  const badge = card.querySelector(".state");
  return [card.dataset.name, badge.textContent, getComputedStyle(badge).backgroundColor,
          card.querySelector(".seen").textContent,
          card.querySelector("button.toggle").checkVisibility()];
});"""


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Page, FaultProxy]]:
    tmp = tmp_path_factory.mktemp("stale")
    cameras = {"lobby": {"url": ""}, **{name: {"url": f"rtsp://127.0.0.1:{closed_port()}/x"}
                                        for name in DEAD}}
    subscribers = {"detector": {"camera": "lobby", "format": "gray", "width": 320},
                   "recorder": {"camera": "lobby", "format": "jpeg", "width": 320}}
    with RtspServer(DEMO_MOUNTS[:1]) as server:
        cameras["lobby"]["url"] = server.url("lobby")
        with running_daemon(cameras, subscribers, tmp / "fifos",
                            http={"listen": "127.0.0.1:0"}) as daemon:
            assert daemon.control is not None
            host, port = daemon.control.address.rsplit(":", 1)
            readers = [ReaderProcess(tmp / "fifos" / f"{name}.fifo") for name in subscribers]
            try:
                with FaultProxy((host, int(port)), lifetime=300) as proxy, \
                        browser(daemon, tmp, port=proxy.port) as page:
                    yield page, proxy
            finally:
                for reader in readers:
                    reader.kill()


def test_five_dead_cameras_leave_the_subscribers_on_the_first_screen(
        proxied: tuple[Page, FaultProxy]) -> None:
    page, _ = proxied
    page.wait(lambda: page.state("lobby") == "streaming", "lobby to stream")
    page.wait(lambda: all(page.state(name) in ("connecting", "backoff") for name in DEAD),
              "the dead cameras' states")
    summary = page.wait(lambda: "1 of 6 cameras streaming" in (text := page.text("#summary"))
                        and text, "the summary")
    assert all(f"{name} (" in summary for name in DEAD)
    page.wait(lambda: "connected" in page.text("#subscribers tbody"), "the readers")
    # the table's heading and every row lie within the window, without scrolling
    bottom, height = page.driver.execute_script(
        'return [document.querySelector("#subscribers tbody tr:last-child")'
        '.getBoundingClientRect().bottom, window.innerHeight]')
    assert 0 < bottom <= height, (bottom, height)
    for name in DEAD:  # a compact row each: no picture, no live view offered
        card = page.card(name)
        assert "compact" in card.get_attribute("class") and card.size["height"] < 80
        assert not card.find_element(By.CSS_SELECTOR, "button.toggle").is_displayed()
    # on a narrow screen (a phone) the subscribers come first
    size = page.driver.get_window_size()
    page.driver.set_window_size(420, 900)
    try:
        page.wait(lambda: page.driver.execute_script(
            'return document.getElementById("subscribers-section").getBoundingClientRect().top'
            ' < document.getElementById("cameras-section").getBoundingClientRect().top'),
            "the subscribers above the cameras", timeout=5)
    finally:
        page.driver.set_window_size(size["width"], size["height"])


def _all_stale(page: Page) -> bool:
    badges = page.driver.execute_script(BADGES)
    return bool(page.driver.execute_script('return document.body.classList.contains("stale")')
                and badges and all(text == "no data" and color != GREEN
                                   and re.fullmatch(r"last seen \d+ s ago", seen)
                                   and not toggle for _, text, color, seen, toggle in badges))


def test_an_unreachable_daemon_turns_every_card_stale(proxied: tuple[Page, FaultProxy]) -> None:
    page, proxy = proxied
    page.wait(lambda: page.state("lobby") == "streaming", "lobby to stream")
    page.wait(lambda: page.card("lobby").find_element(By.CSS_SELECTOR, "button.toggle")
              .is_displayed(), "lobby's live view button")
    proxy.blackhole()  # the daemon hangs: requests time out
    try:
        page.wait(lambda: _all_stale(page), "every card stale while requests hang", timeout=15)
        assert page.text("#summary").startswith("as of ")
        assert "(when last seen)" in page.text("#daemon")
        opacity = page.driver.execute_script(
            'return Number(getComputedStyle(document.getElementById("subscribers")).opacity)')
        assert opacity < 1  # the subscriber figures are greyed out too
        seen = page.text('article[data-name="lobby"] .seen')
        page.wait(lambda: page.text('article[data-name="lobby"] .seen') != seen,
                  "the age of the data to grow", timeout=5)
    finally:
        proxy.forward()
    page.wait(lambda: page.state("lobby") == "streaming"
              and not page.text('article[data-name="lobby"] .seen'), "lobby live again")
    badges = {name: color for name, _, color, _, _ in page.driver.execute_script(BADGES)}
    assert badges["lobby"] == GREEN and page.text("#summary").startswith("1 of 6")
    proxy.close()  # the daemon is gone: connections are refused
    page.wait(lambda: _all_stale(page), "every card stale once refused", timeout=10)
    assert "cannot reach the daemon" in page.text("#status")
