"""schemathesis against docs/openapi.yaml on a running daemon: every answer conforms to the
spec, and nothing is a server error (503/504 are the spec's documented "not now" answers, so
the 5xx check is ours: the daemon logs every unexpected failure, and none may appear). Over
TCP the API needs the bearer token the daemon generated; schemathesis sends it, and also
checks (ignored_auth) that the operations needing it refuse a request without it."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import wait_for

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
ST = Path(sys.executable).parent / "st"
# where a failing request is logged: the API (every 500) and the HTTP server (a connection
# dropped by a bug, with no answer at all)
LOGGERS = ("framebus.control", "framebus.http")


def fuzz(tmp_path: Path, caplog: pytest.LogCaptureFixture, examples: int) -> None:
    if not ST.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    camera = {"url": "lavfi:testsrc2=size=320x240:rate=25,realtime", "idle_decode": "all"}
    for logger in LOGGERS:
        caplog.set_level(logging.ERROR, logger=logger)
    with running_daemon({"cam": camera}, {"configured": {"camera": "cam", "format": "gray"}},
                        tmp_path / "fifos", http={"listen": "127.0.0.1:0",
                                                  "wait_timeout": "1s"}) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
        client = ApiClient(daemon)  # with the token the daemon generated (none configured)
        assert client.token, "the daemon generated no API token"
        # without a working token every answer would be a documented 401 and the run would
        # pass having tested nothing: schemathesis's missing_auth warning fails it instead
        settings = tmp_path / "schemathesis.toml"
        settings.write_text('[warnings]\nfail-on = ["missing_auth"]\n')
        result = subprocess.run(
            [str(ST), "--config-file", str(settings), "run", str(SPEC), "--url", client.url,
             "-n", str(examples),
             "--header", f"Authorization: Bearer {client.token}",
             "--exclude-path-regex", r"live\.mjpeg$",  # a stream without end
             "--exclude-checks", "not_a_server_error,positive_data_acceptance",
             "--request-timeout", "10", "--no-color", "--seed", "7"],
            capture_output=True, text=True, timeout=540, cwd=tmp_path)
        assert daemon.cameras.cameras["cam"].state.value == "streaming"
    assert result.returncode == 0, result.stdout[-4000:]
    failures = [r.getMessage() for r in caplog.records if r.name in LOGGERS]
    assert failures == []  # no request made the daemon fail (a 500 is always logged)


def test_schemathesis_finds_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fuzz(tmp_path, caplog, examples=10)  # the long run, 300, is under make soak


@pytest.mark.soak
def test_schemathesis_long(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fuzz(tmp_path, caplog, examples=300)


# -- hand-made hostile requests, beside schemathesis's (which keeps to the spec's types) ------

# numbers that only look like numbers (str.isdigit, int() or float() accept them), and junk
ODD_NUMBERS = ["²", "2²", "١٢", "\uff11\uff12", "ⅻ", "1_0", " 7", "+7", "-1", "0x1f", "1e3",
               "nan", "inf", "", ".5", "9" * 30, "7\n", "0.5", "5"]
NUMERIC = {"/v1/cameras/cam/snapshot.jpg": ("width", "height", "quality", "newer_than",
                                            "max_age"),
           "/v1/cameras/cam/live.mjpeg": ("width", "fps")}
MAX_HEAD = 16384


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[bytes, int, set[int]]:
    """A request (``{token}`` stands for the token), how many pieces it is sent in, and the
    statuses it may get: odd query numbers, JSON nested up to 40,000 deep, or heads around
    the 16 KiB limit, whole or in pieces."""
    kind = draw(st.sampled_from(["query", "json", "head"]))
    auth = "Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
    if kind == "query":
        path = draw(st.sampled_from(sorted(NUMERIC)))
        names = draw(st.lists(st.sampled_from(NUMERIC[path]), min_size=1, unique=True))
        values = [draw(st.one_of(st.sampled_from(ODD_NUMBERS), st.text(max_size=6),
                                 st.integers(-5, 10**21).map(str))) for _ in names]
        query = "&".join(f"{n}={quote(v, safe='')}" for n, v in zip(names, values, strict=True))
        return f"GET {path}?{query} HTTP/1.1\r\n{auth}\r\n".encode(), 1, {200, 400, 503}
    if kind == "json":
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        depth = draw(st.integers(1, 40000))
        body = opener * depth + b"1" + closer * draw(st.integers(0, depth))
        path = draw(st.sampled_from(["/v1/subscriptions", "/v1/cameras/cam/snapshot-to-fifo"]))
        head = (f"POST {path} HTTP/1.1\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return head + body, 1, {400, 413}
    size = draw(st.integers(MAX_HEAD - 64, 64 * 1024))
    start = f"GET /healthz HTTP/1.1\r\n{auth}X-Pad: ".encode()
    data = start + b"a" * max(0, size - len(start) - 4) + b"\r\n\r\n"
    return data, draw(st.integers(1, 4)), set()  # 431 above the limit, else 200


def test_hostile_numbers_json_and_heads(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    camera = {"url": "lavfi:testsrc2=size=160x120:rate=5,realtime", "idle_decode": "all"}
    for logger in LOGGERS:
        caplog.set_level(logging.ERROR, logger=logger)
    with running_daemon({"cam": camera}, {}, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0", "wait_timeout": "200ms"}) as daemon:
        client = ApiClient(daemon)

        @settings(max_examples=80, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(request=hostile_requests())
        def answered(request: tuple[bytes, int, set[int]]) -> None:
            template, pieces, expected = request
            data = template.replace(b"{token}", (client.token or "").encode())
            if not expected:  # a head: what the limit says for its real size
                expected = {431} if len(data) > MAX_HEAD else {200}
            step = -(-len(data) // pieces)
            with socket.create_connection((client.host, client.port), timeout=20) as sock:
                for start in range(0, len(data), step):
                    sock.sendall(data[start:start + step])
                status_line = sock.makefile("rb").readline()
            status = int(status_line.split()[1])
            assert status in expected, (status, data[:120])
        answered()
    failures = [r.getMessage() for r in caplog.records if r.name in LOGGERS]
    assert failures == []  # no request made the daemon fail (a 500 is always logged)
