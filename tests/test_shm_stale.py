"""Stale and planted entries at shm segment names: a killed daemon's segments are removed at
the next start in every directory it may have made them in (allowed_fifo_dirs included), and
whatever another user plants at a segment's name (directory, symlink, FIFO, foreign or bogus
file) is left alone with one warning, never followed, never a reason not to start. Real
daemon processes, a real SIGKILL, real readers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fanoutkit import ReaderProcess
from faultkit import DaemonProcess, camera_config, write_daemon_config
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus import shm
from framebus.shm import SEGMENT_HEADER

NAME = re.compile(r"fbshm-[0-9]{1,10}-[0-9]{1,15}")  # PROTOCOL.md rule S4


def segments(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith("fbshm-")}


def dead_pid() -> int:
    """The pid of a process that ran and is gone (as a killed daemon's)."""
    proc = subprocess.Popen(["true"])
    proc.wait(10)
    return proc.pid


def config(server: RtspServer, tmp_path: Path, subscribers: dict[str, Any]) -> Path:
    """One test camera; FIFOs in tmp_path/fifos, run-time ones allowed in tmp_path/shared."""
    fifos, shared = tmp_path / "fifos", tmp_path / "shared"
    fifos.mkdir(exist_ok=True)
    shared.mkdir(exist_ok=True)
    return write_daemon_config(
        tmp_path / "framebus.yaml", fifos, {"cam": camera_config(server.url("cam"))},
        subscribers, http={"listen": "127.0.0.1:0", "allowed_fifo_dirs": [str(shared)]})


def test_a_killed_daemons_segments_in_allowed_fifo_dirs_are_removed_at_the_next_start(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=320, height=240)])
    path = config(server, tmp_path, {"det": {"camera": "cam", "transport": "shm"}})
    shared = tmp_path / "shared"
    first = DaemonProcess(path)
    second = None
    readers = []
    try:
        status, body = first.api().json("POST", "/v1/subscriptions", {
            "name": "rt", "camera": "cam", "transport": "shm",
            "fifo": str(shared / "rt.fifo")})
        assert status == 201, body
        readers = [ReaderProcess(shared / "rt.fifo"), ReaderProcess(tmp_path / "fifos/det.fifo")]
        for reader in readers:
            reader.wait_frames(5, 60)
        left = segments(shared)
        assert len(left) == 1
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        for reader in readers:
            reader.kill()
        assert segments(shared) == left  # the daemon had no chance to remove it
        second = DaemonProcess(path)
        wait_for(lambda: second is not None and second.logged(f"shared/{next(iter(left))}"),
                 30, "the stale segment in the allowed directory to be removed")
        assert segments(shared) == set()
    finally:
        for reader in readers:
            reader.kill()
        first.stop()
        if second is not None:
            second.stop()


def plant(directory: Path, pid: int, victim: Path) -> dict[str, str]:
    """Entries at a dead daemon's segment names that are not its segments; name -> kind."""
    planted = {f"fbshm-{pid}-1": "directory", f"fbshm-{pid}-2": "symlink",
               f"fbshm-{pid}-3": "FIFO", f"fbshm-{pid}-4": "bogus", f"fbshm-{pid}-5": "foreign"}
    (directory / f"fbshm-{pid}-1").mkdir()
    (directory / f"fbshm-{pid}-2").symlink_to(victim)  # unlinking must not reach the victim
    os.mkfifo(directory / f"fbshm-{pid}-3")  # opening it for reading would block
    (directory / f"fbshm-{pid}-4").write_bytes(b"not a segment" * 400)
    foreign = directory / f"fbshm-{pid}-5"  # a real header, but another user's file
    foreign.write_bytes(SEGMENT_HEADER.pack(b"FBSM", 1, 4096, 1, 4096, pid) + bytes(8192))
    os.chown(foreign, 65534, 65534)
    return planted


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another owner needs root")
def test_entries_planted_at_segment_names_are_skipped_with_one_warning_and_shm_still_works(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    server = rtsp_server_factory([Mount("cam", width=320, height=240)])
    path = config(server, tmp_path, {"det": {"camera": "cam", "transport": "shm"}})
    fifos = tmp_path / "fifos"
    victim = tmp_path / "victim"
    victim.write_bytes(b"FBSM" + bytes(8188))
    pid = dead_pid()
    planted = plant(fifos, pid, victim)
    plant(tmp_path / "shared", pid, victim)
    # what the old counter names of the next daemons would have been: taken in advance
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for future in range(last + 1, last + 400):
        (fifos / f"fbshm-{future}-1").mkdir()
    daemon = DaemonProcess(path)
    reader = ReaderProcess(fifos / "det.fifo")
    try:
        reader.wait_frames(20, 60)  # the daemon started and serves shm frames
        assert {tuple(f["shape"]) for f in reader.frames} == {(240, 320, 3)}
        assert daemon.proc.poll() is None
        for directory in (fifos, tmp_path / "shared"):
            assert daemon.count(f"alone in {directory}:") == 1  # one warning per directory
        assert not daemon.logged("cannot start")
        for name in planted:  # all still there, untouched; the victim too
            assert os.path.lexists(fifos / name), name
        assert victim.read_bytes()[:4] == b"FBSM"
        made = segments(fifos) - set(planted) - {f"fbshm-{p}-1" for p in range(last, last + 400)}
        assert len(made) == 1 and NAME.fullmatch(next(iter(made)))
        assert int(next(iter(made)).rsplit("-", 1)[1]) >= 10**9  # random, not a counter
    finally:
        reader.kill()
        daemon.stop()


def test_a_name_already_taken_is_never_followed_and_another_random_one_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    taken = [tmp_path / "fbshm-1-111", tmp_path / "fbshm-1-222", tmp_path / "fbshm-1-333"]
    taken[0].symlink_to(victim)
    taken[1].mkdir()
    os.mkfifo(taken[2])
    names = iter([*taken, tmp_path / "fbshm-1-444"])
    monkeypatch.setattr(shm, "new_segment_path", lambda _directory: next(names))
    segment = shm.make_segment(tmp_path, 4096, 5, 0o600, None, 1)
    assert segment.name == "fbshm-1-444" and victim.read_bytes() == b"precious"
    monkeypatch.setattr(shm, "new_segment_path", lambda _directory: taken[1])
    with pytest.raises(shm.ShmError, match=r"all\s+taken"):
        shm.make_segment(tmp_path, 4096, 5, 0o600, None, 1)
    segment.unlink()


def test_segment_names_are_random_and_fit_the_protocols_pattern(tmp_path: Path) -> None:
    names = [shm.new_segment_path(tmp_path).name for _ in range(50)]
    assert all(NAME.fullmatch(n) and len(n) <= 32 for n in names)
    suffixes = sorted(int(n.rsplit("-", 1)[1]) for n in names)
    assert len(set(suffixes)) == 50 and suffixes[0] >= 10**6  # 15 random digits, no counter
