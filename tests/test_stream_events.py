"""Protocol 1.2 seen by real readers of a real daemon: a restart that no EOF announces is
reported from the first message of the new daemon, and a camera outage arrives in the stream
as STATE messages (reconnecting, then streaming again with the new epoch) before the frames
that follow it. FIFO and shm alike."""

from __future__ import annotations

import fcntl
import os
import termios
from pathlib import Path

import pytest
from camerakit import FAST
from faultkit import CheckedReader, DaemonProcess, write_daemon_config
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=320, height=240)])


def config(server: RtspServer, root: Path, transport: str, **sub: object) -> Path:
    return write_daemon_config(
        root / "framebus.yaml", root / "fifos",
        {"cam": {**FAST, "url": server.url("cam"), "idle_decode": "all"}},
        {"sub": {"camera": "cam", "format": "gray", "transport": transport, **sub}},
        http={"enabled": False})


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP delivered), not merely sent the signal."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def unread(fifo: Path) -> int:
    """Bytes waiting in the pipe (FIONREAD through a read end of our own that reads nothing)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        count = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, count)
        return int.from_bytes(count, "little")
    finally:
        os.close(fd)


@pytest.mark.parametrize("transport", ["fifo", "shm"])
def test_a_reader_stopped_through_kill_and_restart_sees_the_restart_not_a_seq_error(
        server: RtspServer, tmp_path: Path, transport: str) -> None:
    path = config(server, tmp_path, transport)
    fifo = tmp_path / "fifos" / "sub.fifo"
    daemon = DaemonProcess(path)
    reader = CheckedReader(fifo)
    second: DaemonProcess | None = None
    try:
        reader.wait_frames(15, timeout=60)
        # no new frames, so the reader empties its pipe: then it is stopped with nothing
        # unread, and the daemon dies without the reader seeing EOF
        heard = len(reader.events)
        server.kill()  # the camera goes away (it comes back below, on the same port)
        wait_for(lambda: any(e["event"] == "reconnecting" for e in reader.events[heard:]), 30,
                 "the reader to hear the camera is gone")  # the last message that comes
        wait_for(lambda: unread(fifo) == 0, 20, "the reader to drain its pipe")
        reader.pause()
        wait_for(lambda: stopped(reader.proc.pid), 20, "the reader to be stopped")
        daemon.proc.kill()
        daemon.proc.wait(10)
        server.restart()
        before = reader.last_seq("cam")
        assert before >= 15
        second = DaemonProcess(path)  # opens the FIFO the stopped reader still holds
        wait_for(lambda: unread(fifo) > 0, 60, "the new daemon to write into the held FIFO")
        reader.resume()
        reader.wait_more(10, timeout=60)
        summary = reader.stop()
        assert summary["opens"] == 1, summary  # no EOF, no reopen: the case that fooled readers
        assert summary["restarts"] == 1 and reader.torn == 0, summary
        restarts = [e for e in reader.events if e["event"] == "restart"]
        assert len(restarts) == 1
        frames = reader.frames
        instances = list(dict.fromkeys(f["instance"] for f in frames))
        assert len(instances) == 2 and 0 not in instances  # two daemons, each named
        after = [f for f in frames if f["instance"] == instances[1]]
        assert after[0]["seq"] < before  # seq fell back: only the instance tells why
        # the restart is reported before the first frame of the new daemon
        first_new = reader.records.index(after[0])
        assert reader.records.index(restarts[0]) < first_new
    finally:
        reader.kill()
        daemon.stop()
        if second is not None:
            assert second.stop() == 0


@pytest.mark.parametrize("transport", ["fifo", "shm"])
def test_a_camera_outage_arrives_as_state_messages_before_the_new_epoch(
        server: RtspServer, tmp_path: Path, transport: str) -> None:
    daemon = DaemonProcess(config(server, tmp_path, transport))
    reader = CheckedReader(tmp_path / "fifos" / "sub.fifo")
    try:
        reader.wait_frames(10, timeout=60)
        server.pause()  # the camera hangs, its connection up: idle after a second
        try:
            wait_for(lambda: any(e["event"] == "idle" for e in reader.events), 30,
                     "an idle STATE message")
        finally:
            server.resume()
        old_epoch = reader.frames[-1]["epoch"]
        heard = len(reader.events)
        server.kill()  # the camera goes away: the daemon reconnects until it is back
        wait_for(lambda: any(e["event"] == "reconnecting" for e in reader.events[heard:]), 30,
                 "a reconnecting STATE message")
        server.restart()
        try:
            wait_for(lambda: any(f["epoch"] > old_epoch for f in reader.frames), 60,
                     "frames of the new epoch")
        except AssertionError:  # say what the daemon saw, not only that nothing came
            raise AssertionError("\n".join(["no frames after the outage; the daemon said:",
                                              *daemon.lines[-25:]])) from None
        summary = reader.stop()
        assert reader.torn == 0, summary
        kinds = [e["event"] for e in reader.events]
        # (a reader that connects while the camera still connects hears that first)
        quiet = kinds.index("idle")
        retrying = kinds.index("reconnecting", quiet)  # ValueError: never told
        assert kinds[quiet + 1] == "streaming", kinds  # frames resumed in the same epoch
        back = next(e for e in reader.events[retrying:] if e["event"] == "streaming")
        first_new = next(f for f in reader.frames if f["epoch"] > old_epoch)
        assert back["epoch"] == first_new["epoch"]
        assert reader.records.index(back) < reader.records.index(first_new)
        reasons = [e["reason"] for e in reader.events if e["event"] == "reconnecting"]
        assert all(reasons) and not any("rtsp://" in r for r in reasons), reasons
    finally:
        reader.kill()
        assert daemon.stop() == 0


def test_state_messages_off_keeps_the_stream_frames_only(server: RtspServer,
                                                        tmp_path: Path) -> None:
    daemon = DaemonProcess(config(server, tmp_path, "fifo", state_messages=False))
    reader = CheckedReader(tmp_path / "fifos" / "sub.fifo")
    try:
        reader.wait_frames(5, timeout=60)
        server.kill()
        wait_for(lambda: daemon.logged("camera cam: backoff") or daemon.logged("stalled"), 30,
                 "the camera to fail")
        server.restart()
        reader.wait_more(5, timeout=60)
        summary = reader.stop()
        assert reader.events == [] and reader.torn == 0, summary
    finally:
        reader.kill()
        assert daemon.stop() == 0
