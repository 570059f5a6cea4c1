"""Hand-made hostile requests against a real daemon process, over raw sockets: numbers in
queries that only look like numbers, request heads over the limit arriving whole, JSON nested
past the decoder's recursion, and a flood of clients that reset their connections. None may
cause a 500, a traceback or more log lines than the documented bound (framebus/lograte.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from apikit import ApiClient
from faultkit import DaemonProcess, write_daemon_config
from waiting import wait_for

from framebus.jsonbody import MAX_DEPTH

CAMERA = {"url": "lavfi:testsrc2=size=320x240:rate=5,realtime", "idle_decode": "all"}
MAX_HEAD = 16384  # http_server.Limits.max_head, documented as "431 above 16 KiB"
# values that int(), float() or str.isdigit() accept but the API does not, and plain junk
ODD_NUMBERS = ["²", "2²", "١٢", "\uff11\uff12", "1_0", " 7", "7 ", "+7", "-1", "0x10", "1e3", "nan",
               "inf", "", ".5", "5.", "9" * 25, "7\n", "ⅻ"]
NUMERIC_QUERIES = {  # every route that reads numbers from its query, and which ones
    "/v1/cameras/cam/snapshot.jpg": ("width", "height", "quality", "newer_than", "max_age"),
    "/v1/cameras/cam/snapshot.png": ("width", "height", "quality", "newer_than", "max_age"),
    "/v1/cameras/cam/live.mjpeg": ("width", "fps"),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("hostile")
    config = write_daemon_config(root / "framebus.yaml", root / "fifos", {"cam": CAMERA}, {})
    process = DaemonProcess(config)
    try:
        api = process.api()
        wait_for(lambda: api.json("GET", "/v1/cameras/cam")[1]["last_seq"] is not None, 30,
                 "a first frame")
        yield process
    finally:
        process.stop()
    assert not [line for line in process.lines if "Traceback" in line], process.lines[-40:]


def exchange(api: ApiClient, data: bytes, answers: int = 1) -> list[tuple[int, bytes]]:
    """Send ``data`` in one piece; the ``answers`` (status, body) that come back."""
    got: list[tuple[int, bytes]] = []
    with socket.create_connection((api.host, api.port), timeout=20) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        for _ in range(answers):
            status = int(stream.readline().split()[1])
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            got.append((status, stream.read(length)))
    return got


def head(api: ApiClient, target: str, size: int | None = None, method: str = "GET") -> bytes:
    """A request head for ``target`` padded (with an X-Pad header) to exactly ``size`` bytes."""
    start = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             f"Authorization: Bearer {api.token}\r\n").encode()
    if size is None:
        return start + b"\r\n"
    pad = size - len(start) - len(b"X-Pad: \r\n\r\n")
    data = start + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
    assert len(data) == size
    return data


def test_numeric_query_values_are_ascii_digits_in_range(daemon: DaemonProcess) -> None:
    api = daemon.api()
    for path, names in NUMERIC_QUERIES.items():
        for name in names:
            for value in ODD_NUMBERS:
                encoded = value.encode().hex()
                quoted = "".join(f"%{encoded[i:i + 2]}" for i in range(0, len(encoded), 2))
                status, headers, raw = api.request("GET", f"{path}?{name}={quoted}")
                assert status == 400, (path, name, value, status, raw[:200])
                assert headers["Content-Type"] == "application/json"
                body = json.loads(raw)
                assert body["error"] == "bad_query" and body["detail"].startswith(f"{name}:"), (
                    path, name, value, body)
    # and what the API documents still works
    for query in ("width=160&height=120&quality=50", "max_age=2.5", "max_age=30",
                  "newer_than=0"):
        status, _, raw = api.request("GET", f"/v1/cameras/cam/snapshot.jpg?{query}")
        assert status == 200, (query, raw[:200])
    status, _, raw = api.request("GET", "/v1/cameras/cam/snapshot.jpg?width=8193")
    assert status == 400 and b"width: expected an integer 1..8192" in raw
    live = head(api, "/v1/cameras/cam/live.mjpeg?width=160&fps=0.5")
    with socket.create_connection((api.host, api.port), timeout=20) as sock:
        sock.sendall(live)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_heads_over_the_limit_are_431_however_they_arrive(daemon: DaemonProcess) -> None:
    api = daemon.api()
    for size in (MAX_HEAD + 1, 17 * 1024, 40 * 1024, 63 * 1024):
        [(status, raw)] = exchange(api, head(api, "/v1/cameras", size))
        assert (status, json.loads(raw)["error"]) == (431, "head_too_large"), (size, raw)
    [(status, _)] = exchange(api, head(api, "/v1/cameras", MAX_HEAD))  # at the limit: served
    assert status == 200
    # kept alive and pipelined: the first is served, the big second one refused
    answers = exchange(api, head(api, "/healthz") + head(api, "/v1/cameras", 20000), 2)
    assert [status for status, _ in answers] == [200, 431]
    # a POST whose big head brings its body along: refused from the head alone
    body = b'{"name": "big", "camera": "cam"}'
    post = head(api, "/v1/subscriptions", 30000, "POST")[:-2] + (
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    [(status, _)] = exchange(api, post + body)
    assert status == 431
    assert api.json("GET", "/v1/subscriptions/big")[0] == 404


def test_deep_json_is_a_400_naming_the_limit(daemon: DaemonProcess) -> None:
    api = daemon.api()
    deep = [b"[" * 32000, b'{"a":' * 10000, b"[" * 32000 + b"]" * 32000,
            b'{"name": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
            b'{"x": "' + b"[" * 40000 + b'", "y": ' + b"{" * 100]
    for path in ("/v1/subscriptions", "/v1/cameras/cam/snapshot-to-fifo"):
        for body in deep:
            status, _, raw = api.request("POST", path, body,
                                         {"Content-Type": "application/json"})
            assert status == 400, (path, body[:40], status, raw[:200])
            answer = json.loads(raw)
            assert answer["error"] == "bad_json" and f"limit of {MAX_DEPTH}" in answer["detail"]
    # brackets inside strings do not nest, and a body at the limit is decoded
    status, body = api.json("POST", "/v1/subscriptions", {"name": "[[[[" * 100, "camera": "cam"})
    assert (status, body["error"]) == (400, "bad_request") and body["detail"].startswith("name")
    nested: Any = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    status, body = api.json("POST", "/v1/subscriptions", {"name": nested, "camera": "cam"})
    assert (status, body["error"]) == (400, "bad_request"), body
