"""Fan-out end to end: the real RTSP server, the daemon, real FIFOs, real reader processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from camerakit import FAST
from fanoutkit import ReaderProcess, running_daemon
from rtspserver import Mount, RtspServerFactory
from waiting import timed, wait_for

from framebus.config import SubscriberConfig
from framebus.daemon import Daemon
from framebus.errors import ConfigError
from framebus.outbox import RATE_LIMIT, SLOW_READER, SUPERSEDED

CAMERA = {"idle_decode": "all"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def latest_seq(daemon: Daemon, camera: str = "cam") -> int:
    frame = daemon.store.latest(camera)
    return frame.seq if frame is not None else 0


def test_formats_and_sizes_each_converted_once_per_frame(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=640, height=360)])
    subs: dict[str, dict[str, Any]] = {
        "bgr": {"camera": "cam", "format": "bgr24"},
        "rgb_a": {"camera": "cam", "format": "rgb24", "width": 320},
        "rgb_b": {"camera": "cam", "format": "rgb24", "width": 320},  # same rendition: shared
        "gray": {"camera": "cam", "format": "gray", "height": 90},
        "i420": {"camera": "cam", "format": "yuv420p", "width": 321},
        "nv12": {"camera": "cam", "format": "nv12"},
        "jpeg": {"camera": "cam", "format": "jpeg", "width": 160, "quality": 70},
    }
    expected = {"bgr": [360, 640, 3], "rgb_a": [180, 320, 3], "rgb_b": [180, 320, 3],
                "gray": [90, 160], "i420": [181, 321], "nv12": [360, 640], "jpeg": [90, 160]}
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path) as daemon:
        readers = {name: ReaderProcess(tmp_path / f"{name}.fifo", "--count", "15")
                   for name in subs}
        for name, reader in readers.items():
            assert reader.finish(60) == 0, reader.lines[-3:]
            assert {tuple(f["shape"]) for f in reader.frames} == {tuple(expected[name])}, name
        decoded = daemon.cameras.cameras["cam"].stats.frames_decoded
        conversions = {rendition: count for (camera, rendition), count
                       in daemon.store.conversions.items() if camera == "cam"}
    assert len(conversions) == 6  # bgr, rgb 320, gray 90, yuv 321, nv12, jpeg (yuv420p native
    # would not be a conversion); rgb_a and rgb_b share one
    for rendition, count in conversions.items():
        assert 0 < count <= decoded, rendition  # at most once per frame, shared by both rgb


def test_a_stopped_reader_costs_others_nothing_and_its_gaps_equal_its_drops(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=640, height=360)])
    subs = {name: {"camera": "cam", "format": "bgr24", "pipe_size": 65536}
            for name in ("fast1", "fast2", "slow")}
    frame_bytes = 640 * 360 * 3
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path) as daemon:
        readers = {name: ReaderProcess(tmp_path / f"{name}.fifo") for name in subs}
        for reader in readers.values():
            reader.wait_frames(10)
        slow_sub = daemon.fanout.subscribers["slow"]
        readers["slow"].pause()
        rss_before = rss_bytes(os.getpid())
        start = latest_seq(daemon)
        held_max = 0

        def five_seconds_of_frames() -> bool:
            nonlocal held_max
            held_max = max(held_max, len(slow_sub.outbox.held()))
            if slow_sub.outbox.has_bytes:  # the epoll mask follows the outbox
                assert slow_sub.mask == select.EPOLLOUT
            return latest_seq(daemon) >= start + 125  # 5 s at 25 fps
        wait_for(five_seconds_of_frames, 20, "5 s of frames while the reader is stopped")
        end = latest_seq(daemon)
        rss_growth = rss_bytes(os.getpid()) - rss_before
        for name in ("fast1", "fast2"):
            wait_for(lambda name=name: readers[name].frames[-1]["seq"] >= end, 10, "catch up")
            got = {f["seq"] for f in readers[name].frames if start < f["seq"] <= end}
            assert len(got) >= 0.99 * (end - start), (name, len(got), end - start)
        readers["slow"].resume()
        wait_for(lambda: readers["slow"].frames[-1]["seq"] > end, 20, "the slow reader resumed")

        def idle_snapshot() -> tuple[int, int] | None:
            outbox, reader = slow_sub.outbox, readers["slow"]
            last = outbox.last_completed
            if outbox.in_flight or last is None or reader.frames[-1]["seq"] != last.seq:
                return None
            drops = sum(outbox.stats.dropped[r] for r in (SLOW_READER, SUPERSEDED, RATE_LIMIT))
            missed = sum(f["missed"] for f in reader.frames)
            if outbox.in_flight or outbox.last_completed is not last:
                return None  # a frame arrived meanwhile: look again
            return drops, missed
        drops, missed = wait_for(idle_snapshot, 20, "an idle moment of the slow subscriber")
        wait_for(lambda: slow_sub.mask == 0 or slow_sub.outbox.has_bytes, 5, "EPOLLOUT dropped")
        for reader in readers.values():
            reader.kill()
    print(f"\nMEASURED held frames {held_max}, RSS growth {rss_growth / 1e6:.1f} MB "
          f"(frame {frame_bytes / 1e6:.2f} MB), slow reader drops {drops}")
    assert held_max <= 2
    assert rss_growth <= 2 * frame_bytes + 2 * 2**20  # 2 frames, plus allocator noise
    assert drops == missed > 100


def test_a_reader_killed_mid_frame_then_restarted_gets_a_whole_new_frame(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=640, height=360)])
    subs = {"sub": {"camera": "cam", "format": "bgr24", "pipe_size": 65536}}
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path) as daemon:
        fifo = tmp_path / "sub.fifo"
        wait_for(fifo.exists, 10, "the FIFO")
        partial = ReaderProcess(fifo, "--partial", "100000")  # mid-way through a 691 KB frame
        wait_for(lambda: "PARTIAL" in partial.lines, 20, "a partial read")
        partial.kill()
        sub = daemon.fanout.subscribers["sub"]
        wait_for(lambda: sub.disconnects == 1, 10, "the daemon to notice the reader left")
        seq_at_restart = latest_seq(daemon)
        reader = ReaderProcess(fifo, "--count", "3")
        assert reader.finish(30) == 0
    assert reader.frames[0]["seq"] >= seq_at_restart  # whole (the client checks) and new
    assert reader.frames[0]["shape"] == [360, 640, 3]


def test_readers_opening_before_and_after_the_daemon(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam")])
    subs = {"early": {"camera": "cam", "format": "gray"},
            "late": {"camera": "cam", "format": "gray"}}
    early = ReaderProcess(tmp_path / "early.fifo", "--count", "5")  # no FIFO, no daemon yet
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path) as daemon:
        assert early.finish(30) == 0
        wait_for(lambda: latest_seq(daemon) > 30, 20, "the daemon running a while")
        late = ReaderProcess(tmp_path / "late.fifo", "--count", "5")
        assert late.finish(30) == 0
    assert len(early.frames) == len(late.frames) == 5


def test_a_path_that_is_not_a_fifo_is_refused_and_left_untouched(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam")])
    regular = tmp_path / "precious.txt"
    regular.write_text("do not overwrite")
    link = tmp_path / "link.fifo"
    link.symlink_to(regular)
    bad = {"file": {"camera": "cam", "fifo": str(regular)},
           "link": {"camera": "cam", "fifo": str(link)}}
    good = {"good": {"camera": "cam", "format": "gray"}}
    camera = {"cam": {"url": server.url("cam"), **CAMERA}}
    for name, sub in bad.items():  # at start: the daemon refuses to run with it
        with pytest.raises(ConfigError) as refused, running_daemon(camera, {name: sub},
                                                                   tmp_path / name):
            pass
        assert str(refused.value).startswith(f"subscribers.{name}.fifo: ")
    with running_daemon(camera, good, tmp_path) as daemon:  # at reload: logged, others go on
        config = daemon.config.model_copy(update={"subscribers": {
            **daemon.config.subscribers,
            **{n: SubscriberConfig.model_validate(s) for n, s in bad.items()}}})
        daemon.reconcile(config, daemon.passwords)
        good_reader = ReaderProcess(tmp_path / "good.fifo", "--count", "3")
        assert good_reader.finish(30) == 0
        errors = daemon.subscriber_errors
    assert "exists and is a regular file, not a FIFO: refusing to touch it" in errors["file"]
    assert "is a symlink" in errors["link"]
    assert regular.read_text() == "do not overwrite"


def test_max_fps_is_honoured_within_ten_percent(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", fps=25)])
    subs = {"slowed": {"camera": "cam", "format": "gray", "max_fps": 10}}
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path):
        reader = ReaderProcess(tmp_path / "slowed.fifo")
        frames = reader.wait_frames(2)
        start = frames[0]["seq"]
        wait_for(lambda: reader.frames[-1]["seq"] >= start + 125, 20, "5 s of camera frames")
        got = [f for f in reader.frames if start < f["seq"] <= start + 125]
        reader.kill()
    rate = len(got) / 5.0
    print(f"\nMEASURED max_fps 10 on a 25 fps camera: {rate:.1f} fps")
    assert 9.0 <= rate <= 11.0


def test_sigterm_stops_within_two_seconds_and_readers_end_at_a_boundary(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=640, height=360)])
    config = {"fifo_dir": str(tmp_path),
              "cameras": {"cam": {"url": server.url("cam"), **FAST, **CAMERA}},
              "subscribers": {f"s{i}": {"camera": "cam", "format": "bgr24"} for i in range(3)}}
    path = tmp_path / "framebus.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen([sys.executable, "-m", "framebus", "run", "-c", str(path)],
                              stderr=subprocess.PIPE, text=True)
    try:
        readers = [ReaderProcess(tmp_path / f"s{i}.fifo") for i in range(3)]
        for reader in readers:
            reader.wait_frames(5)
        daemon.send_signal(signal.SIGTERM)
        stop_time = timed(lambda: daemon.poll() is not None, 2.0, "the daemon to exit")
        assert daemon.returncode == 0
        for reader in readers:
            assert reader.finish(10) == 0  # a cut frame would raise ProtocolError: exit 1
            assert reader.lines[-1] == '{"end": true, "truncated": 0}'
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(10)
    print(f"\nMEASURED SIGTERM to exit: {stop_time:.2f}s")


def test_a_deleted_fifo_is_recreated_for_the_next_reader(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam")])
    subs = {"sub": {"camera": "cam", "format": "gray"}}
    with running_daemon({"cam": {"url": server.url("cam"), **CAMERA}}, subs, tmp_path) as daemon:
        fifo = tmp_path / "sub.fifo"
        first = ReaderProcess(fifo)
        first.wait_frames(3)
        fifo.unlink()  # while the reader holds it open: it keeps receiving through its fd
        seen = len(first.frames)
        first.wait_frames(seen + 3)
        first.kill()
        wait_for(fifo.exists, 10, "the FIFO to be recreated")
        second = ReaderProcess(fifo, "--count", "3")
        assert second.finish(30) == 0
        assert daemon.fanout.subscribers["sub"].connects == 2
