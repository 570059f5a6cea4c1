"""Signals for a main loop: handlers only record and wake it (gunicorn's arbiter pattern);
and the process's end, past threads that cannot be stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
from collections import deque
from types import FrameType


class SignalInbox:
    """Signal handlers that only record; ``wait`` returns the signals received."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self._received: deque[int] = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous_fd = -1

    def install(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP (main thread only); ignore SIGPIPE."""
        assert threading.current_thread() is threading.main_thread()
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in self.HANDLED:
            signal.signal(signum, self._record)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # EPIPE comes back as an error instead

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self._received.append(signum)

    def wait(self, timeout: float) -> list[int]:
        """Block up to ``timeout`` for signals; return those received, oldest first."""
        if not self._received:
            select.select([self._reader], [], [], timeout)
        try:
            while self._reader.recv(64):
                pass
        except BlockingIOError:
            pass
        signals = []
        while self._received:
            signals.append(self._received.popleft())
        return signals


__all__ = ["SignalInbox"]


def exit_past_stuck_threads(code: int, prefix: str = "camera-") -> int:
    """Return ``code``, or end the process at once with it while a daemon thread named
    ``prefix``... is still alive.

    A camera thread blocked in PyAV (a stalled server, a hanging open) is abandoned at the
    stop deadline. Interpreter finalization with such a thread inside FFmpeg crashed the
    daemon with SIGSEGV when the read returned into a finalizing interpreter (PyAV's
    interrupt and log callbacks), so a clean stop exited -11. Everything else has stopped
    by now; logs are flushed first."""
    stuck = [t.name for t in threading.enumerate()
             if t.daemon and t.is_alive() and t.name.startswith(prefix)]
    if not stuck:
        return code
    logging.getLogger("framebus").info(
        "%d thread(s) still blocked in a read (%s): exiting without waiting for them",
        len(stuck), ", ".join(sorted(stuck)[:5]))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
