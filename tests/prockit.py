"""Test helpers for child processes: one whose stdout lines are collected as they come, and
a free loopback port to hand one."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any


def free_port() -> int:
    """A loopback TCP port nothing listens on now (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LineProcess:
    """A child process with its stdout lines (newline removed) collected in ``lines`` by a
    thread as they come; a subclass parses each line in :meth:`parse`.

    ``popen`` goes to :class:`subprocess.Popen` (stdin, stderr, env, user, ...); stdout is a
    text pipe.
    """

    def __init__(self, args: Sequence[str], **popen: Any) -> None:
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            list(args), stdout=subprocess.PIPE, text=True, **popen)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.parse(line)

    def parse(self, line: str) -> None:
        """Called with each stdout line (newline included) after it is added to ``lines``."""

    def collected(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the collecting thread to read stdout to its end."""
        self._thread.join(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process stops (a reader stops draining its FIFO)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
