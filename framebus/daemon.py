"""Wiring and supervision: config → cameras → store → fan-out, signals, orderly shutdown.

Like gunicorn's arbiter: signal handlers only record the signal and wake the main thread
(through ``signal.set_wakeup_fd``); the main thread's loop dispatches. Supervision reconciles
what the configuration *wants* (cameras, subscribers) with what is *running*, so start-up and
reload are the same operation.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import resource
import signal
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from framebus.access import generate_token_file
from framebus.camera import Camera, CameraSet, CameraState
from framebus.config import (
    Config,
    SubscriberConfig,
    for_host,
    load_config,
    resolve_passwords,
)
from framebus.errors import ConfigError, FifoError, FramebusError
from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.fifo import fifo_key, missing_dirs, remove_made_fifo
from framebus.sdnotify import Notifier
from framebus.shm import remove_stale
from framebus.signals import SignalInbox
from framebus.store import LatestFrameStore, Rendition
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from framebus.control import ControlPlane

log = logging.getLogger("framebus.daemon")


LOCK_NAME = ".framebus.lock"


class AlreadyRunning(FramebusError):
    """Another daemon holds this configuration's fifo_dir."""


def lock_fifo_dir(fifo_dir: Path) -> int:
    """Take the one-daemon-per-fifo_dir lock (flock on ``fifo_dir/.framebus.lock``, holding
    our pid); the fd stays open for the daemon's life, the kernel drops the lock at exit."""
    path = fifo_dir / LOCK_NAME
    while True:
        try:
            fifo_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise FifoError(f"{path}: cannot open the daemon lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another framebus (pid {holder}) is running on {fifo_dir}: "
                                 f"it holds the lock {path}") from None
        if os.fstat(fd).st_nlink:  # not a file a failed start unlinked before we locked it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(config: Config, fd_limit: int) -> int:
    """http.max_connections, lowered so that cameras, FIFOs and shm segments always keep
    fds: 128 spare plus 4 per camera and per (configured or possible run-time) subscriber."""
    http = config.http
    reserve = 128 + 4 * (len(config.cameras) + len(config.subscribers) + http.max_subscriptions)
    return max(4, min(http.max_connections, fd_limit - reserve))


def http_token(config: Config) -> SecretStr | None:
    """The API's bearer token, from the config or its token file (None: generate one)."""
    http = config.http
    if http.token is not None:
        return http.token
    if http.token_file is not None:
        try:
            return SecretStr(http.token_file.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"http.token_file: cannot read: {exc.strerror}") from None
    return None


