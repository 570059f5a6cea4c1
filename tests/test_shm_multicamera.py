"""Multi-camera subscribers over shm: two real RTSP test cameras, real daemons, real reader
processes that check every pixel of every frame against the clip the camera serves.

Each camera's frames travel in that camera's own segment (shared with every other shm
subscriber of that camera and rendition), named by messages in the subscriber's one FIFO. Per
camera: seq and missed add up, the segment is sized 3n + 2 for its n subscribers, and a
stalled reader pins at most 3 of its slots while everyone else keeps the camera's rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from faultkit import DaemonProcess, camera_config, write_daemon_config
from openapikit import _validator
from rtspserver import Mount, RtspServer, RtspServerFactory, media_cache_dir
from shmkit import ClipReader
from waiting import wait_for

from framebus.daemon import Daemon
from framebus.sending import ShmSending, Subscriber, SubscriberSpec
from framebus.slots import capacity
from framebus.store import Rendition
from framebus.wire import PixelFormat

# two cameras of different sizes and rates: a segment each, and fairness between them
MOUNTS = [Mount("a", width=320, height=240, fps=25), Mount("b", width=240, height=180, fps=10)]
CLEAN = ("bad", "counter_errors", "seq_errors", "protocol_errors", "spliced", "not_intact",
         "truncated", "stale")


def segments(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith("fbshm-")}


def clips(server: RtspServer) -> dict[str, Path]:
    """Each camera's clip file, as the server serves it."""
    return {name: mount.clip(media_cache_dir()) for name, mount in server.mounts.items()}


def assert_clean(summary: dict[str, Any], name: str) -> None:
    counts = {key: summary[key] for key in CLEAN}
    assert counts == dict.fromkeys(CLEAN, 0), (name, counts, summary["errors"])


