"""schemathesis against docs/openapi.yaml on a running daemon: every answer conforms to the
spec, and nothing is a server error (503/504 are the spec's documented "not now" answers, so
the 5xx check is ours: the daemon logs every unexpected failure, and none may appear). Over
TCP the API needs the bearer token the daemon generated; schemathesis sends it, and also
checks (ignored_auth) that the operations needing it refuse a request without it."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
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
    fuzz(tmp_path, caplog, examples=15)


@pytest.mark.soak
def test_schemathesis_long(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fuzz(tmp_path, caplog, examples=300)
