"""What the daemon makes, it takes back (issue 21, newcomer finding 7): a start that fails
(the HTTP port is taken) leaves none of the FIFOs, lock file or directories it made, and a
reload that drops a subscriber removes the FIFO the daemon made for it, never a path it did
not make nor one another subscriber still uses."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import yaml
from faultkit import DaemonProcess
from waiting import wait_for

CAMERA = {"url": "lavfi:testsrc2=size=160x120:rate=10,realtime"}


def write(path: Path, fifo_dir: Path, subscribers: dict[str, Any], **http: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "fifo_dir": str(fifo_dir), "http": http or {"enabled": False},
        "cameras": {"cam": CAMERA}, "subscribers": subscribers}))
    return path


def is_fifo(path: Path) -> bool:
    return path.exists() and stat.S_ISFIFO(path.lstat().st_mode)


def test_a_start_that_fails_on_a_taken_port_leaves_nothing_it_made(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    subscribers = {"old": {"camera": "cam"}, "new": {"camera": "cam"},
                   "shm": {"camera": "cam", "transport": "shm"}}
    try:
        # a fifo_dir (and its parent) that do not exist yet: both are gone again
        fresh = tmp_path / "run" / "framebus"
        config = write(tmp_path / "fresh.yaml", fresh, subscribers,
                       listen=f"127.0.0.1:{port}")
        daemon = DaemonProcess(config)
        assert daemon.proc.wait(30) == 1
        daemon.stop()
        assert daemon.logged("cannot start")
        assert not (tmp_path / "run").exists()
        # a fifo_dir a previous run left, with its lock file and one FIFO: those stay, what
        # this start made (the other FIFOs, the token) goes
        kept = tmp_path / "kept"
        kept.mkdir()
        os.mkfifo(kept / "old.fifo", 0o660)
        (kept / ".framebus.lock").write_text("1\n")
        (kept / "notes.txt").write_text("mine\n")
        config = write(tmp_path / "kept.yaml", kept, subscribers, listen=f"127.0.0.1:{port}")
        daemon = DaemonProcess(config)
        assert daemon.proc.wait(30) == 1
        daemon.stop()
        assert sorted(p.name for p in kept.iterdir()) == [".framebus.lock", "notes.txt",
                                                          "old.fifo"]
        assert is_fifo(kept / "old.fifo")
    finally:
        holder.close()
    # and the same directory then serves a daemon that starts (the lock file is usable)
    config = write(tmp_path / "kept.yaml", kept, subscribers)
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: daemon.logged("framebus running"), 30, "the daemon to start")
        assert is_fifo(kept / "new.fifo")
    finally:
        assert daemon.stop() == 0


def test_a_reload_removes_the_fifos_it_made_for_dropped_subscribers_only(
        tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifos"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "premade.fifo", 0o660)  # a consumer made it: never removed
    shared = tmp_path / "shared.fifo"  # one path, two subscribers
    subs: dict[str, Any] = {
        "made": {"camera": "cam"}, "premade": {"camera": "cam"}, "stays": {"camera": "cam"},
        "moved": {"camera": "cam"},
        "shared1": {"camera": "cam", "fifo": str(shared)},
        "shared2": {"camera": "cam", "fifo": str(shared), "format": "gray"}}
    config = write(tmp_path / "framebus.yaml", fifo_dir, subs)
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: daemon.logged("framebus running"), 30, "the daemon to start")
        for name in ("made", "premade", "stays", "moved"):
            assert is_fifo(fifo_dir / f"{name}.fifo")
        assert is_fifo(shared)
        for name in ("made", "premade", "shared1"):
            del subs[name]
        subs["moved"] = {"camera": "cam", "fifo": str(tmp_path / "moved-here.fifo")}
        write(config, fifo_dir, subs)
        daemon.reload()
        wait_for(lambda: not (fifo_dir / "made.fifo").exists(), 10, "made.fifo to go")
        wait_for(lambda: not (fifo_dir / "moved.fifo").exists(), 10, "moved.fifo to go")
        assert is_fifo(fifo_dir / "premade.fifo")  # not the daemon's
        assert is_fifo(shared)  # shared2 still writes there
        assert is_fifo(fifo_dir / "stays.fifo") and is_fifo(tmp_path / "moved-here.fifo")
        del subs["shared2"]
        write(config, fifo_dir, subs)
        daemon.reload()
        wait_for(lambda: not shared.exists(), 10, "the shared FIFO to go with its last user")
        assert not daemon.logged("was deleted; recreated")  # removed after the subscriber
    finally:
        assert daemon.stop() == 0
    assert not any("Traceback" in line for line in daemon.lines)
