"""Test helpers for framebus across hosts: processes in network namespaces whose JSON lines
are collected, configs for a camera host and a GPU host, and waits with deadlines.

The cameras draw flat frames whose level changes every frame (``FLAT``): a torn frame, half
of one and half of the next, is then visible as two levels (remote_reader_proc.py checks it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from waiting import wait_for

from framebus.apiclient import request_json
from framebus.errors import FramebusError
from framebus.testsrc import netns

TESTS = Path(__file__).resolve().parent
READER = TESTS / "remote_reader_proc.py"
PORT = 7447
# 1280x720 at 25 fps, every pixel of frame N at luma 37*N mod 256, chroma 128 (drawn small,
# then scaled: geq costs 17 ms a 720p frame, scaling a flat frame keeps it flat)
FLAT = ("lavfi:color=c=black:s=160x90:r=25,geq=lum='mod(N*37\\,256)':cb=128:cr=128,"
        "scale=1280:720:flags=neighbor,realtime")


class Proc:
    """A process (in a host, or here) whose stdout JSON lines are kept in ``lines``."""

    def __init__(self, argv: Sequence[str], host: netns.Host | None, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log = log.open("wb")
        kwargs: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                                  "stderr": self._log}
        if env is not None:
            kwargs["env"] = {**os.environ, **env}
        self.proc = host.popen(argv, **kwargs) if host else subprocess.Popen(argv, **kwargs)
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def frames(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Frame lines that arrived at or after ``since`` (time.monotonic)."""
        return [line for line in list(self.lines) if "seq" in line and line["t"] >= since]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("ev") == kind]

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is not None:
                self.proc.send_signal(sig)
            elif self.proc.stdin is not None:
                self.proc.stdin.close()  # readers exit on EOF, after their last line
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        self._log.close()

    def log_text(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")


def framebus(*args: str) -> list[str]:
    return [sys.executable, "-m", "framebus", *args]


def reader(target: str, *extra: str) -> list[str]:
    """Argv of remote_reader_proc.py: ``zenoh:...`` (with ``--connect``) or a FIFO path."""
    kind = "--remote" if target.startswith("zenoh:") else "--fifo"
    return [sys.executable, str(READER), kind, target, *extra]


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def camera_host_config(tmp: Path, host: netns.Host, router: netns.Host, rtsp_url: str,
                       name: str = "camhost") -> dict[str, Any]:
    """A camera host: ``gen`` (flat 720p frames; exported as 640x360 nv12 named ``nv12``,
    and native as ``hd``) and ``lobby``
    (RTSP), a local shm reader of ``gen``, the bridge dialing the router."""
    run = tmp / name
    run.mkdir(exist_ok=True)
    return {
        "fifo_dir": str(run),
        "http": {"listen": "127.0.0.1:0", "unix_socket": str(run / "control.sock")},
        "cameras": {
            "gen": {"url": FLAT, "remote": [
                {"name": "nv12", "format": "nv12", "width": 640, "height": 360},
                {"name": "hd", "format": "nv12"}]},
            "lobby": {"url": rtsp_url, "remote": [{"format": "nv12"}]},
        },
        "subscribers": {"local": {"camera": "gen", "transport": "shm"}},
        "remote": {"host": name, "connect": [f"tcp/{router.address}:{PORT}"],
                   "listen": [f"tcp/{host.address}:{PORT}"], "metrics_listen": "127.0.0.1:8471"},
    }


def cameras(sock: Path) -> dict[str, dict[str, Any]]:
    status, body = request_json("GET", "http://x", str(sock), "/v1/cameras", None, None, 5.0)
    assert status == 200, body
    return {cam["name"]: cam for cam in body["cameras"]}


def wait_streaming(sock: Path, names: Sequence[str], timeout: float = 60.0) -> None:
    def ready() -> bool:
        try:
            cams = cameras(sock)
        except (OSError, FramebusError):
            return False
        return all(cams.get(n, {}).get("state") == "streaming" for n in names)

    wait_for(ready, timeout, f"cameras {list(names)} streaming at {sock}", poll=0.2)


def window(procs: Sequence[Proc], seconds: float) -> float:
    """Let ``seconds`` pass (the readers keep reading); returns when the window began."""
    began = time.monotonic()
    deadline = began + seconds
    while time.monotonic() < deadline:
        if any(p.proc.poll() is not None for p in procs):
            raise AssertionError("a reader exited: " + " | ".join(
                p.log_text()[-500:] for p in procs if p.proc.poll() is not None))
        time.sleep(0.1)
    return began


def delivered(frames: list[dict[str, Any]]) -> float:
    """Frames received over frames the camera made in the span (by seq, one instance)."""
    if len(frames) < 2:
        return 0.0
    return len(frames) / (frames[-1]["seq"] - frames[0]["seq"] + 1)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def wait_frames(proc: Proc, count: int, timeout: float, what: str,
                since: float = 0.0, where: Callable[[dict[str, Any]], bool] | None = None
                ) -> None:
    def enough() -> bool:
        got = [f for f in proc.frames(since) if where is None or where(f)]
        return len(got) >= count

    try:
        wait_for(enough, timeout, what, poll=0.05)
    except AssertionError:
        raise AssertionError(f"{what}; reader log: {proc.log_text()[-1500:]}") from None


def host_python(host: netns.Host, code: str, timeout: float = 30.0) -> str:
    """Run Python ``code`` inside ``host`` (for what only that namespace reaches)."""
    done = host.run([sys.executable, "-c", code], timeout=timeout, capture_output=True)
    if done.returncode != 0:
        raise AssertionError(f"in {host.name}: {done.stderr.decode(errors='replace')[-1500:]}")
    return done.stdout.decode()


def scrape(host: netns.Host, port: int = 8471) -> dict[str, float]:
    """The bridge's metrics in ``host``, as {series: value}."""
    code = ("import time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', "
            "timeout=5).read().decode()); break\n"
            "    except OSError: time.sleep(0.2)\n")
    text = host_python(host, code)  # retried: a bridge just started listens a moment later
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values
