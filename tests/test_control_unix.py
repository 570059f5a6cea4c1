"""The control plane on a Unix socket: its permissions are the authentication (no token), and
SO_PEERCRED decides whose FIFOs a caller may hand the daemon. The other user is a real one
(nobody), in a real process: so these run as root only (CI does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fanoutkit import running_daemon
from rtspserver import Mount, RtspServer, RtspServerFactory
from test_least_privilege import python_for
from waiting import wait_for

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to run a client as another user")

CLIENT = textwrap.dedent("""
    import json, sys
    from framebus.apiclient import UnixHTTPConnection
    from framebus.client import request_frame

    sock, requests, foreign = sys.argv[1:4]
    frame = request_frame("cam", unix_socket=sock, fifo_dir=requests, format="gray",
                          timeout=5)
    own = list(frame.array.shape)
    connection = UnixHTTPConnection(sock, 10)
    connection.request("POST", "/v1/cameras/cam/snapshot-to-fifo",
                       json.dumps({"fifo": foreign, "format": "gray"}),
                       {"Content-Type": "application/json"})
    answer = connection.getresponse()
    print(json.dumps({"own": own, "foreign": [answer.status, json.loads(answer.read())]}))
""")


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=320, height=240)])


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="framebus-peer-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_caller_may_only_hand_the_daemon_its_own_fifo(server: RtspServer,
                                                         shared_root: Path) -> None:
    requests = shared_root / "requests"
    requests.mkdir()
    requests.chmod(0o1777)  # like /tmp: anyone may make a FIFO here, nobody may delete others'
    sock = shared_root / "control.sock"
    http = {"unix_socket": str(sock), "allowed_fifo_dirs": [str(requests)],
            "wait_timeout": "2s"}
    with running_daemon({"cam": {"url": server.url("cam"), "idle_decode": "all"}}, {},
                        shared_root / "fifos", http=http) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
        sock.chmod(0o666)  # for this test: let user nobody connect at all
        foreign = requests / "roots.fifo"
        os.mkfifo(foreign, 0o666)
        python, env, _note = python_for(NOBODY, NOBODY)
        held = os.open(foreign, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there: only the
        try:                                                  # owner check can refuse it
            ran = subprocess.run([python, "-c", CLIENT, str(sock), str(requests),
                                  str(foreign)], capture_output=True, text=True, timeout=60,
                                 user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                                 env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env})
            assert ran.returncode == 0, ran.stderr[-2000:]
            result = json.loads(ran.stdout.splitlines()[-1])
            assert result["own"] == [240, 320]  # no token needed on the socket
            status, body = result["foreign"]
            assert (status, body["error"]) == (403, "fifo_refused"), body
            assert f"uid {NOBODY}" in body["detail"]
            assert os.read(held, 65536) == b""  # not one byte reached root's FIFO
        finally:
            os.close(held)
