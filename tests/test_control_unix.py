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
from typing import Any

import pytest
from apikit import ApiClient
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


# a victim's reader: holds its FIFO open and counts what arrives, until stdin closes
VICTIM_READER = textwrap.dedent("""
    import os, select, sys
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
    print("ready", flush=True)
    got = 0
    while True:
        ready, _, _ = select.select([fd, sys.stdin], [], [], 0.2)
        if sys.stdin in ready:
            break
        if fd in ready:
            got += len(os.read(fd, 65536))
    print(got, flush=True)
""")

# the victim's own frame request: over TCP with the token (refused, whoever owns the FIFO),
# then over the Unix socket (its uid is known there: served)
OWN_REQUESTS = textwrap.dedent("""
    import json, sys
    from framebus.client import FrameRequestError, request_frame

    url, token, sock, requests = sys.argv[1:5]
    try:
        request_frame("cam", url=url, token=token, fifo_dir=requests, format="gray", timeout=5)
        tcp = None
    except FrameRequestError as exc:
        tcp = [exc.status, exc.error, exc.detail]
    frame = request_frame("cam", unix_socket=sock, fifo_dir=requests, format="gray", timeout=5)
    print(json.dumps({"tcp": tcp, "unix": list(frame.array.shape)}))
""")


def test_over_tcp_a_token_holder_cannot_write_into_another_users_fifo(
        server: RtspServer, shared_root: Path) -> None:
    """Every member of the token file's group holds the token, so over TCP the daemon cannot
    tell them apart: it writes only into FIFOs of its own user there, and a user's own FIFO
    is served over the Unix socket, which it serves beside TCP when both are configured."""
    requests = shared_root / "requests"
    requests.mkdir()
    requests.chmod(0o1777)
    sock = shared_root / "control.sock"
    http = {"listen": "127.0.0.1:0", "unix_socket": str(sock),
            "allowed_fifo_dirs": [str(requests)], "wait_timeout": "2s"}
    python, env, _note = python_for(NOBODY, NOBODY)
    as_nobody: dict[str, Any] = {
        "user": NOBODY, "group": NOBODY, "extra_groups": [], "cwd": "/", "text": True,
        "env": {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env}}
    with running_daemon({"cam": {"url": server.url("cam"), "idle_decode": "all"}}, {},
                        shared_root / "fifos", http=http) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
        assert daemon.control is not None and daemon.control.unix_address == str(sock)
        sock.chmod(0o666)  # for this test: let user nobody connect at all
        api = ApiClient(daemon)  # the token holder (any member of the token file's group)
        victim = requests / "victim.fifo"  # a private request FIFO, as request_frame makes it
        os.mkfifo(victim, 0o620)
        os.chown(victim, NOBODY, NOBODY)
        reader = subprocess.Popen([python, "-c", VICTIM_READER, str(victim)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, **as_nobody)
        try:
            assert reader.stdout is not None and reader.stdout.readline() == "ready\n"
            status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                    {"fifo": str(victim), "format": "gray"})
            assert (status, body["error"]) == (403, "fifo_refused"), body
            assert f"belongs to uid {NOBODY}" in body["detail"]
            assert "Unix socket" in body["detail"] and "http.unix_socket" in body["detail"]
            status, body = api.json("POST", "/v1/subscriptions", {
                "name": "thief", "camera": "cam", "format": "gray", "fifo": str(victim)})
            assert (status, body["error"]) == (403, "fifo_refused"), body
            assert api.json("GET", "/v1/subscriptions")[1]["subscriptions"] == []
        finally:
            got = reader.communicate(timeout=30)[0]
        assert got.split() == ["0"], got  # not one byte reached the victim
        own = subprocess.run([python, "-c", OWN_REQUESTS, api.url, api.token or "", str(sock),
                              str(requests)], capture_output=True, timeout=60, **as_nobody)
        assert own.returncode == 0, own.stderr[-2000:]
        result = json.loads(own.stdout.splitlines()[-1])
        status, error, detail = result["tcp"]
        assert (status, error) == (403, "fifo_refused") and "Unix socket" in detail
        assert result["unix"] == [240, 320]
