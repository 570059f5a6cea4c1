"""Run ``framebus/testsrc/rtsp_server.py`` (gst-rtsp-server) as a managed subprocess.

Used by the tests (through ``tests/rtspserver.py``) and by the built-in demo
(``framebus demo``). The server runs under the *system* Python (``/usr/bin/python3``, which
has ``gi``; override with the env var ``FRAMEBUS_GST_PYTHON``), serves pre-encoded clips made
by :mod:`framebus.testsrc.media` on 127.0.0.1, and can be stopped, killed, paused (SIGSTOP),
resumed (SIGCONT) and restarted on the same port to inject camera faults. It is always started
with ``--exit-on-stdin-eof`` and a pipe as its stdin, so it never outlives the process that
started it. Every wait has a deadline; nothing sleeps a fixed time.

Clips are cached in :func:`media_cache_dir`: ``$FRAMEBUS_MEDIA_CACHE`` if set, else
``<repo>/.cache/media`` when framebus runs from a source checkout, else
``$XDG_CACHE_HOME/framebus/media`` (``~/.cache/framebus/media``).

Typical use::

    with RtspServer([Mount("cam1"), Mount("cam2", codec="h265")]) as server:
        url = server.url("cam1")           # rtsp://127.0.0.1:PORT/cam1
        server.pause(); server.resume()
        server.kill(); server.restart()     # same port, waits for READY
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final
from urllib.parse import quote

from framebus.testsrc.media import Codec, ensure_clip, ensure_size_change_clip

__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "SERVER_SCRIPT",
    "Mount",
    "RtspServer",
    "RtspServerError",
    "checkout_root",
    "gst_python",
    "media_cache_dir",
]

#: The server script, shipped inside the package next to this module.
SERVER_SCRIPT: Final = Path(__file__).resolve().parent / "rtsp_server.py"
DEFAULT_READY_TIMEOUT: Final = 20.0
DEFAULT_STOP_TIMEOUT: Final = 5.0


def checkout_root() -> Path | None:
    """Return the source checkout framebus runs from, or None when it is installed normally.

    A checkout is recognised by the package's parent directory holding a ``pyproject.toml``
    and a ``tests`` directory next to ``framebus/`` (an editable install counts as a checkout).
    """
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "pyproject.toml").is_file() and (root / "tests").is_dir():
        return root
    return None


def media_cache_dir() -> Path:
    """Return (and create) the clip cache directory.

    ``$FRAMEBUS_MEDIA_CACHE`` if set; else ``<repo>/.cache/media`` in a source checkout; else
    ``$XDG_CACHE_HOME/framebus/media``, or ``~/.cache/framebus/media`` without XDG_CACHE_HOME.
    """
    env = os.environ.get("FRAMEBUS_MEDIA_CACHE")
    if env:
        path = Path(env)
    elif (root := checkout_root()) is not None:
        path = root / ".cache" / "media"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
        path = base / "framebus" / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def gst_python() -> str:
    """Return the interpreter that runs the server (it needs ``gi`` with GstRtspServer)."""
    return os.environ.get("FRAMEBUS_GST_PYTHON", "/usr/bin/python3")


class RtspServerError(RuntimeError):
    """The server did not start, or did not become ready before its deadline."""


@dataclass(frozen=True)
class Mount:
    """One mount of the test server and the clip it loops.

    ``size_change`` (a sequence of at least two (width, height) pairs) makes the clip change
    resolution every ``seconds`` (``width``/``height`` are then ignored). ``path`` serves an
    existing Annex-B file instead of a generated one.
    """

    name: str
    codec: Codec = "h264"
    width: int = 640
    height: int = 360
    fps: int = 25
    seconds: float = 2.0
    gop: int = 25
    user: str | None = None
    password: str | None = None
    size_change: tuple[tuple[int, int], ...] | None = None
    path: Path | None = None

    def clip(self, cache_dir: Path) -> Path:
        """Return the clip to serve, generating it into ``cache_dir`` if needed."""
        if self.path is not None:
            return self.path
        if self.size_change is not None:
            return ensure_size_change_clip(
                cache_dir, self.codec, self.size_change, self.fps, self.seconds, self.gop
            )
        return ensure_clip(
            cache_dir, self.codec, self.width, self.height, self.fps, self.seconds, self.gop
        )

    def argument(self, cache_dir: Path) -> str:
        """Return this mount's ``--mount`` argument value."""
        text = f"{self.name}={self.clip(cache_dir)},codec={self.codec},fps={self.fps}"
        if self.user is not None or self.password is not None:
            if self.user is None or self.password is None:
                raise ValueError(f"mount {self.name}: user and password go together")
            text += f",user={self.user},password_env={self.password_variable}"
        return text

    @property
    def password_variable(self) -> str:
        """The environment variable that carries this mount's password to the server (never
        its command line, which any local user can read in /proc/*/cmdline)."""
        return "FRAMEBUS_RTSP_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in self.name)


