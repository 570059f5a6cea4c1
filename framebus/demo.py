"""``framebus demo``: two RTSP test cameras on loopback, the daemon, and a live watch view.

What runs:

* the test RTSP server (:mod:`framebus.testsrc.harness`, gst-rtsp-server under the system
  Python) looping two generated clips: ``lobby`` (1280x720 H.264, 25 fps, 1 s GOP) and
  ``yard`` (640x360 H.265, 15 fps, 1 s GOP). The clips are encoded once into the media cache;
* the daemon, ``python -m framebus run -c <tmp>/framebus.yaml``, as a subprocess in its own
  process group, logging to ``<tmp>/daemon.log``, with two subscribers: ``lobby-bgr24``
  (lobby scaled to 640 wide, bgr24) and ``yard-gray`` (yard at its native size, gray), whose
  FIFOs live in ``<tmp>/fifos``;
* in this process, :func:`framebus.watch.watch` on both FIFOs: one line per second per camera
  with fps, size, format, latency (daemon publish → fully read here) and missed frames.

Stopping: ``--duration``, Ctrl-C (SIGINT), SIGTERM or SIGHUP. Whatever the reason, the
``finally`` block stops the daemon (SIGTERM, SIGKILL after a deadline), then the RTSP server
(the same), then removes the temporary directory unless ``--keep``. Signals that arrive while
cleaning up are ignored so a second Ctrl-C cannot leave a process behind. Should this process
be killed outright, the daemon still gets SIGTERM (``PR_SET_PDEATHSIG``) and the RTSP server
exits when its stdin pipe reaches EOF (``--exit-on-stdin-eof``).

Exit status: 0 after a clean stop (also after Ctrl-C), 1 if something failed to start, died
on its own or did not stop cleanly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import yaml

from framebus.testsrc.harness import Mount, RtspServer, RtspServerError, media_cache_dir
from framebus.watch import watch

DAEMON_STOP_TIMEOUT: Final = 3.0
SERVER_STOP_TIMEOUT: Final = 1.5
_PR_SET_PDEATHSIG: Final = 1
_LOG_TAIL_LINES: Final = 20


@dataclass(frozen=True)
class DemoSubscriber:
    """One subscriber of the demo config."""

    name: str
    camera: str
    format: str
    width: int | None = None

    def describe(self) -> str:
        """E.g. ``bgr24, 640 wide`` or ``gray, native size``."""
        size = f"{self.width} wide" if self.width is not None else "native size"
        return f"{self.format}, {size}"


DEMO_MOUNTS: Final = (
    Mount("lobby", codec="h264", width=1280, height=720, fps=25, seconds=2.0, gop=25),
    Mount("yard", codec="h265", width=640, height=360, fps=15, seconds=2.0, gop=15),
)
DEMO_SUBSCRIBERS: Final = (
    DemoSubscriber("lobby-bgr24", "lobby", "bgr24", width=640),
    DemoSubscriber("yard-gray", "yard", "gray"),
)


def demo_config(server: RtspServer, fifo_dir: Path) -> dict[str, Any]:
    """The daemon configuration (as YAML data) for the cameras of a running ``server``."""
    cameras = {name: {"url": server.url(name), "open_timeout": "5s", "read_timeout": "5s",
                      "stall_timeout": "3s", "backoff": {"initial": "200ms", "max": "2s"}}
               for name in server.mounts}
    subscribers: dict[str, dict[str, Any]] = {}
    for sub in DEMO_SUBSCRIBERS:
        entry: dict[str, Any] = {"camera": sub.camera, "format": sub.format}
        if sub.width is not None:
            entry["width"] = sub.width
        subscribers[sub.name] = entry
    # a free port: the demo must not clash with a framebus service on the default 8470
    return {"fifo_dir": str(fifo_dir), "cameras": cameras, "subscribers": subscribers,
            "http": {"listen": "127.0.0.1:0"}}


class _Interrupted(Exception):
    """Raised in the main thread by SIGTERM/SIGHUP (SIGINT raises KeyboardInterrupt)."""


class _Signals:
    """SIGINT, SIGTERM and SIGHUP interrupt the demo once; during clean-up they are ignored."""

    HANDLED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.armed = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if not self.armed:
            return
        self.armed = False
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        """Install the handlers for the duration of the block, then restore the previous."""
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        self.armed = True
        try:
            yield self
        finally:
            self.armed = False
            for number, previous in self._previous.items():
                signal.signal(number, previous)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM the child when this process dies (Linux prctl)."""

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start_daemon(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m framebus run -c config_path`` with its output in ``log_path``.

    The daemon gets its own process group, so a Ctrl-C in the terminal reaches only the demo,
    which then stops the daemon itself, before the RTSP server.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "framebus", "run", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),  # safe: the demo has no threads yet
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bool]:
    """SIGTERM ``proc``, SIGKILL it after ``timeout``; return (exit status, was killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.terminate()
    try:
        code = proc.wait(timeout=timeout)
        # stopped before it had installed its handlers (the demo ended while it started):
        # SIGTERM's default action is exactly the stop we asked for
        return (0 if code == -signal.SIGTERM else code), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout), True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _header(server: RtspServer, daemon: subprocess.Popen[bytes], config_path: Path,
            log_path: Path, fifos: dict[str, Path], duration: float | None) -> str:
    codecs = {"h264": "H.264", "h265": "H.265"}
    lines = ["framebus demo", f"  RTSP test server   pid {server.pid} on 127.0.0.1:{server.port}"]
    for mount in server.mounts.values():
        lines.append(f"    {server.url(mount.name):<40} {mount.width}x{mount.height} "
                     f"{codecs.get(mount.codec, mount.codec)} {mount.fps} fps, "
                     f"GOP {mount.gop} frames")
    lines.append(f"  framebus daemon    pid {daemon.pid}, config {config_path}")
    lines.append(f"                     log {log_path}")
    lines.append("  subscriber FIFOs")
    for sub in DEMO_SUBSCRIBERS:
        lines.append(f"    {fifos[sub.name]}  ({sub.camera}: {sub.describe()})")
    lines.append("  one line per second per camera: fps, size, format, latency (daemon → here), "
                 "missed frames")
    by_itself = f" (or it stops by itself after {duration:g} s)" if duration is not None else ""
    lines.append(f"  Ctrl-C to stop{by_itself}")
    return "\n".join(lines) + "\n"


def _control_address(log_path: Path, daemon: subprocess.Popen[bytes],
                     wait_s: float = 10.0) -> str | None:
    """The daemon's HTTP address, from its "http: listening on ..." log line (its port is
    random: the demo must not clash with a framebus service on 8470)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and daemon.poll() is None:
        with contextlib.suppress(OSError):
            if match := re.search(r"http: listening on (\S+)", log_path.read_text()):
                return match[1]
        time.sleep(0.05)
    return None


