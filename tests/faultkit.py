"""Helpers for the fault matrix and the soak: the daemon as a subprocess, checked reader
processes, a rig of RTSP servers + fault proxy + daemon, and the "unaffected delivery" window.

Everything waits with a deadline (``waiting.wait_for``) and every process is cleaned up by the
context managers here, also when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from apikit import ApiClient
from camerakit import FAST
from faultproxy import FaultProxy
from prockit import LineProcess
from rtspserver import Mount, RtspServer
from waiting import wait_for

CHECKED_READER = Path(__file__).resolve().parent / "checked_reader.py"
STREAMING = "streaming"
# what a reader must never get: a message not at a boundary, a spliced one, a seq jump
TORN_KEYS = ("protocol_errors", "seq_errors", "spliced")


# -- the daemon as a process ----------------------------------------------------------------------


class DaemonProcess:
    """``python -m framebus run`` as a child process, its stderr collected line by line
    (the pattern of tests/test_service.py, plus /proc readings for leaks)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, *,
                 user: str | int | None = None, group: str | int | None = None,
                 args: Sequence[str] = (), python: str = sys.executable,
                 nofile: int | None = None) -> None:
        self.config = config

        def limit_fds() -> None:  # as LimitNOFILE=N does: soft and hard
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [python, "-m", "framebus", "run", "-c", str(config), *args],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            user=user, group=group, extra_groups=[] if user is not None else None,
            preexec_fn=limit_fds if nofile is not None else None,
        )
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._api: ApiClient | None = None

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def count(self, text: str) -> int:
        """Log lines containing ``text``."""
        return sum(text in line for line in list(self.lines))

    def logged(self, text: str) -> bool:
        """True if a log line contains ``text``."""
        return self.count(text) > 0

    def api(self, timeout: float = 30) -> ApiClient:
        """A client for the daemon's HTTP API (waits for the address in the log)."""
        if self._api is None:
            def client() -> ApiClient | None:
                found = ApiClient.from_log(list(self.lines))
                if found is None and not self.alive:
                    raise AssertionError(f"the daemon exited: {self.lines[-5:]}")
                return found
            self._api = wait_for(client, timeout, "the HTTP address in the log")
            assert self._api is not None
        return self._api

    def reload(self, timeout: float = 30) -> None:
        """SIGHUP, then wait for the "reloaded" (or refused) log line."""
        done = self.count("reloaded ") + self.count("reload: keeping")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.count("reloaded ") + self.count("reload: keeping") > done,
                 timeout, "the reload to be applied")

    def status_field(self, key: str) -> int:
        """A number from /proc/PID/status, e.g. ``VmRSS`` (kB) or ``Threads``."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.pid}/status")

    def rss_bytes(self) -> int:
        """Resident set size."""
        return self.status_field("VmRSS") * 1024

    def threads(self) -> int:
        """Threads of the daemon process."""
        return self.status_field("Threads")

    def fds(self) -> int:
        """Open file descriptors of the daemon process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._thread.join(10)


# -- checked reader processes ---------------------------------------------------------------------


