"""transport: shm end to end: the real RTSP server, `python -m framebus run` as a process,
config and run-time subscriptions, the API and metrics, and a SIGKILL with stale segments."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
from fanoutkit import ReaderProcess
from faultkit import DaemonProcess, camera_config, write_daemon_config
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for


def segments(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith("fbshm-")}


def daemon_config(server: RtspServer, tmp_path: Path, subscribers: dict[str, Any]) -> Path:
    """A config for one 320x240 test camera; FIFOs (and segments) in tmp_path/fifos."""
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    return write_daemon_config(tmp_path / "framebus.yaml", fifos,
                               {"cam": camera_config(server.url("cam"))}, subscribers)


def test_shm_from_config_and_api_with_status_and_metrics(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=320, height=240)])
    fifos = tmp_path / "fifos"
    config = daemon_config(server, tmp_path, {
        "det": {"camera": "cam", "transport": "shm"},
        "rec": {"camera": "cam", "format": "gray", "width": 160}})
    daemon = DaemonProcess(config)
    try:
        api = daemon.api()
        status, body = api.json("POST", "/v1/subscriptions", {
            "name": "small", "camera": "cam", "format": "yuv420p", "width": 161,
            "transport": "shm"})
        assert status == 201 and body["transport"] == "shm", body
        status, body = api.json("POST", "/v1/subscriptions", {
            "name": "bad", "camera": "cam", "format": "jpeg", "transport": "shm"})
        assert status == 400 and "transport shm carries raw formats" in body["detail"], body
        readers = {"det": ReaderProcess(fifos / "det.fifo", "--count", "20"),
                   "small": ReaderProcess(fifos / "small.fifo", "--count", "20"),
                   "rec": ReaderProcess(fifos / "rec.fifo", "--count", "20")}
        shapes = {"det": [240, 320, 3], "small": [121, 161], "rec": [120, 160]}
        for name, reader in readers.items():
            assert reader.finish(60) == 0, reader.lines[-3:]
            assert {tuple(f["shape"]) for f in reader.frames} == {tuple(shapes[name])}
        assert len(segments(fifos)) == 2  # one per shm rendition; the FIFO one has none
        status, det = api.json("GET", "/v1/subscriptions/det")
        assert status == 200 and det["transport"] == "shm", det
        assert det["shm"]["segment"] in segments(fifos)
        assert det["shm"]["slots"] == 5 and det["shm"]["segment_bytes"] > 5 * 320 * 240 * 3
        assert 0 <= det["shm"]["pinned_slots"] <= 3
        _, rec = api.json("GET", "/v1/subscriptions/rec")
        assert rec["transport"] == "fifo" and "shm" not in rec
        _, _, metrics = api.request("GET", "/metrics")
        text = metrics.decode()
        assert 'framebus_subscriber_info{camera="cam",subscriber="det",transport="shm"} 1.0' \
            in text
        assert 'framebus_subscriber_shm_segment_bytes{camera="cam",subscriber="det"}' in text
        assert ('framebus_subscriber_shm_failures_total{camera="cam",reason="no_space",'
                'subscriber="det"} 0.0') in text
        out = tmp_path / "out"
        for args in (["dump", str(fifos / "det.fifo"), "--out", str(out), "--count", "2"],
                     ["watch", str(fifos / "small.fifo"), "--count", "10"]):
            cli = subprocess.run([sys.executable, "-m", "framebus", *args], capture_output=True,
                                 text=True, timeout=60, check=False)
            assert cli.returncode == 0, cli.stderr
        assert "161x121" in cli.stdout  # watch shows the shm frames' size
        for image in sorted(out.iterdir()):
            with av.open(str(image)) as container:
                assert next(container.decode(video=0)).width == 320
        assert api.json("DELETE", "/v1/subscriptions/small")[0] == 200
        wait_for(lambda: len(segments(fifos)) == 1, 30, "the unused segment to be unlinked")
        assert daemon.stop() == 0
        assert segments(fifos) == set()  # unlinked at exit
    finally:
        daemon.stop()


def test_sigkill_leaves_segments_the_next_daemon_removes_and_readers_carry_on(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=320, height=240)])
    fifos = tmp_path / "fifos"
    config = daemon_config(server, tmp_path, {"det": {"camera": "cam", "transport": "shm"}})
    first = DaemonProcess(config)
    reader = ReaderProcess(fifos / "det.fifo", "--reopen")
    second = None
    try:
        reader.wait_frames(10)
        left = segments(fifos)
        assert len(left) == 1
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert segments(fifos) == left  # nobody removed it: the daemon had no chance
        seen = len(reader.frames)
        second = DaemonProcess(config)
        wait_for(lambda: second.logged("removed stale shm segment"), 30, "stale removal")
        reader.wait_frames(seen + 10)  # EOF, reopen, the new daemon's segment: as with FIFOs
        now = segments(fifos)
        assert len(now) == 1 and now.isdisjoint(left)
        assert reader.proc.poll() is None  # no protocol error ended it
    finally:
        reader.kill()
        first.stop()
        if second is not None:
            second.stop()
