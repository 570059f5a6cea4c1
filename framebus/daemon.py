"""Wiring and supervision: config → cameras → store → fan-out, signals, orderly shutdown.

Like gunicorn's arbiter: signal handlers only record the signal and wake the main thread
(through ``signal.set_wakeup_fd``); the main thread's loop dispatches. Supervision reconciles
what the configuration *wants* (cameras, subscribers) with what is *running*, so start-up and
reload are the same operation.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from types import FrameType

from pydantic import SecretStr

from framebus.camera import Camera, CameraSet
from framebus.config import Config, SubscriberConfig, resolve_passwords
from framebus.errors import FifoError
from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.store import LatestFrameStore, Rendition
from framebus.wire import PixelFormat

log = logging.getLogger("framebus.daemon")


def subscriber_spec(config: Config, name: str, sub: SubscriberConfig) -> SubscriberSpec:
    """The fan-out's view of a configured subscriber."""
    rendition = Rendition(PixelFormat.from_name(sub.format), sub.width, sub.height, sub.quality)
    return SubscriberSpec(name=name, camera=sub.camera, rendition=rendition,
                          path=config.fifo_path(name), max_fps=sub.max_fps,
                          pipe_size=sub.pipe_size, mode=sub.mode, group=sub.group)


class Daemon:
    """A running framebus: its store, cameras and fan-out loop."""

    def __init__(self, config: Config, passwords: dict[str, SecretStr | None] | None = None):
        self.config = config
        self.passwords = passwords if passwords is not None else resolve_passwords(config)
        self.store = LatestFrameStore()
        self.cameras = CameraSet(self.store)
        self.fanout = FanoutLoop(self.store)
        self.subscriber_errors: dict[str, str] = {}
        self._specs: dict[str, SubscriberSpec] = {}

    def start(self) -> None:
        """Start the fan-out loop, then reconcile cameras and subscribers with the config."""
        self.fanout.start()
        self.reconcile(self.config, self.passwords)

    def reconcile(self, config: Config, passwords: dict[str, SecretStr | None]) -> None:
        """Make the running cameras and subscribers match ``config``; unchanged ones stay."""
        for name in set(self.cameras.cameras) - set(config.cameras):
            self.cameras.remove(name)
        for name, camera_config in config.cameras.items():
            running = self.cameras.cameras.get(name)
            if running is not None and (running.config, self.passwords.get(name)) == (
                camera_config, passwords.get(name)
            ):
                continue
            if running is not None:
                self.cameras.remove(name)
            self.cameras.add(Camera(name, camera_config, passwords.get(name), self.store))
        wanted = {name: subscriber_spec(config, name, sub)
                  for name, sub in config.subscribers.items()}
        for name in set(self._specs) - set(wanted):
            self.fanout.remove(name)
            del self._specs[name]
        for name, spec in wanted.items():
            if self._specs.get(name) == spec:
                continue
            try:
                self.fanout.add(spec)
            except FifoError as exc:  # one bad path disturbs nobody else
                log.error("subscriber %s: %s", name, exc, extra={"subscriber": name})
                self.subscriber_errors[name] = str(exc)
                continue
            self.subscriber_errors.pop(name, None)
            self._specs[name] = spec
        self.config, self.passwords = config, passwords

    def stop(self) -> None:
        """Stop cameras first (no new frames), then let the fan-out finish messages and close."""
        self.cameras.close()
        self.fanout.stop()


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
        import select

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


def run(config: Config, passwords: dict[str, SecretStr | None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    inbox = SignalInbox()
    inbox.install()
    daemon = Daemon(config, passwords)
    daemon.start()
    log.info("framebus running: %d cameras, %d subscribers (pid %d)", len(config.cameras),
             len(config.subscribers), os.getpid())
    try:
        while True:
            signals = inbox.wait(1.0)
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                log.info("stopping on %s", signal.Signals(signals[-1]).name)
                break
            if signal.SIGHUP in signals:
                log.warning("SIGHUP: reload arrives with the control-plane issue; ignored")
    finally:
        daemon.stop()
    log.info("stopped")
    return 0
