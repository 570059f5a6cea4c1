"""Hand-made hostile requests against a real daemon process, over raw sockets: numbers in
queries that only look like numbers, request heads over the limit arriving whole, JSON nested
past the decoder's recursion, and a flood of clients that reset their connections. None may
cause a 500, a traceback or more log lines than the documented bound (framebus/lograte.py).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from faultkit import DaemonProcess, write_daemon_config
from waiting import wait_for

from framebus.api_handlers import Handlers
from framebus.jsonbody import MAX_DEPTH
from framebus.lograte import REQUEST_LINES, LogRateLimit

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


def open_connections(api: ApiClient) -> float:
    _, _, raw = api.request("GET", "/metrics")
    return next(float(line.split()[1]) for line in raw.decode().splitlines()
                if line.startswith("framebus_http_connections "))


def test_a_flood_of_resetting_clients_logs_nothing(daemon: DaemonProcess) -> None:
    """1,000 unauthenticated POSTs whose client reads 100 bytes of the 401 and closes with the
    body unread (so the kernel resets the connection while the daemon lingers)."""
    api = daemon.api()
    request = (b"POST /v1/subscriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               b"application/json\r\nContent-Length: 65536\r\n\r\n" + b"x" * 1000)
    before = len(daemon.lines)
    started = time.monotonic()
    for _ in range(1000):
        with socket.create_connection((api.host, api.port), timeout=10) as sock:
            sock.sendall(request)
            sock.recv(100)
    # every flooding connection has ended (and logged whatever it logs) once only the scrape's
    # own is open; then a reload's line marks the end of their lines in the daemon's stderr
    wait_for(lambda: open_connections(api) <= 1, 20, "the flood's connections to end")
    elapsed = time.monotonic() - started
    daemon.reload()
    lines = list(daemon.lines)[before:]
    lines = lines[:next(i for i, line in enumerate(lines) if "reloaded " in line)]
    print(f"\nMEASURED reset flood: {len(lines)} log lines in {elapsed:.1f} s "
          f"({len(lines) / elapsed:.1f} lines/s) for 1,000 resetting clients")
    assert not [line for line in lines if "Traceback" in line], lines[:20]
    bound = REQUEST_LINES.total_burst + REQUEST_LINES.total_rate * elapsed + 2
    assert len(lines) <= bound, lines[:20]
    assert lines == []  # a reset peer is normal: not worth a line at all


def test_lines_requests_cause_are_bounded_with_a_count_of_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint bug any client can trigger (a 500 each time, with a traceback): 400 such
    requests in about a second write the rate limit's burst and rate, then one line counts
    the rest."""
    def broken(self: Handlers, _query: dict[str, str]) -> None:
        raise RuntimeError("a bug any client can trigger")
    monkeypatch.setattr(Handlers, "list_cameras", broken)
    caplog.set_level(logging.INFO)
    requests = 400
    with running_daemon({"cam": CAMERA}, {}, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0"}) as running:
        api = ApiClient(running)
        REQUEST_LINES.report()  # what earlier tests left: reported before this one counts
        caplog.clear()
        started = time.monotonic()
        for _ in range(requests):
            assert api.request("GET", "/v1/cameras")[0] == 500
        elapsed = time.monotonic() - started
    failed = [r for r in caplog.records if r.name == "framebus.control"]
    reports = [r.getMessage() for r in caplog.records if r.name == "framebus.logs"]
    suppressed = sum(int(m.split("suppressed ")[1].split()[0]) for m in reports)
    print(f"\nMEASURED {requests} failing requests in {elapsed:.1f} s: {len(failed)} lines "
          f"logged, {suppressed} suppressed and counted in {len(reports)} report line(s)")
    assert len(failed) <= REQUEST_LINES.burst + REQUEST_LINES.rate * elapsed + 1
    assert len(failed) + suppressed == requests, reports
    assert reports and "GET /v1/cameras" not in reports[0]  # templates, never client input
    assert "'http: %s %s failed'" in reports[-1]


def test_the_rate_limit_refills_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limit = LogRateLimit(rate=2, burst=3, total_rate=5, total_burst=6, report_s=10,
                         clock=lambda: now[0])
    logger = logging.getLogger("framebus.test-lograte")

    def passed(msg: str, count: int) -> int:
        return sum(limit.filter(logger.makeRecord(logger.name, logging.ERROR, __file__, 1,
                                                  msg, (), None)) for _ in range(count))
    assert passed("a %s", 10) == 3  # a kind's burst
    assert passed("b %s", 10) == 3  # another kind has its own, under the shared one (6)
    assert passed("c %s", 10) == 0  # the shared burst is spent
    assert limit.suppressed == 24
    now[0] = 1.0  # a second refills 2 of kind a, and 5 shared
    assert passed("a %s", 10) == 2
    assert limit.suppressed == 32 and not caplog.records
    now[0] = 100.0  # past report_s: the next line reports the 32, then suppression goes on
    assert passed("a %s", 100) == 3
    [report] = [r.getMessage() for r in caplog.records if r.name == "framebus.logs"]
    assert report.startswith("log rate limit: suppressed 32 similar lines in the last 100 s")
    assert "10 x framebus.test-lograte: 'c %s'" in report and "1 more kinds" not in report
    assert limit.suppressed == 97
    limit.report()
    assert limit.suppressed == 0 and "suppressed 97 similar" in caplog.records[-1].getMessage()
