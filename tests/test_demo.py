"""`framebus demo` end to end: real RTSP server, real daemon, live watch lines, no stray process.

The demo runs as a subprocess in its own session. While it runs, the test keeps collecting
every descendant process (the RTSP server, the daemon, anything they start) from /proc, with
each process's start time so a recycled PID is never mistaken for a survivor; at the end every
one of them must be gone. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import pytest
from waiting import wait_for

from framebus.testsrc import harness

STARTUP_TIMEOUT = 120.0  # a fresh clone encodes the clips first
CAMERA_LINE = re.compile(
    r"^(?P<camera>lobby|yard)\s+(?P<fps>\d+\.\d) fps\s+\S+ \S+\s+latency p50\s+"
    r"(?P<p50>\d+\.\d+) ms"
)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19] field 22 (starttime)
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every living descendant of ``root`` → its start time (scans /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _stat(int(entry))
        if info is None or info[0] in "ZX":
            continue
        parents.setdefault(info[1], []).append(int(entry))
        starts[int(entry)] = info[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def alive(pid: int, start: int) -> bool:
    """True while the process that had ``start`` as its start time still runs (not a zombie)."""
    info = _stat(pid)
    return info is not None and info[2] == start and info[0] not in "ZX"


class DemoRun:
    """A `python -m framebus demo` subprocess whose output and descendants are collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framebus", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.seen: dict[int, int] = {}
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: TextIO, sink: list[str], queued: bool) -> None:
        for line in stream:
            sink.append(line)
            if queued:
                self.lines.put(line)

    def track(self) -> None:
        """Remember the demo's current descendants."""
        self.seen.update(descendants(self.proc.pid))

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> str:
        """The first stdout line matching ``pattern``; fails at the deadline or if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.track()
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if pattern.match(line):
                return line
        raise AssertionError(f"no line matching {pattern.pattern!r} (exit {self.proc.poll()}); "
                             f"stdout: {self.output()!r}; stderr: {''.join(self.stderr)!r}")

    def wait(self, timeout: float) -> int:
        """Wait for the demo to exit, collecting descendants meanwhile; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"demo still running after {timeout:g}s; "
                                     f"stdout: {self.output()!r}")
            self.track()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode

    def output(self) -> str:
        """Everything the demo printed to stdout so far."""
        return "".join(self.stdout)

    def strays(self) -> list[int]:
        """Descendants seen earlier that still run."""
        return [pid for pid, start in self.seen.items() if alive(pid, start)]

    def kill_everything(self) -> None:
        """Last resort after a failed test: SIGKILL the demo and every descendant seen."""
        self.track()
        for pid, start in self.seen.items():
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def camera_lines(output: str) -> dict[str, list[re.Match[str]]]:
    """Per-camera watch lines of the demo's output."""
    found: dict[str, list[re.Match[str]]] = {}
    for line in output.splitlines():
        if match := CAMERA_LINE.match(line):
            found.setdefault(match["camera"], []).append(match)
    return found


# the venv's framebus by its full path (or python -m framebus): no venv on PATH needed
STATUS_LINE = re.compile(r"^\s+(/\S+/framebus|/\S+ -m framebus) status --url (\S+) "
                         r"--token-file (\S+)$")


def workdir_of(output: str) -> Path:
    """The demo's temporary directory, from the config path in its header."""
    match = re.search(r"config (\S+)/framebus\.yaml", output)
    assert match, output
    return Path(match[1])


def test_demo_runs_both_cameras_and_stops_by_itself_without_strays() -> None:
    demo = DemoRun("--duration", "8")
    try:
        # the printed `framebus status` line works as printed, while the demo runs, from a
        # shell whose PATH does not have the venv (issue 21: "command not found")
        line = demo.wait_for_line(STATUS_LINE, STARTUP_TIMEOUT)
        assert STATUS_LINE.match(line), line
        shown = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=30,
                               env={**os.environ, "PATH": "/usr/bin:/bin"})
        assert shown.returncode in (0, 3), shown.stderr  # 3: a camera still connecting
        assert {"lobby", "yard"} <= {row.split()[0] for row in shown.stdout.splitlines()
                                     if row.strip()}
        status = demo.wait(STARTUP_TIMEOUT + 30)
        output = demo.output()
        assert status == 0, (output, "".join(demo.stderr))
        assert "Ctrl-C to stop" in output
        lines = camera_lines(output)
        assert set(lines) == {"lobby", "yard"}, output
        for camera, matches in lines.items():
            assert any(float(m["fps"]) > 0 for m in matches), (camera, output)
            assert all(float(m["p50"]) >= 0 for m in matches), (camera, output)
        assert "640x360 bgr24" in output and "640x360 gray" in output
        assert len(demo.seen) >= 2, demo.seen  # at least the RTSP server and the daemon
        wait_for(lambda: not demo.strays(), 10, f"no stray process (left: {demo.strays()})")
        assert not workdir_of(output).exists()
    finally:
        demo.kill_everything()


def test_demo_stops_cleanly_on_sigint_without_strays() -> None:
    demo = DemoRun()
    try:
        demo.wait_for_line(CAMERA_LINE, STARTUP_TIMEOUT)
        demo.track()
        assert len(demo.seen) >= 2, demo.seen
        demo.proc.send_signal(signal.SIGINT)
        status = demo.wait(5)
        assert status in (0, 130), (status, demo.output(), "".join(demo.stderr))
        assert "Traceback" not in "".join(demo.stderr), demo.stderr
        wait_for(lambda: not demo.strays(), 10, f"no stray process (left: {demo.strays()})")
        assert not workdir_of(demo.output()).exists()
    finally:
        demo.kill_everything()


def test_media_cache_dir_is_in_the_checkout_or_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRAMEBUS_MEDIA_CACHE", raising=False)
    root = harness.checkout_root()
    assert root == Path(__file__).resolve().parent.parent
    assert harness.media_cache_dir() == root / ".cache" / "media"

    monkeypatch.setattr(harness, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert harness.media_cache_dir() == tmp_path / "xdg" / "framebus" / "media"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert harness.media_cache_dir() == tmp_path / "home" / ".cache" / "framebus" / "media"
    assert harness.media_cache_dir().is_dir()
    monkeypatch.setenv("FRAMEBUS_MEDIA_CACHE", str(tmp_path / "env"))
    assert harness.media_cache_dir() == tmp_path / "env"
    assert Path(harness.__file__).parent / "rtsp_server.py" == harness.SERVER_SCRIPT


def test_demo_piped_into_head_cleans_up() -> None:
    """`framebus demo | head -3`: the reader leaves early; the demo stops everything it
    started, removes its directory and exits 0 without a Broken pipe message."""
    proc = subprocess.Popen([sys.executable, "-m", "framebus", "demo", "--duration", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        head = [proc.stdout.readline() for _ in range(4)]  # through the config line
        workdir = workdir_of("".join(head) + "".join(proc.stdout.readline() for _ in range(3)))
        proc.stdout.close()  # what head does after its lines
        status = proc.wait(STARTUP_TIMEOUT + 30)
        stderr = proc.stderr.read()
        assert status == 0, stderr
        assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
        assert not workdir.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