class Daemon:
    """A running framebus: its store, cameras and fan-out loop."""

    def __init__(self, config: Config, passwords: dict[str, SecretStr | None] | None = None,
                 max_tick_s: float = 1.0):
        self.config = config
        self.passwords = passwords if passwords is not None else resolve_passwords(config)
        self.http_token = http_token(config)
        self.store = LatestFrameStore()
        self.cameras = CameraSet(self.store)
        self.fanout = FanoutLoop(self.store, max_tick_s=max_tick_s)
        self.subscriber_errors: dict[str, str] = {}
        self.dynamic: dict[str, SubscriberConfig] = {}  # added over HTTP; survive reloads
        self.control: ControlPlane | None = None
        self.token_path: Path | None = None  # where a generated API token was written
        self._lock_fd: int | None = None
        self._stopped = False
        self._specs: dict[str, SubscriberSpec] = {}
        self._made_fifos: set[Path] = set()  # every subscriber FIFO path, removed ones too
        self._created: dict[Path, tuple[int, int]] = {}  # FIFOs this process made: (dev, ino)
        self._lock = threading.Lock()  # reconcile runs from the main and the HTTP threads

    def start(self) -> None:
        """Lock fifo_dir, start the fan-out loop, reconcile with the config, then serve HTTP."""
        fifo_dir = self.config.fifo_dir
        made_dirs = missing_dirs(fifo_dir)
        lock_made = not os.path.lexists(fifo_dir / LOCK_NAME)
        self._lock_fd = lock_fifo_dir(fifo_dir)  # before touching anything there
        try:
            self._start()
        except BaseException:
            # a failed start (the HTTP port is taken ...) leaves nothing behind: no thread,
            # FIFO writer or lock, and none of the FIFOs, lock file or directories it made
            self._halt()
            for path, key in self._created.items():
                remove_made_fifo(path, key)
            self._created.clear()
            if lock_made:  # unlinked while still held (lock_fifo_dir checks st_nlink)
                (fifo_dir / LOCK_NAME).unlink(missing_ok=True)
            for directory in made_dirs:  # deepest first; one holding anything else stays
                with contextlib.suppress(OSError):
                    directory.rmdir()
            self.stop()
            raise

    def _start(self) -> None:
        fd_limit = raise_fd_limit()
        # wherever a killed daemon may have made segments: next to every FIFO it could have
        # served, run-time subscriptions' (allowed_fifo_dirs) included
        directories = [self.config.fifo_dir, *(self.config.fifo_path(n).parent
                                               for n in self.config.subscribers),
                       *self.config.http.allowed_fifo_dirs]
        scan = remove_stale(directories)  # a crashed daemon's, never a running one's
        for path in scan.removed:
            log.warning("removed stale shm segment %s", path)
        for directory, entries in scan.skipped.items():  # one line per directory, however many
            log.warning("shm: left %d entries at segment names alone in %s: %s (not this "
                        "user's segments; never followed)", len(entries), directory,
                        ", ".join(entries[:5]))
        self.fanout.start()
        self.reconcile(self.config, self.passwords)
        if self.subscriber_errors:  # at start a bad FIFO is a configuration error (exit 2);
            name, error = sorted(self.subscriber_errors.items())[0]  # at reload it is logged
            raise ConfigError(f"subscribers.{name}.fifo: {error}")
        if self.config.http.enabled:
            from framebus.control import ControlPlane

            token = self.http_token
            if token is None:  # safe by default: a token only the fifo_dir's group can read
                token, self.token_path = generate_token_file(self.config.fifo_dir)
                self.http_token = token
                log.info("http: no token configured; generated one in %s", self.token_path)
            self.control = ControlPlane(self, token, connection_cap(self.config, fd_limit))
            self.control.start()

    def fifo_path(self, name: str) -> Path:
        """Where a configured or run-time subscriber's FIFO lives."""
        sub = self.dynamic.get(name) or self.config.subscribers[name]
        return sub.fifo or self.config.fifo_dir / f"{name}.fifo"

    def fifos_in_use(self) -> set[tuple[int, int]]:
        """(st_dev, st_ino) of every FIFO that exists now at a path the daemon made (or took)
        for a subscriber, current or removed: a frame request may write into none of them."""
        keys = set()
        current = {spec.path for spec in list(self._specs.values())}
        for path in [*current, *self._made_fifos]:
            try:
                info = os.stat(path)
            except OSError:
                if path not in current:
                    self._made_fifos.discard(path)  # gone: nothing left to protect
                continue
            keys.add((info.st_dev, info.st_ino))
        return keys

    def allowed_fifo_dirs(self) -> list[Path]:
        """Directories the HTTP API may write FIFOs in: fifo_dir plus the configured ones."""
        return [self.config.fifo_dir, *self.config.http.allowed_fifo_dirs]

    def add_dynamic(self, name: str, sub: SubscriberConfig) -> bool:
        """A run-time subscription; False if the name is taken (FifoError if the path is
        unsafe). The check and the add happen under one lock: two requests cannot both win."""
        spec = self._spec(self.config, name, sub)
        with self._lock:
            if name in self.config.subscribers or name in self.dynamic:
                return False
            self._made(spec.path, self.fanout.add(spec))
            self._specs[name] = spec
            self._made_fifos.add(spec.path)
            self.dynamic[name] = sub
        return True

    def remove_dynamic(self, name: str) -> None:
        """Forget a run-time subscription and remove the FIFO made for it (a reader still
        holding it open gets EOF once the loop closes its end)."""
        with self._lock:
            self.dynamic.pop(name, None)
            spec = self._specs.pop(name, None)
            if spec is not None:
                self._created.pop(spec.path, None)
                self.fanout.remove(name)
                with contextlib.suppress(OSError):
                    if stat.S_ISFIFO(os.lstat(spec.path).st_mode):
                        spec.path.unlink()

    def _spec(self, config: Config, name: str, sub: SubscriberConfig) -> SubscriberSpec:
        rendition = Rendition(PixelFormat.from_name(sub.format), sub.width, sub.height,
                              sub.quality)
        names = sub.names(config.cameras)
        return SubscriberSpec(name=name, camera=names[0], rendition=rendition,
                              cameras=names if sub.cameras is not None else (),
                              path=sub.fifo or config.fifo_dir / f"{name}.fifo",
                              max_fps=sub.max_fps, pipe_size=sub.pipe_size, mode=sub.mode,
                              group=sub.group, transport=sub.transport,
                              state_messages=sub.state_messages)

    def status_line(self) -> str:
        """E.g. "7/8 cameras streaming, 12 subscribers" (systemd STATUS=)."""
        streaming = sum(c.state is CameraState.STREAMING for c in self.cameras.cameras.values())
        readers = sum(s.connected for s in list(self.fanout.subscribers.values()))
        # those reconcile applied: the loop thread adds them to fanout.subscribers later
        return (f"{streaming}/{len(self.cameras.cameras)} cameras streaming, "
                f"{len(self._specs)} subscribers ({readers} connected)")

    def fifo_dir_lost(self) -> bool:
        """fifo_dir (its lock file) was removed under us, e.g. /run/framebus/NAME by the stop
        of framebus.service: FIFOs, token and control socket went with it."""
        if self._lock_fd is None:
            return False
        try:
            return os.fstat(self._lock_fd).st_nlink == 0
        except OSError:
            return True

    def reconcile(self, config: Config, passwords: dict[str, SecretStr | None]) -> None:
        """Make the running cameras and subscribers match ``config``; unchanged ones stay."""
        with self._lock:
            self._reconcile(config, passwords)

    def _reconcile(self, config: Config, passwords: dict[str, SecretStr | None]) -> None:
        for name in set(self.cameras.cameras) - set(config.cameras):
            self.cameras.remove(name)
        for name, camera_config in config.cameras.items():
            running = self.cameras.cameras.get(name)
            if running is not None and (running.config, self.passwords.get(name)) == (
                camera_config, passwords.get(name)
            ) and not _remote_changed(running, config):
                continue
            if running is not None:
                self.cameras.remove(name)
            self.cameras.add(Camera(name, camera_config, passwords.get(name), self.store,
                                    remote=config.remote))
        for name in [n for n, s in self.dynamic.items()
                     if any(c not in config.cameras for c in s.names(config.cameras))]:
            log.warning("subscription %s: its camera is gone; removed", name)
            del self.dynamic[name]
        merged = {**self.dynamic, **config.subscribers}  # a configured name wins
        wanted = {name: self._spec(config, name, sub) for name, sub in merged.items()}
        for name in set(self._specs) - set(wanted):
            self.fanout.remove(name)
            del self._specs[name]
        for name, spec in wanted.items():
            if self._specs.get(name) == spec:
                continue
            try:
                self._made(spec.path, self.fanout.add(spec))
            except FifoError as exc:  # one bad path disturbs nobody else
                log.error("subscriber %s: %s", name, exc, extra={"SUBSCRIBER": name})
                self.subscriber_errors[name] = str(exc)
                continue
            self.subscriber_errors.pop(name, None)
            self._specs[name] = spec
            self._made_fifos.add(spec.path)
        # FIFOs this process made that no subscriber uses any more (removed or moved): gone
        # too, in the loop thread after the removals above (so it does not make them again);
        # a path we did not make, or one another subscriber shares, stays
        in_use = {spec.path for spec in self._specs.values()}
        for path in [p for p in self._created if p not in in_use]:
            self.fanout.call(functools.partial(remove_made_fifo, path, self._created.pop(path)))
        self.config, self.passwords = config, passwords

    def _made(self, path: Path, created: bool) -> None:
        key = fifo_key(path) if created else None
        if key is not None:
            self._created[path] = key

    def stop(self) -> None:
        """Stop HTTP and cameras first (no new frames), then let the fan-out finish messages,
        then release the lock. Idempotent: a failed start has stopped already."""
        self._halt()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _halt(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.control is not None:
            self.control.stop()
        self.cameras.close()
        self.fanout.stop()
        if self.token_path is not None:
            self.token_path.unlink(missing_ok=True)


def _remote_changed(camera: Camera, config: Config) -> bool:
    """A ``zenoh:`` camera reaches the network by ``remote:`` (endpoints, TLS file): a reload
    that changes it must reopen that camera's session, not keep the old one."""
    return camera.config.url.startswith("zenoh:") and camera.remote != config.remote


def reload(daemon: Daemon, path: Path, notifier: Notifier, host: str | None = None) -> None:
    """SIGHUP: validate the new file first; apply only the differences, or keep the old one."""
    notifier.reloading()
    try:
        config = for_host(load_config(path), host)
        passwords = resolve_passwords(config)
        http_token(config)
    except ConfigError as exc:
        log.error("reload: keeping the running configuration: %s", exc)
    else:
        if config.http != daemon.config.http:
            log.warning("reload: http settings changed; they apply after a restart")
            config = config.model_copy(update={"http": daemon.config.http})
        daemon.reconcile(config, passwords)
        if daemon.control is not None:  # renewed certificate files, same paths
            daemon.control.reload_tls()
        log.info("reloaded %s: %s", path, daemon.status_line())
    notifier.ready(daemon.status_line())


def run(config: Config, passwords: dict[str, SecretStr | None] | None = None,
        config_path: Path | None = None, host: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads ``config_path`` (cut down to ``host`` in a
    fleet config). Returns the exit code."""
    inbox = SignalInbox()
    inbox.install()
    notifier = Notifier()
    # tick twice per ping interval, so a ping is never late by more than half an interval
    tick = min(1.0, notifier.ping_interval_s / 2) if notifier.ping_interval_s else 1.0
    daemon = Daemon(config, passwords, max_tick_s=tick)
    daemon.fanout.on_tick = notifier.watchdog  # a hung loop stops the pings: systemd restarts
    try:
        daemon.start()
    except (OSError, FramebusError) as exc:  # the HTTP address is taken, another daemon runs
        log.error("cannot start: %s", exc)
        daemon.stop()
        return 2 if isinstance(exc, ConfigError) else 1  # 2: restarting cannot fix it
    log.info("framebus running: %d cameras, %d subscribers (pid %d)", len(config.cameras),
             len(config.subscribers), os.getpid())
    notifier.ready(daemon.status_line())
    try:
        while True:
            signals = inbox.wait(1.0)
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                log.info("stopping on %s", signal.Signals(signals[-1]).name)
                break
            if signal.SIGHUP in signals and config_path is not None:
                reload(daemon, config_path, notifier, host)
            if daemon.fifo_dir_lost():  # 1: systemd restarts it, which makes the directory
                log.error("%s was removed under the daemon (its FIFOs, lock and token with "
                          "it): exiting to start again", daemon.config.fifo_dir)
                return 1
            notifier.status(daemon.status_line())
    finally:
        notifier.stopping()
        daemon.stop()
    log.info("stopped")
    return 0
