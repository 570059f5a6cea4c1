"""/metrics at scale: 300 cameras and 64 run-time ``cameras: "*"`` subscriptions (the cap).

The series of a subscription are bounded (per camera only up to metrics.PER_CAMERA_MAX
cameras, ``camera="*"`` beyond), and a scrape is rendered on a thread of its own and shared by
the scrapes that arrive meanwhile, so scrapers in a loop cannot slow /healthz or the API.
Before both, this scenario made /metrics ~16 MB, ~1 s a scrape, and /healthz ~1 s while two
scrapers looped. The cameras point at a port nothing listens on: they never decode, and with
a long backoff they cost next to nothing, so the test fits in seconds on two cores.
"""

from __future__ import annotations

import asyncio
import http.client
import statistics
import threading
import time
from pathlib import Path

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from faultkit import DaemonProcess, write_daemon_config
from test_metrics_standard import closed_port, pick, values_of

from framebus.metrics import PER_CAMERA_MAX
from framebus.scrape import SharedRender

CAMERAS = 300
SUBSCRIPTIONS = 64  # http.max_subscriptions' default
MAX_BYTES = 2_000_000  # ~1.1 MB after (the per-camera series of 300 cameras); 16 MB before
MAX_MEDIAN_S = 0.2  # /healthz and /v1/cameras, median while two scrapers loop (~1 s before)


def scrape(address: tuple[str, int]) -> bytes:
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def test_metrics_stay_bounded_and_scrapers_do_not_starve_the_api(tmp_path: Path) -> None:
    port = closed_port()
    slow_retry = {"open_timeout": "1s", "backoff": {"initial": "30s", "max": "60s"}}
    cameras = {f"c{i:03d}": {"url": f"rtsp://127.0.0.1:{port}/x", **slow_retry}
               for i in range(CAMERAS)}
    config = write_daemon_config(tmp_path / "framebus.yaml", tmp_path / "fifos", cameras, {})
    daemon = DaemonProcess(config)
    try:
        api = daemon.api()
        for i in range(SUBSCRIPTIONS):
            status, body = api.json("POST", "/v1/subscriptions",
                                    {"name": f"all{i}", "cameras": "*", "format": "gray"})
            assert status == 201, body
        address = (api.host, api.port)
        began = time.monotonic()
        text = scrape(address)
        alone = time.monotonic() - began
        assert len(text) < MAX_BYTES, len(text)
        # every subscriber is still there, aggregated over its cameras
        assert b'framebus_subscriber_info{camera="*",subscriber="all63",transport="fifo"}' in text
        assert (b'framebus_subscriber_frames_dropped_total{camera="*",reason="slow_reader",'
                b'subscriber="all0"}') in text

        stop = threading.Event()
        scrapes = [0, 0]

        def loop(index: int) -> None:
            while not stop.is_set():
                scrape(address)
                scrapes[index] += 1
        scrapers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(2)]
        for thread in scrapers:
            thread.start()
        try:
            time.sleep(0.5)  # both in their loops
            latencies: dict[str, list[float]] = {"/healthz": [], "/v1/cameras": []}
            for _ in range(15):
                for path, seen in latencies.items():
                    began = time.monotonic()
                    assert api.request("GET", path)[0] == 200
                    seen.append(time.monotonic() - began)
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in scrapers:
                thread.join(30)
        medians = {path: statistics.median(seen) for path, seen in latencies.items()}
        shown = ", ".join(f"{path} {median * 1000:.1f} ms" for path, median in medians.items())
        print(f"/metrics {len(text)} bytes, {alone * 1000:.0f} ms alone; {sum(scrapes)} "
              f"scrapes while measuring; medians {shown}")
        assert all(scrapes), scrapes
        assert all(median < MAX_MEDIAN_S for median in medians.values()), medians
    finally:
        daemon.stop()


def test_per_camera_series_up_to_the_bound_then_one_summed_as_star(tmp_path: Path) -> None:
    port = closed_port()
    names = [f"c{i}" for i in range(PER_CAMERA_MAX + 1)]
    cameras = {name: {"url": f"rtsp://127.0.0.1:{port}/x", "backoff": {"initial": "30s"}}
               for name in names}
    subscribers = {"few": {"cameras": names[:PER_CAMERA_MAX], "format": "gray"},
                   "many": {"cameras": "*", "format": "gray", "transport": "shm"}}
    with running_daemon(cameras, subscribers, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0"}) as daemon:
        values = values_of(ApiClient(daemon, token="").request("GET", "/metrics")[2].decode())
    offered = pick(values, "framebus_subscriber_frames_offered_total")
    assert {dict(key)["camera"] for key in offered if ("subscriber", "few") in key} == set(
        names[:PER_CAMERA_MAX])  # each camera its own series, up to the bound
    assert [dict(key)["camera"] for key in offered if ("subscriber", "many") in key] == ["*"]
    # the FIFO's own series too: one per camera, each naming one camera (joins on camera)
    for metric in ("framebus_subscriber_info", "framebus_subscriber_connected",
                   "framebus_subscriber_disconnects_total",
                   "framebus_subscriber_latency_seconds_count"):
        few = pick(values, metric, subscriber="few")
        assert sorted(dict(key)["camera"] for key in few) == names[:PER_CAMERA_MAX], metric
    assert pick(values, "framebus_subscriber_info", subscriber="many", camera="*")
    for metric in ("framebus_subscriber_shm_pinned_slots", "framebus_subscriber_shm_segment_bytes",
                   "framebus_subscriber_connected", "framebus_subscriber_latency_seconds_count"):
        assert [dict(key)["camera"] for key in pick(values, metric, subscriber="many")] == ["*"]
    failures = pick(values, "framebus_subscriber_shm_failures_total", subscriber="many")
    assert {dict(key)["camera"] for key in failures} == {"*"} and len(failures) == 4


def test_concurrent_scrapes_share_one_render_made_off_the_loop() -> None:
    loop_thread: list[str] = []
    threads: list[str] = []

    def slow() -> bytes:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)
        return b"x %d" % len(threads)

    async def scrapes() -> list[bytes]:
        loop_thread.append(threading.current_thread().name)
        shared = SharedRender(slow)
        try:
            together = await asyncio.gather(*(shared.get() for _ in range(10)))
            await asyncio.sleep(0.12)  # past "as long again" (~0.05 s): a new render
            return [*together, await shared.get()]
        finally:
            shared.close()
    answers = asyncio.run(scrapes())
    assert answers == [b"x 1"] * 10 + [b"x 2"], answers
    assert len(threads) == 2 and loop_thread[0] not in threads, threads


def test_a_failed_render_fails_its_scrapes_and_the_next_one_renders_again() -> None:
    calls: list[int] = []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return b"ok"

    async def scrapes() -> bytes:
        shared = SharedRender(flaky)
        try:
            with pytest.raises(RuntimeError):
                await shared.get()
            return await shared.get()
        finally:
            shared.close()
    assert asyncio.run(scrapes()) == b"ok" and len(calls) == 2
