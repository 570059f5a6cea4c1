"""docs/openapi.yaml over the Unix socket: no token, no Host check, and FIFOs must be the
caller's (SO_PEERCRED)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from camerakit import FAST
from openapikit import (
    _check,
)
from waiting import wait_for

from framebus.config import parse_config
from framebus.daemon import Daemon

# -- over the Unix socket: no token, no Host check, and FIFOs must be the caller's ------------


class UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=20)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(self.path))


def _unix_request(path: Path, method: str, target: str, body: object = None,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data else {}
    connection = UnixConnection(path)
    try:
        connection.request(method, target, body=data, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _as_nobody(path: Path, requests: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw requests over the Unix socket from a child running as uid/gid 65534 (the
    daemon learns the caller's uid from the socket): one connection each, answers parsed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: system calls only (the parent has threads holding locks)
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            for raw in requests:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(20)
                    sock.connect(str(path))
                    sock.sendall(raw)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                os.write(write_end, len(answer).to_bytes(4, "big") + answer)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child running as nobody failed"
    answers = []
    while output:
        size = int.from_bytes(output[:4], "big")
        raw, output = output[4:4 + size], output[4 + size:]
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        answers.append((int(lines[0].split()[1]), fields, body))
    return answers


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@dataclass
class UnixLive:
    daemon: Daemon
    socket: Path
    fifo_dir: Path


@pytest.fixture(scope="module")
def unix_live() -> Iterator[UnixLive]:
    """A daemon serving its API on a Unix socket only (no TCP)."""
    with tempfile.TemporaryDirectory(prefix="framebus-openapi-unix-") as tmp:
        os.chmod(tmp, 0o755)  # so that a child running as another user reaches the socket
        fifo_dir = Path(tmp) / "fifos"
        fifo_dir.mkdir()
        path = Path(tmp) / "api.sock"
        config = parse_config({
            "fifo_dir": str(fifo_dir),
            "cameras": {"cam": {**FAST, "url": "lavfi:testsrc2=size=160x120:rate=25,realtime",
                                "idle_decode": "all"}},
            "http": {"unix_socket": str(path), "wait_timeout": "2s"},
        })
        daemon = Daemon(config, {"cam": None})
        daemon.start()
        try:
            assert daemon.control is not None and daemon.control.address == str(path)
            yield UnixLive(daemon, path, fifo_dir)
        finally:
            daemon.stop()


def test_the_unix_socket_needs_no_token_and_no_known_host(unix_live: UnixLive) -> None:
    assert _mode(unix_live.socket) == 0o660  # its permissions decide who may connect
    for headers in ({}, {"Host": "evil.example"}, {"Authorization": "Bearer wrong"}):
        answer = _unix_request(unix_live.socket, "GET", "/v1/cameras", headers=headers)
        assert _check("GET", "/v1/cameras", answer, 200)["cameras"][0]["name"] == "cam"
    _check("GET", "/healthz", _unix_request(unix_live.socket, "GET", "/healthz"), 200)
    # the route and body checks still apply
    answer = _unix_request(unix_live.socket, "POST", "/v1/subscriptions", headers={
        "Content-Type": "text/plain", "Content-Length": "0"})
    assert _check("POST", "/v1/subscriptions", answer, 415)["error"] == "unsupported_media_type"
    answer = _unix_request(unix_live.socket, "PUT", "/healthz")
    assert answer[0] == 405 and answer[1]["Allow"] == "GET"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a caller as another user")
def test_over_the_unix_socket_fifos_must_be_the_callers(unix_live: UnixLive) -> None:
    daemon = unix_live.daemon
    wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
    fifo = unix_live.fifo_dir / "roots.fifo"  # the daemon's user's (root), no reader
    os.mkfifo(fifo, 0o600)
    taken = unix_live.fifo_dir / "taken.fifo"  # an existing FIFO the daemon could take over
    os.mkfifo(taken, 0o660)
    # the daemon's previous run left this name's FIFO (its directory outlives a restart)
    leftover = unix_live.fifo_dir / "leftover.fifo"
    os.mkfifo(leftover, 0o660)
    old_fd = os.open(leftover, os.O_RDONLY | os.O_NONBLOCK)  # a reader on the old one
    os.chmod(unix_live.socket, 0o666)  # let the child connect at all
    try:
        def post(target: str, body: object) -> bytes:
            data = json.dumps(body).encode()
            return (f"POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                    ).encode() + data
        frame, subscription, again = _as_nobody(unix_live.socket, [
            post("/v1/cameras/cam/snapshot-to-fifo", {"fifo": str(fifo)}),
            post("/v1/subscriptions", {"name": "nobodys", "camera": "cam", "fifo": str(taken)}),
            post("/v1/subscriptions", {"name": "leftover", "camera": "cam"}),
        ])
        _check("POST", "/v1/subscriptions", again, 201)  # made anew, not taken over
        assert os.fstat(old_fd).st_nlink == 0 and "leftover" in daemon.dynamic
        # refused before the FIFO is opened: nobody cannot even learn whether it has a reader
        error = _check("POST", "/v1/cameras/{name}/snapshot-to-fifo", frame, 403)
        assert error["error"] == "fifo_refused" and "uid 65534" in error["detail"]
        error = _check("POST", "/v1/subscriptions", subscription, 403)
        assert error["error"] == "fifo_refused"
        assert "nobodys" not in daemon.dynamic
        # root (the daemon's user) may use them: the FIFO checks go on to the next step
        answer = _unix_request(unix_live.socket, "POST", "/v1/cameras/cam/snapshot-to-fifo",
                               {"fifo": str(fifo)})
        assert _check("POST", "/v1/cameras/{name}/snapshot-to-fifo", answer, 409)[
            "error"] == "no_reader"
    finally:
        os.chmod(unix_live.socket, 0o660)
        fifo.unlink()
        taken.unlink()
        os.close(old_fd)
        if "leftover" in daemon.dynamic:
            daemon.remove_dynamic("leftover")