def test_every_pixel_of_two_cameras_through_their_own_segments(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory(MOUNTS)
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    config = write_daemon_config(
        tmp_path / "framebus.yaml", fifos,
        {name: camera_config(server.url(name)) for name in ("a", "b")},
        {"both": {"cameras": ["a", "b"], "format": "yuv420p", "transport": "shm"},
         "one": {"camera": "a", "format": "yuv420p", "transport": "shm"}})
    daemon = DaemonProcess(config)
    readers: list[ClipReader] = []
    try:
        api = daemon.api()
        status, body = api.json("POST", "/v1/subscriptions", {
            "name": "all", "cameras": "*", "format": "gray", "width": 160, "transport": "shm"})
        assert status == 201 and body["transport"] == "shm" and body["cameras"] == "*", body
        status, body = api.json("POST", "/v1/subscriptions", {
            "name": "bad", "cameras": ["a", "b"], "format": "jpeg", "transport": "shm"})
        assert status == 400 and "for one camera or several" in body["detail"], body
        readers = [ClipReader(fifos / f"{n}.fifo", clips(server)) for n in ("both", "one", "all")]
        both, one, every = readers
        for reader in (both, every):
            reader.wait_for_cameras({"a": 100, "b": 40}, timeout=120)
        one.wait_for_cameras({"a": 100})
        # a segment per camera and rendition: yuv420p a (both + one), yuv420p b, gray a, gray b
        assert len(segments(fifos)) == 4
        _, got = api.json("GET", "/v1/subscriptions/both")
        shm = got["shm"]["cameras"]
        assert set(shm) == {"a", "b"} and shm["a"]["segment"] != shm["b"]["segment"], got
        assert {shm[c]["segment"] for c in shm} <= segments(fifos)
        assert (shm["a"]["slots"], shm["b"]["slots"]) == (capacity(2), capacity(1))
        assert shm["a"]["segment_bytes"] > capacity(2) * 320 * 240 * 3 // 2
        assert all(0 <= shm[c]["pinned_slots"] <= 3 and shm[c]["error"] == "" for c in shm)
        _, single = api.json("GET", "/v1/subscriptions/one")  # the single-camera shape, shared
        assert set(single["shm"]) == {"segment", "segment_bytes", "slots", "pinned_slots"}
        assert single["shm"]["segment"] == shm["a"]["segment"]
        documented = _validator("#/components/schemas/Subscription/properties/shm")
        documented.validate(got["shm"])  # both shapes as docs/openapi.yaml describes them
        documented.validate(single["shm"])
        _, _, metrics = api.request("GET", "/metrics")
        text = metrics.decode()
        for camera in ("a", "b"):
            series = f'framebus_subscriber_shm_segment_bytes{{camera="{camera}",subscriber="both"}}'
            value = next(line.split()[-1] for line in text.splitlines()
                         if line.startswith(series + " "))
            assert float(value) == shm[camera]["segment_bytes"]
            assert f'framebus_subscriber_shm_pinned_slots{{camera="{camera}",' \
                   'subscriber="both"}' in text
            assert (f'framebus_subscriber_shm_failures_total{{camera="{camera}",'
                    'reason="no_space",subscriber="both"} 0.0') in text
            assert (f'framebus_subscriber_info{{camera="{camera}",subscriber="both",'
                    'transport="shm"} 1.0') in text  # one camera a series (joins on camera)
        summaries = [reader.stop() for reader in readers]
        for reader, summary in zip(readers, summaries, strict=True):
            assert_clean(summary, reader.fifo.name)
        assert summaries[0]["by_camera"]["a"] > 1.5 * summaries[0]["by_camera"]["b"] > 0
        assert api.json("DELETE", "/v1/subscriptions/all")[0] == 200
        wait_for(lambda: len(segments(fifos)) == 2, 30, "the gray segments to be unlinked")
        assert daemon.stop() == 0
        assert segments(fifos) == set()
    finally:
        for reader in readers:
            reader.proc.kill()
        daemon.stop()


@pytest.fixture
def daemon(rtsp_server_factory: RtspServerFactory,
           tmp_path: Path) -> Iterator[tuple[Daemon, dict[str, Path]]]:
    """An in-process daemon (its loop's slots can be inspected) with two 25 fps cameras and
    three gray shm subscribers, and the cameras' clips."""
    server = rtsp_server_factory([Mount("a", width=320, height=240, fps=25),
                                  Mount("b", width=240, height=180, fps=25)])
    cameras = {name: {"url": server.url(name), "idle_decode": "all"} for name in ("a", "b")}
    shm = {"format": "gray", "transport": "shm"}
    subscribers = {"stalled": {"cameras": ["a", "b"], **shm},
                   "other": {"cameras": "*", **shm},
                   "one": {"camera": "b", **shm}}
    with running_daemon(cameras, subscribers, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0"}) as running:
        yield running, clips(server)


def pins_in_segments(daemon: Daemon, sub: Subscriber) -> dict[str, int]:
    """Per camera, the slots of that camera's current segment the subscriber's ledger and
    outbox hold, counted from the segment's side (slot numbers), not by the subscriber's own
    bookkeeping."""
    counted = {}
    held = [t for t in [*(sub.ledger.items() if sub.ledger else []), *sub.outbox.held()]
            if isinstance(t, ShmSending)]
    for camera, key in sub.shm_keys.items():
        state = daemon.fanout.exporter.state(key)
        segment = state.segment if state is not None else None
        counted[camera] = len({t.shm.ref.slot for t in held if t.shm.segment is segment})
    return counted


def test_a_stalled_reader_pins_at_most_3_slots_per_segment_and_others_keep_their_rate(
    daemon: tuple[Daemon, dict[str, Path]],
) -> None:
    running, clips_of = daemon
    fifos = running.config.fifo_dir
    readers = {n: ClipReader(fifos / f"{n}.fifo", clips_of) for n in ("stalled", "other", "one")}
    try:
        for name, reader in readers.items():
            reader.wait_for_cameras({"b": 25} if name == "one" else {"a": 25, "b": 25})
        stalled, other, one = readers["stalled"], readers["other"], readers["one"]
        sub = running.fanout.subscribers["stalled"]
        stats = sub.outbox.stream_stats
        stalled.pause()
        began, start_other, start_one = time.monotonic(), len(other.frames), len(one.frames)
        worst: dict[str, int] = {"a": 0, "b": 0}
        api = ApiClient(running)
        while time.monotonic() - began < 4 or min(stats[c].dropped["slow_reader"]
                                                  for c in ("a", "b")) < 20:
            assert time.monotonic() - began < 60, "both cameras to drop for the stalled reader"
            by_camera = sub.pinned_by_camera()
            from_segments = pins_in_segments(running, sub)
            _, shown = api.json("GET", "/v1/subscriptions/stalled")
            for camera in ("a", "b"):
                seen = max(by_camera[camera], from_segments[camera],
                           shown["shm"]["cameras"][camera]["pinned_slots"])
                worst[camera] = max(worst[camera], seen)
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        assert min(worst.values()) >= 1 and max(worst.values()) <= 3, worst
        states = running.fanout.exporter.states()  # gray a: 2 subscribers; gray b: 3
        assert sorted((k.camera, s.segment.pool.count) for k, s in states if s.segment) == [
            ("a", capacity(2)), ("b", capacity(3))]
        assert all(s.failures["no_free_slot"] == 0 for _, s in states)  # 3n + 2 sufficed
        for reader, start, cameras in ((other, start_other, ("a", "b")), (one, start_one, "b")):
            for camera in cameras:  # everyone else: the camera's full rate meanwhile
                got = reader.count(camera, since=start)
                assert got >= 0.75 * 25 * elapsed, (reader.fifo.name, camera, got, elapsed)
        dropped = {c: stats[c].dropped["slow_reader"] for c in ("a", "b")}
        stalled.resume()
        before = {c: stalled.count(c) for c in ("a", "b")}
        stalled.wait_for_cameras({c: n + 25 for c, n in before.items()})
        summaries = {name: reader.stop() for name, reader in readers.items()}
    finally:
        for reader in readers.values():
            reader.proc.kill()
    for name, summary in summaries.items():
        assert_clean(summary, name)  # the stall's gaps are each camera's own missed, intact
    for camera in ("a", "b"):  # every frame dropped in the stall is in the seq gaps after it
        missed = sum(f["missed"] for f in stalled.frames if f["camera"] == camera)
        assert missed >= dropped[camera] >= 20


def test_the_segment_of_each_camera_is_its_own_key() -> None:
    rendition = Rendition(PixelFormat.GRAY, 160)
    spec = SubscriberSpec("s", "a", rendition, Path("/run/fb/s.fifo"), transport="shm",
                          cameras=("a", "b"), mode=0o640, group="video")
    keys = spec.shm_keys
    assert list(keys) == ["a", "b"] and keys["b"] == spec.shm_key_for("b")
    assert {(k.camera, k.rendition, k.directory, k.mode, k.group) for k in keys.values()} == {
        (c, rendition, Path("/run/fb"), 0o640, "video") for c in ("a", "b")}
    single = SubscriberSpec("t", "a", rendition, Path("/run/fb/t.fifo"), transport="shm",
                            mode=0o640, group="video")
    assert single.shm_keys == {"a": keys["a"]}  # shares camera a's segment with s
    assert SubscriberSpec("f", "a", rendition, Path("/run/fb/f.fifo"),
                          cameras=("a", "b")).shm_keys == {}


def test_the_error_names_each_camera_whose_segment_failed() -> None:
    spec = SubscriberSpec("s", "a", Rendition(PixelFormat.GRAY), Path("/x/s.fifo"),
                          transport="shm", cameras=("a", "b"))
    sub = Subscriber(spec)
    assert sub.ledger is not None and sub.pinned_by_camera() == {}
    sub.shm_state("a", "")
    assert sub.error == ""
    sub.shm_state("b", "/x: does not fit")
    sub.shm_state("a", "/x: permission")
    assert sub.error == "a: /x: permission; b: /x: does not fit"  # in camera order
    sub.shm_state("b", "")
    assert sub.error == "a: /x: permission"
    sub.shm_state("a", "")
    assert sub.error == ""
    single = Subscriber(SubscriberSpec("t", "a", Rendition(PixelFormat.GRAY), Path("/x/t.fifo"),
                                       transport="shm"))
    single.shm_state("a", "/x: does not fit")
    assert single.error == "/x: does not fit"  # one camera: the error as before
