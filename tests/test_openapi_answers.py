"""Real answers of a running daemon validate against docs/openapi.yaml: statuses, content types
and (strict) body schemas, errors included: the access checks (token, Host, Origin), the checks
from the head, the busy answers and the HTTP server's own."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import threading
from typing import Any

from openapikit import (
    Live,
    _answer,
    _check,
    _resolve,
    _response,
    _streaming,
    _validator,
)
from waiting import wait_for

from framebus.client import Subscriber


def test_camera_answers_match_the_spec(live: Live) -> None:
    early = _check("GET", "/v1/cameras", live.request("GET", "/v1/cameras"), 200)
    assert [c["name"] for c in early["cameras"]] == ["cam"]
    _streaming(live)
    listed = _check("GET", "/v1/cameras", live.request("GET", "/v1/cameras"), 200)
    assert listed["cameras"][0]["last_seq"] is not None
    camera = _check("GET", "/v1/cameras/{name}", live.request("GET", "/v1/cameras/cam"), 200)
    assert camera["subscribers"] == ["det"]  # "broken" is not running
    _check("GET", "/v1/cameras/{name}", live.request("GET", "/v1/cameras/nope"), 404)


def test_snapshot_answers_match_the_spec(live: Live) -> None:
    _streaming(live)
    for kind, magic in (("jpg", b"\xff\xd8"), ("png", b"\x89PNG")):
        path = f"/v1/cameras/{{name}}/snapshot.{kind}"
        answer = live.request("GET", f"/v1/cameras/cam/snapshot.{kind}?width=100&quality=50")
        assert _check("GET", path, answer, 200).startswith(magic)
        _pointer, response = _response("GET", path, 200)
        for header, spec in response["headers"].items():
            schema = _resolve(spec["$ref"])["schema"]
            value = answer[1][header]
            typed = {"integer": int, "number": float}.get(schema["type"], str)(value)
            _validator(spec["$ref"] + "/schema").validate(typed)
        too_new = f"/v1/cameras/cam/snapshot.{kind}?newer_than={2**62}"
        error = _check("GET", path, live.request("GET", too_new), 503)
        assert error["error"] == "no_frame"
        error = _check("GET", path, live.request("GET", f"/v1/cameras/cam/snapshot.{kind}"
                                                        "?max_age=0.000001"), 503)
        assert error["error"] == "frame_too_old"
        error = _check("GET", path, live.request("GET", f"/v1/cameras/cam/snapshot.{kind}"
                                                        "?width=0"), 400)
        assert error["error"] == "bad_query"
        error = _check("GET", path, live.request("GET", f"/v1/cameras/cam/snapshot.{kind}"
                                                        "?width=400&height=300"), 400)
        assert error["error"] == "too_large"  # 120000 pixels, over the camera's max_pixels
    # never larger than the camera's 320x240: 640x120 is scaled down, the aspect kept
    png = _check("GET", "/v1/cameras/{name}/snapshot.png",
                 live.request("GET", "/v1/cameras/cam/snapshot.png?width=640&height=120"), 200)
    assert struct.unpack(">II", png[16:24]) == (320, 60)  # the IHDR chunk's size


def test_busy_workers_answer_503_with_retry_after(live: Live) -> None:
    _streaming(live)
    assert live.daemon.control is not None
    api = live.daemon.control.api
    path = "/v1/cameras/{name}/snapshot.jpg"
    long_poll = f"/v1/cameras/cam/snapshot.jpg?newer_than={2**62}"  # holds a worker 1s
    answers: list[tuple[int, dict[str, str], bytes]] = []
    for _attempt in range(5):  # the long polls end after wait_timeout: retry if they did
        answers.clear()
        pollers = [threading.Thread(target=lambda: answers.append(live.request("GET", long_poll)),
                                    daemon=True) for _ in range(api.worker_count)]
        for poller in pollers:
            poller.start()
        wait_for(lambda: api.busy_workers == api.worker_count, 10, "every worker to be busy")
        answer = live.request("GET", "/v1/cameras/cam/snapshot.jpg")
        for poller in pollers:
            poller.join(20)
        for polled in answers:
            assert _check("GET", path, polled, 503)["error"] == "no_frame"
        if answer[0] == 503:
            break
    error = _check("GET", path, answer, 503)
    assert error["error"] == "busy" and answer[1]["Retry-After"] == "1"
    _validator(_response("GET", path, 503)[1]["headers"]["Retry-After"]["$ref"]
               + "/schema").validate(int(answer[1]["Retry-After"]))


def test_snapshot_to_fifo_answers_match_the_spec(live: Live) -> None:
    _streaming(live)
    path = "/v1/cameras/{name}/snapshot-to-fifo"
    target = "/v1/cameras/cam/snapshot-to-fifo"
    fifo = live.fifo_dir / "request.fifo"
    os.mkfifo(fifo, 0o600)
    try:
        request = {"fifo": str(fifo), "format": "gray", "width": 64, "timeout": 5}
        _validator("#/components/schemas/FifoRequest").validate(request)
        error = _check("POST", path, live.request("POST", target, request), 409)
        assert error["error"] == "no_reader"
        answers: list[tuple[int, dict[str, str], bytes]] = []
        with Subscriber(fifo, timeout=20) as subscriber:
            subscriber.open()
            asker = threading.Thread(target=lambda: answers.append(
                live.request("POST", target, request)), daemon=True)
            asker.start()
            frame = subscriber.read()
            asker.join(20)
        assert frame is not None and answers, "no frame or no answer"
        result = _check("POST", path, answers[0], 200)
        assert (result["seq"], result["width"], result["format"]) == (frame.seq, 64, "gray")
    finally:
        fifo.unlink()
    relative = {"fifo": "request.fifo"}
    assert _check("POST", path, live.request("POST", target, relative), 403)["error"] == (
        "fifo_refused")
    for wrong, code in (({"fifo": str(fifo), "width": 400, "height": 300}, "too_large"),
                        ({"fifo": f"{live.fifo_dir}/a\0b.fifo"}, "bad_request")):
        assert _check("POST", path, live.request("POST", target, wrong), 400)["error"] == code
    answer = live.request("POST", target, raw=json.dumps(request).encode(),
                          headers={"Content-Type": "text/plain"})
    assert _check("POST", path, answer, 415)["error"] == "unsupported_media_type"
    assert _check("POST", path, live.request("POST", target, {"fifo": 1, "x": 2}), 400)
    assert _check("POST", path, live.request("POST", target, raw=b"[]"), 400)
    assert _check("POST", path, live.request("POST", "/v1/cameras/nope/snapshot-to-fifo",
                                             relative), 404)["error"] == "unknown_camera"


def test_snapshot_to_fifo_refuses_fifos_in_use(live: Live) -> None:
    _streaming(live)
    path = "/v1/cameras/{name}/snapshot-to-fifo"
    target = "/v1/cameras/cam/snapshot-to-fifo"
    wait_for(lambda: "det" in live.daemon.fanout.subscribers, 10, "subscriber det to run")
    det = live.fifo_dir / "det.fifo"
    reader = os.open(det, os.O_RDONLY | os.O_NONBLOCK)  # so it has a reader: no no_reader
    try:
        error = _check("POST", path, live.request("POST", target, {"fifo": str(det)}), 409)
        assert error["error"] == "fifo_in_use"
    finally:
        os.close(reader)
    fifo = live.fifo_dir / "stuck.fifo"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # a 320x240 bgr24 frame never fits
        request = {"fifo": str(fifo), "format": "bgr24", "timeout": 1}
        first: list[tuple[int, dict[str, str], bytes]] = []
        writer = threading.Thread(target=lambda: first.append(
            live.request("POST", target, request)), daemon=True)
        writer.start()
        assert live.daemon.control is not None
        handlers = live.daemon.control.api.handlers
        wait_for(lambda: handlers._requested or first, 10, "the first request to claim it")
        second = live.request("POST", target, request)
        writer.join(20)
    finally:
        os.close(reader)
        fifo.unlink()
    assert _check("POST", path, first[0], 504)["error"] == "reader_too_slow"
    assert _check("POST", path, second, 409)["error"] == "fifo_in_use"


def test_subscription_answers_match_the_spec(live: Live) -> None:
    wait_for(lambda: "det" in live.daemon.fanout.subscribers, 10, "subscriber det to run")
    listed = _check("GET", "/v1/subscriptions", live.request("GET", "/v1/subscriptions"), 200)
    by_name = {s["name"]: s for s in listed["subscriptions"]}
    assert set(by_name) == {"broken", "det"}
    assert "frames_sent" in by_name["det"] and "frames_sent" not in by_name["broken"]
    assert by_name["broken"]["error"]
    body = {"name": "dyn", "camera": "cam", "format": "jpeg", "height": 90, "mode": "0640"}
    _validator("#/components/schemas/SubscriptionRequest").validate(body)
    added = _check("POST", "/v1/subscriptions", live.request("POST", "/v1/subscriptions", body),
                   201)
    assert (added["source"], added["mode"], added["fifo"]) == (
        "api", 0o640, str(live.fifo_dir / "dyn.fifo"))
    add = "/v1/subscriptions"

    def refused(wrong: dict[str, Any], status: int) -> str:
        error = _check("POST", add, live.request("POST", add, wrong), status)
        return str(error["error"])

    # the same name with another path (with the default path, its FIFO is dyn's: fifo_in_use)
    assert refused({**body, "fifo": str(live.fifo_dir / "other.fifo")}, 409) == "exists"
    assert refused({**body, "name": "dyn2", "camera": "nope"}, 404) == "unknown_camera"
    assert refused({**body, "name": "dyn3", "fifo": "/etc/framebus-test.fifo"}, 403) == (
        "fifo_refused")
    assert refused({"camera": "cam"}, 400) == "bad_request"
    for wrong in ({"mode": "0666"}, {"fifo": str(live.fifo_dir / "no-dir" / "x.fifo")},
                  {"fifo": f"{live.fifo_dir}/a\0b.fifo"}):
        assert refused({**body, "name": "dyn4", **wrong}, 400) == "bad_request", wrong
    assert refused({**body, "name": "dyn4", "width": 400, "height": 300}, 400) == "too_large"
    in_use = {**body, "name": "dyn4", "fifo": str(live.fifo_dir / "det.fifo")}
    assert refused(in_use, 409) == "fifo_in_use"
    # max_renditions 2: det's (gray, 160 wide) and dyn's (jpeg, 90 high); a third is refused
    assert refused({**body, "name": "dyn4", "format": "gray", "width": 80}, 409) == (
        "too_many_renditions")
    shared = _check("POST", add, live.request("POST", add, {**body, "name": "dyn5"}), 201)
    assert shared["name"] == "dyn5"
    # http.max_subscriptions 2: dyn and dyn5
    assert refused({**body, "name": "dyn6"}, 409) == "too_many_subscriptions"
    _check("GET", "/v1/subscriptions/{name}", live.request("GET", "/v1/subscriptions/dyn"), 200)
    for name in ("dyn5", "dyn"):
        deleted = _check("DELETE", "/v1/subscriptions/{name}",
                         live.request("DELETE", f"/v1/subscriptions/{name}"), 200)
        assert deleted == {"deleted": name}
    for name, status in (("dyn", 404), ("det", 409)):
        _check("DELETE", "/v1/subscriptions/{name}",
               live.request("DELETE", f"/v1/subscriptions/{name}"), status)
    _check("GET", "/v1/subscriptions/{name}", live.request("GET", "/v1/subscriptions/dyn"), 404)


def test_protocol_errors_and_metrics_match_the_spec(live: Live) -> None:
    error = _validator("#/components/schemas/Error")
    post = (b"POST /v1/subscriptions HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + live.token.encode() + b"\r\n"
            b"Content-Type: application/json\r\n")
    for answer, status, code in (
        (live.request("GET", "/v1/nothing"), 404, "not_found"),
        (live.request("GET", "/v1/cameras/"), 404, "not_found"),
        (live.request("GET", "/v1/nothing", token=False), 404, "not_found"),  # route first
        (live.request("DELETE", "/v1/cameras"), 405, "method_not_allowed"),
        (live.request("PUT", "/v1/cameras"), 405, "method_not_allowed"),
        (live.request("PATCH", "/v1/subscriptions/dyn"), 405, "method_not_allowed"),
        (live.request("OPTIONS", "/metrics", token=False), 405, "method_not_allowed"),
        (live.request("POST", "/v1/subscriptions", raw=b"{"), 400, "bad_json"),
        # the daemon answers these before reading a body: send none, so no RST loses the answer
        (live.exchange(post + b"Content-Length: 100000\r\n\r\n"), 413, "body_too_large"),
        (live.exchange(post + b"Transfer-Encoding: chunked\r\n\r\n"), 411, "length_required"),
    ):
        assert answer[0] == status, answer
        assert answer[1]["Content-Type"] == "application/json"
        data = json.loads(answer[2])
        error.validate(data)
        assert data["error"] == code
        if status == 405:
            assert answer[1]["Allow"] in ("GET", "POST", "GET, POST", "GET, DELETE"), answer
    status, headers, body = live.request("HEAD", "/v1/cameras")  # the JSON 405, without body
    assert (status, headers["Allow"], headers["Content-Type"], body) == (
        405, "GET", "application/json", b"")
    # the server's own answers, documented in info.description (408 on the POST operations)
    slow = live.exchange(post + b"Content-Length: 10\r\n\r\n")  # and the body never comes
    assert _check("POST", "/v1/subscriptions", slow, 408)["error"] == "timeout"
    for head, status, code in (
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 17000, 431,
         "head_too_large"),  # no end of head in the first 16 KiB
        (b"GET /healthz HTTP/1.1\r\nHost localhost\r\n\r\n", 400, "bad_request"),
        (post + b"Transfer-Encoding: gzip\r\n\r\n", 501, "bad_request"),
    ):
        answer = live.exchange(head)
        assert answer[0] == status, answer
        assert answer[1]["Content-Type"] == "application/json"
        data = json.loads(answer[2])
        error.validate(data)
        assert data["error"] == code


def test_connection_cap_answers_busy(live: Live) -> None:
    """At http.max_connections (4 here) with none idle, a new connection gets 503 at once."""
    assert live.daemon.control is not None
    server = live.daemon.control.server
    stalled = (b"POST /v1/subscriptions HTTP/1.1\r\nHost: localhost\r\n"
               b"Authorization: Bearer " + live.token.encode() + b"\r\n"
               b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n")
    holders = [socket.create_connection((live.host, live.port), timeout=20) for _ in range(4)]
    try:
        for holder in holders:  # each waits for its body: busy, not idle, for body_timeout
            holder.sendall(stalled)
        wait_for(lambda: len(server.connections) == 4 and not any(
            c.idle for c in server.connections.values()), 5, "four busy connections")
        refused = server.refused
        with socket.create_connection((live.host, live.port), timeout=20) as sock:
            busy = _answer(sock)  # sent on accept: send nothing, so no RST can lose it
        assert server.refused == refused + 1
        assert busy[0] == 503 and busy[1]["Retry-After"] == "1", busy
        data = json.loads(busy[2])
        _validator("#/components/schemas/Error").validate(data)
        assert data["error"] == "busy"
        for holder in holders:
            assert _answer(holder)[0] == 408
    finally:
        for holder in holders:
            holder.close()
    _check("GET", "/healthz", live.request("GET", "/healthz"), 200)


def test_access_checks_match_the_spec(live: Live) -> None:
    cameras = "/v1/cameras"
    for answer in (live.request("GET", cameras, token=False),
                   live.request("GET", cameras, token=False,
                                headers={"Authorization": "Bearer wrong"}),
                   live.request("GET", cameras, token=False,
                                headers={"Authorization": live.token})):  # no "Bearer "
        assert _check("GET", cameras, answer, 401)["error"] == "unauthorized"
        assert answer[1]["WWW-Authenticate"] == 'Bearer realm="framebus"'
        header = _response("GET", cameras, 401)[1]["headers"]["WWW-Authenticate"]["$ref"]
        _validator(header + "/schema").validate(answer[1]["WWW-Authenticate"])
    # the checks from the head come in order: Host, route, token, Content-Type
    answer = live.request("POST", "/v1/subscriptions", raw=b"{}", token=False,
                          headers={"Content-Type": "text/plain"})
    assert _check("POST", "/v1/subscriptions", answer, 401)["error"] == "unauthorized"
    answer = live.request("POST", "/v1/subscriptions", raw=b"{}",
                          headers={"Content-Type": "text/plain"})
    assert _check("POST", "/v1/subscriptions", answer, 415)["error"] == (
        "unsupported_media_type")
    for host in ("evil.example", "evil.example:8470", "localhost.evil.example", "[::1"):
        for target, path in ((cameras, cameras), ("/healthz", "/healthz")):
            answer = live.request("GET", target, headers={"Host": host}, token=False)
            assert _check("GET", path, answer, 421)["error"] == "unknown_host", host
    ours = f"http://{live.host}:{live.port}"  # the Host http.client sends: same-origin
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1.evil.example:8470"},
                    {"Origin": "http://localhost:3000"},  # another local site's page
                    {"Origin": f"http://{live.host}:{live.port + 1}"},
                    {"Origin": ours, "Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "cross-site"}):
        for target, path in ((cameras, cameras), ("/metrics", "/metrics")):
            answer = live.request("GET", target, headers=headers)
            assert _check("GET", path, answer, 403)["error"] == "cross_origin", headers
    for headers in ({"Host": "localhost:1"}, {"Host": "cam.localhost"}, {"Host": "[::1]:8470"},
                    {"Origin": ours, "Sec-Fetch-Site": "same-origin"},
                    {"Host": "localhost:8470", "Origin": "http://localhost:8470"},
                    {"Sec-Fetch-Site": "none"}):
        _check("GET", cameras, live.request("GET", cameras, headers=headers), 200)


def test_open_endpoints_need_no_token(live: Live) -> None:
    health = _check("GET", "/healthz", live.request("GET", "/healthz", token=False), 200)
    cameras = len(live.daemon.cameras.cameras)
    assert health["cameras"] == cameras and 0 <= health["streaming"] <= cameras
    assert health["status"] == ("ok" if health["streaming"] == cameras else "degraded")
    body = _check("GET", "/metrics", live.request("GET", "/metrics", token=False), 200)
    assert b"framebus_camera_frames_decoded_total" in body
    # the token was generated (none is configured): readable by the fifo_dir's group only
    token_file = live.fifo_dir / "api.token"
    assert token_file.read_text().strip() == live.token
    info = token_file.stat()
    assert (info.st_mode & 0o777, info.st_gid) == (0o640, live.fifo_dir.stat().st_gid)