class RtspServer:
    """A gst-rtsp-server subprocess serving looping clips on 127.0.0.1."""

    def __init__(
        self,
        mounts: Sequence[Mount],
        *,
        cache_dir: Path | None = None,
        port: int = 0,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        prefix: Sequence[str] = (),
    ) -> None:
        if not mounts:
            raise ValueError("at least one mount is required")
        self.mounts: dict[str, Mount] = {m.name: m for m in mounts}
        if len(self.mounts) != len(mounts):
            raise ValueError("mount names must be unique")
        self._cache_dir = cache_dir if cache_dir is not None else media_cache_dir()
        self._requested_port = port
        self._port: int | None = None
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._args: list[str] | None = None
        # e.g. ``ip netns exec NS``: the server then serves 127.0.0.1 of that namespace
        self._prefix = list(prefix)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RtspServer:
        """Generate the clips if needed, start the server and wait until it is ready."""
        if self.running:
            raise RtspServerError("server already running")
        if self._args is None:
            self._args = [m.argument(self._cache_dir) for m in self.mounts.values()]
        port = self._port if self._port is not None else self._requested_port
        deadline = time.monotonic() + self._ready_timeout
        while True:
            try:
                self._port = self._spawn(port, deadline)
                return self
            except RtspServerError:
                # Restarting on a fixed port: a just-killed server's socket may take a moment
                # to go away. Retry until the deadline; a port of 0 never needs a retry.
                if port == 0 or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _spawn(self, port: int, deadline: float) -> int:
        assert self._args is not None
        command = [*self._prefix, gst_python(), str(SERVER_SCRIPT), "--port", str(port),
                   "--exit-on-stdin-eof"]
        for argument in self._args:
            command += ["--mount", argument]
        if self._stderr is not None:
            self._stderr.close()
        # Kept open across the process's life (read back by stderr_text), closed in close().
        self._stderr = tempfile.TemporaryFile(prefix="rtsp_server-", suffix=".log")  # noqa: SIM115
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **{
                m.password_variable: m.password for m in self.mounts.values()
                if m.password is not None}},
        )
        self._proc = proc
        try:
            line = self._read_ready_line(proc, deadline)
        except BaseException:
            self._terminate(proc, timeout=1.0)
            raise
        parts = line.split()
        if len(parts) != 2 or parts[0] != "READY" or not parts[1].isdigit():
            self._terminate(proc, timeout=1.0)
            raise RtspServerError(f"unexpected first line from server: {line!r}")
        return int(parts[1])

    def _read_ready_line(self, proc: subprocess.Popen[bytes], deadline: float) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RtspServerError(
                        f"server not ready within {self._ready_timeout:.0f} s; "
                        f"stderr: {self.stderr_text()[-2000:]}"
                    )
                if not selector.select(timeout=min(remaining, 0.5)):
                    continue
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    proc.wait(timeout=5)
                    raise RtspServerError(
                        f"server exited with status {proc.returncode} before READY; "
                        f"stderr: {self.stderr_text()[-2000:]}"
                    )
                buffered += chunk
        return buffered.split(b"\n", 1)[0].decode("ascii", "replace").strip()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM the server (continuing it first if paused), SIGKILL it after ``timeout``.

        Returns the exit status, or None if it was not running.
        """
        proc = self._proc
        if proc is None:
            return None
        status = self._terminate(proc, timeout)
        self._close_pipes(proc)
        return status

    def kill(self) -> int | None:
        """SIGKILL the server (a camera losing power) and reap it."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        status = proc.wait(timeout=DEFAULT_STOP_TIMEOUT)
        self._close_pipes(proc)
        return status

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is sent (a hung camera)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server; streams continue in real time (no backlog burst)."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float | None = None) -> RtspServer:
        """Stop the server if it runs, start it again on the same port, wait until ready."""
        if self._port is None:
            raise RtspServerError("server was never started")
        if self.running:
            self.stop()
        if timeout is not None:
            self._ready_timeout = timeout
        return self.start()

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RtspServerError("server is not running")
        self._proc.send_signal(signum)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            proc.terminate()
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(timeout=DEFAULT_STOP_TIMEOUT)

    def _close_pipes(self, proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._proc = None

    def __enter__(self) -> RtspServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and release its log file."""
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- introspection -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (fixed after the first start, reused by :meth:`restart`)."""
        if self._port is None:
            raise RtspServerError("server was never started")
        return self._port

    @property
    def pid(self) -> int:
        """The server process id."""
        if self._proc is None:
            raise RtspServerError("server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the server process exists (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, mount: str, *, user: str | None = None, password: str | None = None) -> str:
        """Return ``rtsp://[user:password@]127.0.0.1:PORT/mount`` (no credentials by default)."""
        if mount not in self.mounts:
            raise KeyError(f"no mount named {mount!r}")
        userinfo = ""
        if user is not None:
            userinfo = quote(user, safe="")
            if password is not None:
                userinfo += ":" + quote(password, safe="")
            userinfo += "@"
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{mount}"

    def auth_url(self, mount: str) -> str:
        """Return the URL of ``mount`` with its configured credentials."""
        spec = self.mounts[mount]
        return self.url(mount, user=spec.user, password=spec.password)

    def stderr_text(self) -> str:
        """Return what the current (or last) server process wrote to stderr."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def cpu_seconds(self) -> float:
        """Return the server's user+system CPU time so far, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