def framebus_command() -> str:
    """How to run this framebus from any shell: the venv's own ``framebus`` by its full path
    (a bare ``framebus`` is "command not found" where the venv is not activated), else this
    Python with ``-m framebus``."""
    script = Path(sys.executable).with_name("framebus")
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m framebus"


def _control_lines(address: str | None, fifo_dir: Path) -> str:
    if address is None:
        return "  control API        not up yet (see the daemon log)\n"
    token = fifo_dir / "api.token"
    return (f"  control API        http://{address}  (open: /healthz, /metrics; the rest needs "
            f"the token in {token})\n"
            f"  status page        http://{address}/?token=$(cat {token})\n"
            f"    {framebus_command()} status --url http://{address} --token-file {token}\n"
            f"    curl -H \"Authorization: Bearer $(cat {token})\" http://{address}/v1/cameras\n")


class _Started:
    """What the demo has started so far, for the clean-up."""

    def __init__(self) -> None:
        self.server: RtspServer | None = None
        self.daemon: subprocess.Popen[bytes] | None = None


def run_demo(duration: float | None, keep: bool, out: TextIO) -> int:
    """Run the demo; return the exit status.

    ``duration`` is how many seconds to watch once everything runs (None: until a signal).
    ``keep`` leaves the temporary directory (config, FIFOs, daemon log) in place.
    """
    signals = _Signals()
    started = _Started()
    workdir = Path(tempfile.mkdtemp(prefix="framebus-demo-"))
    log_path = workdir / "daemon.log"
    status = 1
    with signals.installed():
        try:
            status = _run(signals, started, workdir, log_path, duration, out)
        except (KeyboardInterrupt, _Interrupted):
            status = 0
        except BrokenPipeError:  # `framebus demo | head`: the reader has seen enough
            status = 0
            out = _silenced(out)
        finally:
            signals.armed = False  # from here on, signals are recorded and ignored
            try:
                status = _cleanup(started, log_path, status, out)
                if keep:
                    print(f"kept {workdir} (config, FIFOs, daemon.log)", file=out, flush=True)
            except BrokenPipeError:
                _silenced(out)
            finally:
                if not keep:
                    shutil.rmtree(workdir, ignore_errors=True)
    return status


