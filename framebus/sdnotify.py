"""sd_notify through systemd-python: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Everything is a no-op when NOTIFY_SOCKET is unset (not started by systemd), so the daemon
runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import time

import systemd.daemon as sd_daemon

log = logging.getLogger("framebus.sdnotify")


class Notifier:
    """Talks to the service manager; the watchdog ping is rate-limited here."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and for_us and self.enabled else 0.0
        self._next_ping = 0.0
        self._started = False  # systemd arms the watchdog once start-up completed (READY=1)
        self._failed = False

    @property
    def ping_interval_s(self) -> float:
        """How often to ping: a fifth of the watchdog interval (systemd asks for < half), so
        a ping stays under half the interval late even when the loop ticks late."""
        return self.watchdog_s / 5 if self.watchdog_s else 0.0

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            sd_daemon.notify(message)
        except OSError as exc:  # like C sd_notify callers: the manager's absence is not fatal
            if not self._failed:
                self._failed = True
                log.warning("sd_notify failed (%s); continuing without it", exc.strerror)

    def ready(self, status: str) -> None:
        """Start-up (or a reload) finished."""
        self._send(f"READY=1\nSTATUS={status}")
        self._started = True

    def status(self, status: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        """A reload started (READY=1 follows)."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        """Shutdown started."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Called on every fan-out loop tick: pings at most every ``ping_interval_s``."""
        if not self.watchdog_s or not self._started:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            # 10 % early is fine: loop ticks that wake a hair early must not skip a ping
            self._next_ping = now + 0.9 * self.ping_interval_s
            self._send("WATCHDOG=1")
