"""The README's Python snippets run as written against a real daemon: only the paths
(/run/framebus → this test's fifo_dir) and the address (127.0.0.1:8470 → the daemon's free
port) are replaced; the token and the request directory come from the environment, as the
README says clients find them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus.daemon import Daemon

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture
def daemon(rtsp_server_factory: RtspServerFactory, tmp_path: Path) -> Iterator[Daemon]:
    server: RtspServer = rtsp_server_factory([Mount("front", width=1280, height=720)])
    requests = tmp_path / "requests"
    requests.mkdir()
    with running_daemon({"front": {"url": server.url("front"), "idle_decode": "all"}},
                        {"detector": {"camera": "front", "format": "bgr24"},
                         "recorder": {"camera": "front", "format": "gray", "width": 320}},
                        tmp_path / "fifos",
                        # as config/framebus.yaml: TCP and, beside it, the control socket
                        http={"listen": "127.0.0.1:0", "allowed_fifo_dirs": [str(requests)],
                              "unix_socket": str(tmp_path / "fifos" / "control.sock")}
                        ) as running:
        wait_for(lambda: running.store.latest("front") is not None, 20, "a first frame")
        yield running


def run(daemon: Daemon, code: str, lines: int) -> list[str]:
    """Run a snippet as its own process; the first ``lines`` lines of its output (a loop is
    stopped once they are there)."""
    api = ApiClient(daemon)
    code = code.replace("/run/framebus/", f"{daemon.config.fifo_dir}/").replace(
        "http://127.0.0.1:8470", api.url)
    env = {**os.environ, "FRAMEBUS_TOKEN": api.token or "",
           "FRAMEBUS_FIFO_DIR": str(daemon.config.http.allowed_fifo_dirs[0])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    out: list[str] = []

    def collect() -> None:
        assert proc.stdout is not None
        out.extend(line.rstrip() for line in proc.stdout)
    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(out) >= lines or proc.poll() is not None, 30,
                 f"{lines} lines from the snippet")
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    assert len(out) >= lines, (out, errors)
    return out[:lines]


def snippet(marker: str) -> str:
    found = [code for code in SNIPPETS if marker in code]
    assert len(found) == 1, f"one README snippet with {marker!r}"
    return found[0]


def test_the_subscriber_loop_runs_as_written(daemon: Daemon) -> None:
    for line in run(daemon, snippet("with Subscriber("), 3):
        camera, seq, missed, latency, unit = line.split()
        assert int(missed) >= 0
        assert (camera, unit) == ("front", "ms") and int(seq) > 0 and float(latency) >= 0


def test_request_frame_runs_as_written(daemon: Daemon) -> None:
    assert run(daemon, snippet("request_frame("), 1)[0].endswith("(360, 640, 3)")


def test_the_asyncio_consumers_run_as_written(daemon: Daemon) -> None:
    shapes = {line.split(" ", 2)[2] for line in run(daemon, snippet("AsyncSubscriber("), 8)}
    assert shapes == {"(720, 1280, 3)", "(180, 320)"}  # both FIFOs, in one loop


def test_the_event_snippet_runs_as_written(daemon: Daemon) -> None:
    lines = run(daemon, snippet("on_event=tell"), 2)
    for line in lines:  # the camera streams: frames (an event would come first, as a line)
        kind, camera, *rest = line.split()
        assert (kind, camera) in {("frame", "front"), ("event", "front")}, line
        if kind == "frame":
            assert int(rest[0]) > 0 and rest[1] == "True"  # a 1.2 daemon names its instance
