"""Consumers survive a restart that deletes and recreates fifo_dir (PROTOCOL.md section 10),
and one fifo_dir has one daemon: a second one exits naming the lock and the holder's pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from camerakit import FAST
from faultkit import DaemonProcess, write_daemon_config
from rtspserver import Mount, RtspServer, RtspServerFactory
from test_protocol_c_reader import compile_reader
from waiting import wait_for

READER_PROC = Path(__file__).resolve().parent / "reader_proc.py"


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=320, height=240)])


class Lines:
    """A child process's stdout, line by line, collected in the background."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_more(self, count: int, timeout: float = 30) -> None:
        target = len(self.lines) + count
        wait_for(lambda: len(self.lines) >= target, timeout, f"{count} more frames")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def config(server: RtspServer, root: Path, **extra: object) -> Path:
    return write_daemon_config(
        root / "framebus.yaml", root / "fifos",
        {"cam": {**FAST, "url": server.url("cam"), "idle_decode": "all"}},
        {"py": {"camera": "cam", "format": "gray"}, "c": {"camera": "cam", "format": "gray"}},
        **extra)


def holds(pid: int, fifo: Path, deleted: bool) -> bool:
    """True if process ``pid`` has ``fifo`` open (its old, deleted inode if ``deleted``)."""
    wanted = f"{fifo} (deleted)" if deleted else str(fifo)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                return True
        except OSError:
            continue
    return False


def test_readers_survive_a_restart_that_recreates_fifo_dir(
        server: RtspServer, tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifos"
    path = config(server, tmp_path, http={"enabled": False})
    reader_exe = compile_reader(tmp_path)
    # FIFOs a previous daemon left: the readers open them and wait for a writer ...
    fifo_dir.mkdir()
    for name in ("py.fifo", "c.fifo"):
        os.mkfifo(fifo_dir / name)
    py = Lines([sys.executable, str(READER_PROC), str(fifo_dir / "py.fifo"), "--reopen"])
    c = Lines([str(reader_exe), "-r", str(fifo_dir / "c.fifo")])
    readers = ((py, fifo_dir / "py.fifo"), (c, fifo_dir / "c.fifo"))
    daemon: DaemonProcess | None = None
    try:
        for reader, fifo in readers:
            wait_for(lambda r=reader, f=fifo: holds(r.proc.pid, f, deleted=False), 20,
                     f"{fifo.name}'s reader to open it")
        # ... then the directory goes, as systemd removes a RuntimeDirectory= on restart
        shutil.rmtree(fifo_dir)
        for reader, fifo in readers:
            assert holds(reader.proc.pid, fifo, deleted=True)
        for _round in range(2):  # the new daemon makes new FIFOs (new inodes) at the paths
            daemon = DaemonProcess(path)
            py.wait_more(5, timeout=40)
            c.wait_more(5, timeout=40)
            assert daemon.stop() == 0
            shutil.rmtree(fifo_dir)  # a real restart: stop, directory gone, start again
        assert py.proc.poll() is None and c.proc.poll() is None
        frames = [json.loads(line) for line in py.lines if line.startswith("{")]
        assert frames and all(f["w"] == 320 for f in frames if "w" in f)
    finally:
        for reader, _ in readers:
            reader.stop()
        if daemon is not None:
            daemon.stop()


def test_a_second_daemon_on_the_same_fifo_dir_exits_naming_the_lock(
        server: RtspServer, tmp_path: Path) -> None:
    path = config(server, tmp_path, http={"enabled": False})
    first = DaemonProcess(path)
    try:
        wait_for(lambda: first.logged("framebus running"), 30, "the first daemon to run")
        second = DaemonProcess(path)
        assert second.proc.wait(30) == 1
        second._thread.join(10)
        lock = tmp_path / "fifos" / ".framebus.lock"
        message = f"another framebus (pid {first.pid}) is running on {tmp_path / 'fifos'}"
        assert second.logged(message) and second.logged(str(lock)), second.lines[-5:]
        assert first.alive and not first.logged("removed stale shm segment")
        c = Lines([str(compile_reader(tmp_path)), "-n", "5", str(tmp_path / "fifos" / "c.fifo")])
        c.proc.wait(30)
        seqs = [int(line.split()[1]) for line in c.lines]
        assert len(seqs) == 5 and seqs == sorted(seqs)  # one writer: seq only goes up
    finally:
        assert first.stop() == 0