class CheckedReader(LineProcess):
    """A consumer process (tests/checked_reader.py) validating every message it reads."""

    SCRIPT = CHECKED_READER  # a subclass may run another reader with the same output

    def __init__(self, fifo: Path, *args: str, max_seconds: float = 1200.0,
                 user: str | int | None = None, group: str | int | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.fifo = fifo
        self.frames: list[dict[str, Any]] = []
        self.opened: list[int] = []  # CLOCK_MONOTONIC ns of each open the reader made itself
        self.events: list[dict[str, Any]] = []  # STATE messages and restarts, in stream order
        self.records: list[dict[str, Any]] = []  # frames and events, in stream order
        self.summary: dict[str, Any] | None = None
        super().__init__(
            [python, str(self.SCRIPT), str(fifo), "--max-seconds", str(max_seconds), *args],
            stdin=subprocess.PIPE,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )

    def parse(self, line: str) -> None:
        if not line.startswith("{"):
            return
        record = json.loads(line)
        if record.get("end"):
            self.summary = record
        elif "opened" in record:
            self.opened.append(int(record["t"]))
        elif "event" in record:
            self.events.append(record)
            self.records.append(record)
        else:
            self.frames.append(record)
            self.records.append(record)

    def wait_frames(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` frames arrived in total."""
        wait_for(lambda: len(self.frames) >= count, timeout,
                 f"{count} frames at the reader of {self.fifo.name}")

    def wait_more(self, count: int, timeout: float = 30) -> None:
        """Wait for ``count`` more frames than now."""
        self.wait_frames(len(self.frames) + count, timeout)

    def first_published_after(self, mono_ns: int) -> dict[str, Any] | None:
        """The first frame received that the daemon published at or after ``mono_ns``."""
        return next((f for f in list(self.frames) if f["pub"] >= mono_ns), None)

    def last_seq(self, camera: str | None = None) -> int:
        """The newest seq received (of ``camera``, if given)."""
        frames = [f for f in list(self.frames) if camera is None or f["camera"] == camera]
        return frames[-1]["seq"] if frames else 0

    def stop(self, timeout: float = 20) -> dict[str, Any]:
        """Close stdin (the reader's stop signal), wait for its summary; kill at the deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.collected(10)
        if self.summary is None:
            raise AssertionError(f"reader of {self.fifo.name} ended without a summary: "
                                 f"{self.lines[-3:]}")
        return self.summary

    @property
    def torn(self) -> int:
        """Protocol errors + seq errors + spliced messages (after stop())."""
        s = self.summary or {}
        return sum(int(s.get(key, 0)) for key in TORN_KEYS)

    @property
    def truncated(self) -> int:
        """Messages cut short by EOF, which the client dropped (after stop())."""
        return int((self.summary or {}).get("truncated", 0))


# -- the rig --------------------------------------------------------------------------------------


def camera_config(url: str, **extra: Any) -> dict[str, Any]:
    """A camera as the fault tests run it: fast timeouts, every frame decoded."""
    return {"url": url, "idle_decode": "all", **FAST, **extra}


@dataclass
class Rig:
    """RTSP servers, an optional fault proxy and the daemon subprocess, with API helpers."""

    root: Path
    servers: dict[str, RtspServer]
    daemon: DaemonProcess
    proxy: FaultProxy | None = None
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    failing: tuple[str, ...] = ()  # cameras expected not to stream (e.g. a wrong password)
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def fifo_dir(self) -> Path:
        """Where the daemon keeps its FIFOs."""
        return self.root / "fifos"

    @property
    def api(self) -> ApiClient:
        """The daemon's API."""
        return self.daemon.api()

    def camera(self, name: str) -> dict[str, Any]:
        """GET /v1/cameras/{name}."""
        status, body = self.api.json("GET", f"/v1/cameras/{name}")
        assert status == 200, (status, body)
        return dict(body)

    def state(self, name: str) -> str:
        """The camera's state."""
        return str(self.camera(name)["state"])

    def last_seq(self, name: str) -> int:
        """The newest seq the daemon published for a camera."""
        return int(self.camera(name)["last_seq"] or 0)

    def wait_streaming(self, *names: str, timeout: float = 30) -> None:
        """Wait until every named camera (all but ``failing``, if none named) is streaming."""
        wanted = names or tuple(n for n in self.cameras if n not in self.failing)
        wait_for(lambda: all(self.state(n) == STREAMING for n in wanted), timeout,
                 f"{', '.join(wanted)} streaming")

    def subscribe(self, camera: str, tag: str, **options: Any) -> tuple[str, Path]:
        """POST /v1/subscriptions under a fresh name; returns (name, FIFO path)."""
        name = f"{tag}-{next(self._names)}"
        status, body = self.api.json("POST", "/v1/subscriptions",
                                     {"name": name, "camera": camera, **options})
        assert status == 201, (status, body)
        return name, Path(body["fifo"])

    def unsubscribe(self, name: str) -> None:
        """DELETE /v1/subscriptions/{name} (already gone is fine)."""
        status, body = self.api.json("DELETE", f"/v1/subscriptions/{name}")
        assert status in (200, 404), (status, body)

    def subscription(self, name: str) -> dict[str, Any]:
        """GET /v1/subscriptions/{name}."""
        status, body = self.api.json("GET", f"/v1/subscriptions/{name}")
        assert status == 200, (status, body)
        return dict(body)

    def write_config(self, cameras: dict[str, dict[str, Any]] | None = None,
                     subscribers: dict[str, Any] | None = None) -> None:
        """Rewrite the config file (apply it with ``daemon.reload()``)."""
        if cameras is not None:
            self.cameras = cameras
        write_daemon_config(self.daemon.config, self.fifo_dir, self.cameras, subscribers or {})


def write_daemon_config(path: Path, fifo_dir: Path, cameras: dict[str, dict[str, Any]],
                        subscribers: dict[str, Any], **extra: Any) -> Path:
    """The daemon's YAML: HTTP on a free loopback port, the given cameras and subscribers.
    Written atomically, so a reload never reads half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.safe_dump({
        "fifo_dir": str(fifo_dir), "http": {"listen": "127.0.0.1:0"},
        "cameras": cameras, "subscribers": subscribers, **extra,
    }))
    os.replace(temporary, path)
    return path


@contextlib.contextmanager
def rig(root: Path, server_mounts: Mapping[str, Sequence[Mount]],
        cameras: Callable[[dict[str, RtspServer], FaultProxy | None], dict[str, dict[str, Any]]],
        *, proxy_to: tuple[str, str] | None = None, env: dict[str, str] | None = None,
        files: dict[str, str] | None = None, args: Sequence[str] = (),
        expect_failing: Sequence[str] = ()) -> Iterator[Rig]:
    """Start RTSP servers (name -> mounts), optionally a fault proxy in front of one server's
    port (``proxy_to=(server, mount)``), then the daemon with ``cameras(servers, proxy)``.
    ``files`` are written under ``root`` first (e.g. a password file, mode 0600). Waits until
    every camera except ``expect_failing`` streams."""
    root.mkdir(parents=True, exist_ok=True)
    servers: dict[str, RtspServer] = {}
    proxy: FaultProxy | None = None
    daemon: DaemonProcess | None = None
    try:
        for name, mounts in server_mounts.items():
            servers[name] = RtspServer(mounts)
            servers[name].start()
        if proxy_to is not None:
            proxy = FaultProxy(("127.0.0.1", servers[proxy_to[0]].port)).start()
        for relative, text in (files or {}).items():
            fd = os.open(root / relative, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as secret:  # created 0600: never readable by others
                secret.write(text)
        wanted = cameras(servers, proxy)
        config = write_daemon_config(root / "framebus.yaml", root / "fifos", wanted, {})
        daemon = DaemonProcess(config, env, args=args)
        the_rig = Rig(root, servers, daemon, proxy, wanted, tuple(expect_failing))
        the_rig.api  # noqa: B018  (waits for the HTTP address)
        the_rig.wait_streaming()
        yield the_rig
    finally:
        if daemon is not None:
            daemon.stop()
        if proxy is not None:
            proxy.close()
        for server in servers.values():
            server.close()


# -- measuring a fault ----------------------------------------------------------------------------


@dataclass
class Watched:
    """An unaffected subscriber: its reader and the camera it follows."""

    name: str
    camera: str
    reader: CheckedReader
    start_seq: int = 0
    end_seq: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # the daemon's drops, at the end

    def caught_up(self) -> bool:
        """True once the reader got the frame that closed the window (or a newer one)."""
        return self.reader.last_seq(self.camera) >= self.end_seq

    def delivered(self) -> float:
        """Fraction of the camera's frames published in the window that the reader got."""
        published = self.end_seq - self.start_seq
        got = {f["seq"] for f in list(self.reader.frames)
               if f["camera"] == self.camera and self.start_seq < f["seq"] <= self.end_seq}
        return len(got) / published if published > 0 else 1.0


@dataclass
class Scenario:
    """One fault's subscribers and readers: the victim's, the unaffected ones, the window."""

    rig: Rig
    tag: str
    names: list[str] = field(default_factory=list)
    readers: list[CheckedReader] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    window_start_ns: int = 0
    window_end_ns: int = 0
    truncated: int = 0  # messages cut short by EOF over all readers (set by stop_readers)

    def subscribe(self, camera: str, **options: Any) -> tuple[str, Path]:
        """A subscription removed at the end of the scenario."""
        name, path = self.rig.subscribe(camera, self.tag, **options)
        self.names.append(name)
        return name, path

    def reader(self, path: Path, *args: str) -> CheckedReader:
        """A checked reader stopped (and its summary collected) at the end."""
        reader = CheckedReader(path, *args)
        self.readers.append(reader)
        return reader

    def watch(self, camera: str, **options: Any) -> Watched:
        """An unaffected subscriber + reader on ``camera``, receiving before this returns."""
        name, path = self.subscribe(camera, **options)
        reader = self.reader(path)
        reader.wait_frames(5)
        watched = Watched(name, camera, reader)
        self.watched.append(watched)
        return watched

    def begin(self) -> int:
        """Open the measurement window (call just before injecting the fault); returns now."""
        for w in self.watched:
            w.start_seq = self.rig.last_seq(w.camera)
        self.window_start_ns = time.monotonic_ns()
        return self.window_start_ns

    def end(self, timeout: float = 20) -> float:
        """Close the window (after recovery); returns the worst unaffected delivered fraction."""
        self.window_end_ns = time.monotonic_ns()
        for w in self.watched:
            w.end_seq = self.rig.last_seq(w.camera)
        for w in self.watched:
            wait_for(w.caught_up, timeout, f"{w.name} to catch up to seq {w.end_seq}")
            w.dropped = {k: v for k, v in self.rig.subscription(w.name)["dropped"].items() if v}
        return min((w.delivered() for w in self.watched), default=1.0)



    def stop_readers(self, allow_truncated: bool = False) -> int:
        """Stop every reader; returns the torn-frame count over all of them. A message cut
        short by EOF is dropped by the client, never delivered; it is still a failure unless
        ``allow_truncated`` (the daemon stays up in every fault here, so no message should be
        left unfinished)."""
        for reader in self.readers:
            if reader.summary is None:
                reader.stop()
        self.truncated = sum(r.truncated for r in self.readers)
        assert allow_truncated or self.truncated == 0, {
            r.fifo.name: r.summary for r in self.readers if r.truncated}
        return sum(r.torn for r in self.readers)

    def details(self) -> dict[str, Any]:
        """What to record besides the headline numbers: the unaffected subscribers' drops (by
        reason) and the errors of any reader that saw a torn frame."""
        return {"unaffected_drops": {w.name: w.dropped for w in self.watched},
                "truncated": self.truncated,
                "reader_errors": {r.fifo.name: (r.summary or {}).get("errors", [])
                                  for r in self.readers if r.torn}}

    def close(self) -> None:
        """Stop readers (killing any left) and delete the subscriptions."""
        for reader in self.readers:
            if reader.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    reader.stop()
        if self.rig.daemon.alive:
            for name in self.names:
                with contextlib.suppress(Exception):
                    self.rig.unsubscribe(name)


@contextlib.contextmanager
def scenario(the_rig: Rig, tag: str, healthy: str = "healthy") -> Iterator[Scenario]:
    """A scenario with an unaffected subscriber on the ``healthy`` camera already receiving."""
    sc = Scenario(the_rig, tag)
    try:
        sc.watch(healthy, format="gray")
        yield sc
    finally:
        sc.close()


def seconds_since(mono_ns: int) -> float:
    """Seconds from ``mono_ns`` (time.monotonic_ns()) to now."""
    return (time.monotonic_ns() - mono_ns) / 1e9


def recovery_time(reader: CheckedReader, healed_ns: int, timeout: float = 30) -> float:
    """Seconds from ``healed_ns`` until ``reader`` received a frame published after it."""
    frame = wait_for(lambda: reader.first_published_after(healed_ns), timeout,
                     "a frame published after the fault ended")
    assert frame is not None
    return (int(frame["t"]) - healed_ns) / 1e9