def _silenced(out: TextIO) -> TextIO:
    """After the reader of our output left: send the rest (and the interpreter's final flush
    of stdout) to /dev/null instead of failing on every line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, out.fileno())
    os.close(devnull)
    return out


def _cleanup(started: _Started, log_path: Path, status: int, out: TextIO) -> int:
    """Stop the daemon, then the RTSP server; return ``status``, or 1 if a stop was unclean."""
    report = []
    if started.daemon is not None:
        code, killed = stop_process(started.daemon, DAEMON_STOP_TIMEOUT)
        report.append(f"daemon exit status {code}{' (killed)' if killed else ''}")
        if (killed or code != 0) and status == 0:
            print(f"framebus demo: the daemon did not stop cleanly; its log ends with:\n"
                  f"{_tail(log_path)}", file=sys.stderr, flush=True)
            status = 1
    if started.server is not None:
        server_code = started.server.stop(timeout=SERVER_STOP_TIMEOUT)
        started.server.close()
        if server_code is not None:
            report.append(f"RTSP server exit status {server_code}")
    print(f"framebus demo: stopped ({', '.join(report) or 'nothing was running'})",
          file=out, flush=True)
    return status


def _run(signals: _Signals, started: _Started, workdir: Path, log_path: Path,
         duration: float | None, out: TextIO) -> int:
    print(f"framebus demo: preparing test clips in {media_cache_dir()} and starting the RTSP "
          "test server...", file=out, flush=True)
    server = RtspServer(DEMO_MOUNTS)
    started.server = server
    try:
        server.start()
    except RtspServerError as exc:
        print(f"framebus demo: the RTSP test server did not start: {exc}", file=sys.stderr)
        return 1
    fifo_dir = workdir / "fifos"
    fifo_dir.mkdir(mode=0o700)
    config_path = workdir / "framebus.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(server, fifo_dir), sort_keys=False))
    daemon = start_daemon(config_path, log_path)
    started.daemon = daemon
    fifos = {sub.name: fifo_dir / f"{sub.name}.fifo" for sub in DEMO_SUBSCRIBERS}
    print(_header(server, daemon, config_path, log_path, fifos, duration), file=out, flush=True)
    print(_control_lines(_control_address(log_path, daemon), fifo_dir), file=out, flush=True)

    def something_died() -> bool:
        return daemon.poll() is not None or not server.running

    watch(list(fifos.values()), duration, None, out, should_stop=something_died)
    if signals.received is not None:  # a terminal's Ctrl-C also reaches the RTSP server
        return 0
    if daemon.poll() is not None:
        print(f"framebus demo: the daemon exited on its own with status {daemon.returncode}; "
              f"its log ends with:\n{_tail(log_path)}", file=sys.stderr, flush=True)
        return 1
    if not server.running:
        print("framebus demo: the RTSP test server exited on its own; its log ends with:\n"
              + "\n".join(server.stderr_text().splitlines()[-_LOG_TAIL_LINES:]),
              file=sys.stderr, flush=True)
        return 1
    return 0
