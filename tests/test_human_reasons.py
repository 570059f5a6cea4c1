"""Camera failure reasons a person can act on (issue 21): ``framebus status`` and the API
say "connection refused by 127.0.0.1:PORT" or "the camera has no stream at this path (RTSP
404)", never a Python exception name; the log line keeps the exception for whoever debugs."""

from __future__ import annotations

import errno
import logging
import re
import socket

import av
import pytest
from camerakit import GarbageServer, cameras
from rtspserver import Mount, RtspServerFactory
from waiting import wait_for

from framebus.camera import CameraState
from framebus.failures import human_reason, where_of

# what a reason must never look like: "ConnectionRefusedError: ...", "HTTPNotFoundError"
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("exc", "url", "reason"), [
    (av.error.ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
     "rtsp://192.0.2.10/x", "connection refused by 192.0.2.10:554"),
    (av.error.HTTPNotFoundError(-1, "Server returned 404 Not Found"), "rtsp://cam:8554/x",
     "the camera has no stream at this path (RTSP 404)"),
    (av.error.HTTPUnauthorizedError(-1, "Server returned 401 Unauthorized"), "rtsp://cam/x",
     "authentication failed"),
    (av.error.HTTPForbiddenError(-1, "Server returned 403 Forbidden"), "rtsp://cam/x",
     "RTSP 403"),
    (av.error.HTTPServerError(-1, "Server returned 5XX Server Error reply"), "rtsp://cam/x",
     "internal error (RTSP 5xx)"),
    (av.error.InvalidDataError(-1, "Invalid data found"), "rtsps://cam/x",
     "cam:322 answered, but not with a stream"),
    (av.error.TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "rtsp://[::1]:9/x",
     "no answer from [::1]:9"),
    (av.error.FileNotFoundError(errno.ENOENT, "No such file"), "/clips/a.mp4",
     "no such file: /clips/a.mp4"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "rtsp://cam/x",
     "host unreachable: cam:554"),
    (ValueError("boom"), "rtsp://cam/x", "unexpected error (see the log)"),
])
def test_each_failure_is_said_for_a_person(exc: BaseException, url: str, reason: str) -> None:
    said = human_reason(exc, url)
    assert reason in said
    assert not EXCEPTION_NAME.search(said), said


def test_a_reason_names_host_and_port_never_credentials() -> None:
    # config refuses credentials in URLs; the reason would not show them even so
    assert where_of("rtsp://admin:hunter2@10.0.0.5:8554/live?password=x") == "10.0.0.5:8554"
    refused = av.error.ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    said = human_reason(refused, "rtsp://admin:hunter2@10.0.0.5/live")
    assert "hunter2" not in said and "admin" not in said


def test_live_cameras_say_why_and_the_log_keeps_the_exception(
        rtsp_server_factory: RtspServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="framebus")
    secret = "Pa55-word-xyzzy"
    server = rtsp_server_factory([Mount("cam"), Mount("locked", user="viewer", password=secret)])
    port = closed_port()
    specs = {"closed": {"url": f"rtsp://127.0.0.1:{port}/nothing"},
             "missing": {"url": server.url("cam").replace("/cam", "/no-such-mount")},
             "locked": {"url": server.url("locked"), "username": "viewer"}}
    with GarbageServer() as garbage:
        specs["garbage"] = {"url": garbage.url}
        with cameras(specs, passwords={"locked": "wrong-guess-123"}) as (camera_set, _):
            cams = camera_set.cameras
            reasons: dict[str, str] = {}  # each camera's reason (the API's), between retries

            def failed_once() -> bool:
                for name, cam in cams.items():
                    if cam.state not in (CameraState.CONNECTING, CameraState.STREAMING):
                        reasons.setdefault(name, cam.reason)
                return len(reasons) == len(cams)
            wait_for(failed_once, 30, "every camera to fail once")
            locked_state = cams["locked"].state
    assert reasons["closed"].startswith(f"connection refused by 127.0.0.1:{port}"), reasons
    assert reasons["missing"] == "the camera has no stream at this path (RTSP 404)", reasons
    assert reasons["locked"].startswith("authentication failed"), reasons
    assert locked_state is CameraState.AUTH_FAILED
    assert "answered, but not with a stream" in reasons["garbage"], reasons
    for name, reason in reasons.items():
        assert not EXCEPTION_NAME.search(reason), (name, reason)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ConnectionRefusedError" in logged and "HTTPNotFoundError" in logged, logged
    assert "HTTPUnauthorizedError" in logged, logged
    assert secret not in logged and "wrong-guess-123" not in logged
