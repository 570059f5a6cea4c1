"""One FIFO carrying several cameras (PROTOCOL.md section 2): real RTSP cameras at 25 and
5 fps, a real daemon, real reader processes. Each camera's seq only rises, its gaps equal
its own drops, and the slow camera is never starved by the fast one, not even after the
reader stalls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import ApiClient
from fanoutkit import ReaderProcess, running_daemon
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus.config import parse_config
from framebus.daemon import Daemon
from framebus.errors import ConfigError


@pytest.fixture
def daemon(rtsp_server_factory: RtspServerFactory, tmp_path: Path) -> Iterator[Daemon]:
    server: RtspServer = rtsp_server_factory([Mount("fast", width=320, height=240, fps=25),
                                              Mount("slow", width=320, height=240, fps=5)])
    cameras = {name: {"url": server.url(name), "idle_decode": "all"} for name in ("fast", "slow")}
    with running_daemon(cameras, {"both": {"cameras": ["fast", "slow"], "format": "gray",
                                           "width": 160}},
                        tmp_path / "fifos", http={"listen": "127.0.0.1:0"}) as running:
        wait_for(lambda: all(running.store.latest(n) for n in cameras), 20, "both cameras")
        yield running


def by_camera(frames: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for frame in frames:
        grouped.setdefault(frame["camera"], []).append(frame)
    return grouped


def check_streams(frames: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per camera: seq strictly rises and each gap is announced by ``missed``."""
    grouped = by_camera(frames)
    for camera, got in grouped.items():
        for before, after in itertools.pairwise(got):
            assert after["seq"] > before["seq"], camera
            assert after["seq"] - before["seq"] - 1 == after["missed"], (camera, before, after)
        assert {tuple(f["shape"]) for f in got} == {(120, 160)}
    return grouped


def test_one_fifo_interleaves_both_cameras_fairly(daemon: Daemon) -> None:
    reader = ReaderProcess(daemon.config.fifo_dir / "both.fifo")
    reader.wait_frames(10)
    began = time.monotonic()
    start = len(reader.frames)
    wait_for(lambda: sum(f["camera"] == "slow" for f in reader.frames[start:]) >= 10, 30,
             "10 frames of the 5 fps camera")
    elapsed = time.monotonic() - began
    window = by_camera(reader.frames[start:])
    fast, slow = len(window.get("fast", [])), len(window["slow"])
    assert fast > 2 * slow  # both arrive, each at its own rate (25 vs 5 fps)
    assert slow >= 0.6 * 5 * elapsed, (slow, elapsed)
    stats = daemon.fanout.subscribers["both"].outbox.stream_stats
    reader.pause()  # a stalled reader: once the pipe is full, each camera keeps one pending
    wait_for(lambda: stats["fast"].dropped["slow_reader"] > 0  # frame, the newest
             and stats["slow"].dropped["slow_reader"] > 0, 30, "both cameras to drop")
    reader.resume()
    seen = len(reader.frames)
    wait_for(lambda: {"fast", "slow"} <= {f["camera"] for f in reader.frames[seen:]}, 10,
             "both cameras after the stall")
    reader.kill()
    check_streams(reader.frames)  # the stall's gaps are each camera's own ``missed``
    assert stats["fast"].sent > stats["slow"].sent > 0
    status, _headers, metrics = ApiClient(daemon).request("GET", "/metrics")
    assert status == 200
    for camera in ("fast", "slow"):  # counted per camera
        assert (f'framebus_subscriber_frames_dropped_total{{camera="{camera}",'
                f'reason="slow_reader",subscriber="both"}}').encode() in metrics


def test_cameras_star_over_the_api_and_refusals(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    status, body = api.json("POST", "/v1/subscriptions", {"name": "all", "cameras": "*",
                                                          "format": "gray", "width": 80})
    assert status == 201 and body["cameras"] == "*" and body["camera"] is None, body
    reader = ReaderProcess(Path(body["fifo"]))
    wait_for(lambda: {f["camera"] for f in reader.frames} == {"fast", "slow"}, 30,
             "frames of every camera")
    reader.kill()
    for bad, error in (({"cameras": ["fast", "nope"]}, "unknown_camera"),
                       ({"cameras": ["fast", "fast"]}, "bad_request"),
                       ({"camera": "fast", "cameras": ["slow"]}, "bad_request"),
                       ({"cameras": ["fast"], "format": "jpeg", "transport": "shm"},
                        "bad_request")):
        status, body = api.json("POST", "/v1/subscriptions", {"name": "x", **bad})
        assert body["error"] == error, (bad, body)
    status, listed = api.json("GET", "/v1/cameras/slow")
    assert set(listed["subscribers"]) == {"all", "both"}


def test_config_names_every_bad_camera_key() -> None:
    base = {"cameras": {"a": {"url": "rtsp://h/a"}}}
    with pytest.raises(ConfigError, match=r"subscribers\.s\.cameras: unknown camera 'b'"):
        parse_config({**base, "subscribers": {"s": {"cameras": ["a", "b"]}}})
    with pytest.raises(ConfigError, match=r"give camera \(one\) or cameras"):
        parse_config({**base, "subscribers": {"s": {}}})
    config = parse_config({**base, "subscribers": {"s": {"cameras": "*"}}})
    assert config.subscribers["s"].names(config.cameras) == ("a",)
