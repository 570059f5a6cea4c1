"""Signals for a main loop: handlers only record and wake it (gunicorn's arbiter pattern)."""

from __future__ import annotations

import select
import signal
import socket
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
