"""docs/openapi.yaml stays true to the code: a valid OpenAPI document whose paths are exactly the
routes of framebus.control.Api (the open ones, without a token, marked `security: []`), whose
error codes are exactly those of the code, whose request schemas match the pydantic models, and
whose response schemas (strict: every field required or listed, nothing else allowed) accept
what a real daemon answers over HTTP, errors included: the access checks (token, Host,
Origin), the checks from the head, the busy answers and the HTTP server's own.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import re
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from camerakit import FAST
from rtspserver import Mount, RtspServer
from waiting import wait_for

from framebus.api_handlers import FifoRequest, SubscriptionRequest
from framebus.camera import CameraState
from framebus.client import Subscriber
from framebus.config import CAMERA_NAME, PixelFormatName, parse_config, parse_mode
from framebus.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
SOURCES = [ROOT / "framebus" / "control.py", ROOT / "framebus" / "api_handlers.py",
           ROOT / "framebus" / "http_server.py"]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_URI = "urn:framebus:openapi"


# -- the document itself ----------------------------------------------------------------------


def _resolve(pointer: str) -> Any:
    node: Any = SPEC
    for part in pointer.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_the_document_is_valid_openapi() -> None:
    for ref in _refs(SPEC):  # structural checks that need no extra package
        assert ref.startswith("#/"), ref
        _resolve(ref)
    assert str(SPEC["openapi"]).startswith(("3.0.", "3.1."))
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    for path, item in SPEC["paths"].items():
        for method in set(item) & set(METHODS):
            assert item[method]["responses"], f"{method} {path} has no responses"
    try:
        from openapi_spec_validator import validate
    except ImportError:  # a dev extra; the structural checks above still ran
        return
    validate(SPEC)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in SPEC["paths"].items():
        for method in set(item) & set(METHODS):
            yield method.upper(), path, item[method]


def _response(method: str, path: str, status: int) -> tuple[str, dict[str, Any]]:
    """The JSON pointer and object of a documented response (following one $ref)."""
    assert method.lower() in SPEC["paths"].get(path, {}), f"{method} {path} is not in the spec"
    responses = SPEC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document status {status}"
    escaped = path.replace("~", "~0").replace("/", "~1")
    pointer = f"#/paths/{escaped}/{method.lower()}/responses/{status}"
    response = responses[str(status)]
    if "$ref" in response:
        pointer = response["$ref"]
        response = _resolve(pointer)
    return pointer, response


def _route_paths(pattern: str) -> tuple[list[str], dict[str, str]]:
    """OpenAPI path templates for a route regex, and the regex of each path parameter."""
    paths, params = [""], {}
    position = 0
    for group in re.finditer(r"\(\?P<(\w+)>([^()]*)\)", pattern):
        literal = pattern[position:group.start()]
        paths = [p + literal for p in paths]
        name, body = group.groups()
        if re.fullmatch(r"\w+(\|\w+)+", body):  # a choice of literals: one path for each
            paths = [p + choice for p in paths for choice in body.split("|")]
        else:
            paths = [p + "{" + name + "}" for p in paths]
            params[name] = body
        position = group.end()
    paths = [(p + pattern[position:]).replace(r"\.", ".") for p in paths]
    for path in paths:
        assert not re.search(r"[\\()\[\]*+?|^$]", path), f"cannot map route {pattern} ({path})"
    return paths, params


@dataclass
class Live:
    """A running daemon and how to reach it."""

    daemon: Daemon
    host: str
    port: int
    fifo_dir: Path

    @property
    def token(self) -> str:
        assert self.daemon.http_token is not None  # generated at start when none is configured
        return self.daemon.http_token.get_secret_value()

    def request(self, method: str, target: str, body: object = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, token: bool = True
                ) -> tuple[int, dict[str, str], bytes]:
        """One request with the token (unless ``token`` is false); ``headers`` add to or
        replace the defaults (a ``Host`` given replaces http.client's)."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Authorization": f"Bearer {self.token}"} if token else {}
        if data:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        connection = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            connection.request(method, target, body=data, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def exchange(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send a request head as is (no body follows) and read the answer."""
        with socket.create_connection((self.host, self.port), timeout=20) as sock:
            sock.sendall(head)
            return _answer(sock)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), response.read()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """The real RTSP test server, and a daemon (in this process) with HTTP on a free port."""
    with tempfile.TemporaryDirectory(prefix="framebus-openapi-") as tmp, RtspServer(
        [Mount("cam", width=320, height=240)]
    ) as server:
        fifo_dir = Path(tmp) / "fifos"
        fifo_dir.mkdir()
        (fifo_dir / "broken.fifo").write_text("a regular file: the daemon refuses to use it")
        config = parse_config({
            "fifo_dir": str(fifo_dir),
            # 320x240 is 76800 pixels: under max_pixels, which a 400x300 request is over
            "cameras": {"cam": {**FAST, "url": server.url("cam"), "max_pixels": 100_000,
                                "max_renditions": 2}},
            "subscribers": {"det": {"camera": "cam", "format": "gray", "width": 160},
                            "broken": {"camera": "cam"}},
            # no token configured: the daemon generates one into fifo_dir/api.token
            "http": {"listen": "127.0.0.1:0", "wait_timeout": "1s", "workers": 2,
                     "max_subscriptions": 2, "max_connections": 4, "body_timeout": "1s"},
        })
        daemon = Daemon(config, {"cam": None})
        daemon.start()
        try:
            assert daemon.control is not None
            host, _, port = daemon.control.address.rpartition(":")
            yield Live(daemon, host, int(port), fifo_dir)
        finally:
            daemon.stop()


# -- paths and parameters ----------------------------------------------------------------------


def test_every_route_has_a_path_in_the_spec_and_every_path_a_route(live: Live) -> None:
    assert live.daemon.control is not None
    routes: set[tuple[str, str]] = set()
    for route in live.daemon.control.api.routes:
        method = route.method
        paths, params = _route_paths(route.pattern.pattern)
        for path in paths:
            routes.add((method, path))
            operation = SPEC["paths"].get(path, {}).get(method.lower())
            assert operation is not None, f"{method} {path} is routed but not in the spec"
            # open routes (no token) say so with an empty security; the others inherit bearer
            assert (operation.get("security", SPEC["security"]) == []) == route.open, path
            assert ("401" in operation["responses"]) != route.open, path
            # what any route can answer from the head (Host, Origin), and the bug catch-all;
            # POST adds the body's checks, the worker pool its 503 busy
            statuses = set(operation["responses"])
            assert {"403", "421", "500"} <= statuses, path
            if method == "POST":
                assert {"400", "408", "411", "413", "415"} <= statuses, path
            if route.pooled:
                assert "503" in statuses and "Retry-After" in _response(
                    method, path, 503)[1]["headers"], path
            item_params = SPEC["paths"][path].get("parameters", [])
            declared = {}
            for param in [*item_params, *operation.get("parameters", [])]:
                param = _resolve(param["$ref"]) if "$ref" in param else param
                if param["in"] == "path":
                    schema = param["schema"]
                    schema = _resolve(schema["$ref"]) if "$ref" in schema else schema
                    declared[param["name"]] = schema["pattern"]
            assert declared == {name: f"^{body}$" for name, body in params.items()}, path
    documented = {(method, path) for method, path, _op in _operations()}
    assert documented == routes


def test_name_pattern_is_the_configs() -> None:
    assert SPEC["components"]["schemas"]["Name"]["pattern"] == CAMERA_NAME.pattern
    name_field = SubscriptionRequest.model_fields["name"]
    patterns = [getattr(m, "pattern", None) for m in name_field.metadata]
    assert CAMERA_NAME.pattern in patterns


def _error_codes() -> set[tuple[int, str]]:
    """(status, code) of every error the control plane can answer, read from its source."""
    source = "\n".join(path.read_text() for path in SOURCES)
    found = {(HTTPStatus[name].value, code) for name, code in
             re.findall(r'ApiError\(\s*HTTPStatus\.(\w+),\s*"(\w+)"', source)}
    assert len(found) > 10, "the ApiError pattern no longer matches the code"
    # the server's own answers (http_server.py) and the catch-all 500 (control.py)
    answers = {(int(status), code) for status, code in
               re.findall(r'error_response\(\s*(\d{3}),\s*"(\w+)"', source)}
    assert {(411, "length_required"), (500, "internal")} <= answers, "error_response moved"
    canned = {(int(status), code) for status, code in
              re.findall(r'_canned\(\s*"(\d{3}) [^"]*",\s*"(\w+)"', source)}
    assert (503, "busy") in canned, "the connection-cap answer moved"
    # _protocol_error: h11's error_status_hint (431 for a head too large, 501 for an unknown
    # Transfer-Encoding, 400 otherwise) with its mapping of statuses to codes
    assert '{413: "head_too_large", 431: "head_too_large"}.get(status, "bad_request")' in (
        source), "_protocol_error changed: update the codes below"
    protocol = {(400, "bad_request"), (431, "head_too_large"), (501, "bad_request")}
    return found | answers | canned | protocol


def test_every_error_code_in_the_code_is_documented_with_its_status() -> None:
    found = _error_codes()
    codes = {code for _status, code in found}
    enum = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes == enum
    overview = " ".join(SPEC["info"]["description"].split())
    for status, code in sorted(found):
        described = []  # descriptions of the responses documented with this status
        for method, path, operation in _operations():
            if str(status) in operation["responses"]:
                described.append(_response(method, path, status)[1]["description"])
        # under an operation's response of that status, or in the overview next to it
        near = re.search(rf"\b{status}\b[^;]{{0,120}}?`{code}`", overview)
        assert any(f"`{code}`" in text for text in described) or near, (
            f"{status} {code} is not documented on any operation nor in info.description")


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = SPEC["components"]["schemas"][name]
    return schema


def test_request_schemas_match_the_pydantic_models() -> None:
    for model, name in ((FifoRequest, "FifoRequest"), (SubscriptionRequest, "SubscriptionRequest")):
        schema = _schema(name)
        fields = model.model_fields
        assert set(schema["properties"]) == set(fields), name
        assert set(schema["required"]) == {f for f, info in fields.items() if info.is_required()}
        assert schema["additionalProperties"] is False  # extra="forbid"
        for field, info in fields.items():
            prop = schema["properties"][field]
            if not info.is_required() and info.default is not None:
                default = prop["default"]
                if field == "mode":
                    default = parse_mode(default)
                assert default == info.default, f"{name}.{field} default"
            for meta in info.metadata:
                for attr, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum")):
                    if getattr(meta, attr, None) is not None:
                        assert prop[key] == getattr(meta, attr), f"{name}.{field} {key}"
    formats = list(get_args(PixelFormatName))
    assert _schema("PixelFormat")["enum"] == formats
    assert _schema("CameraState")["enum"] == [state.value for state in CameraState]


# -- real answers validate against the documented schemas ----------------------------------------


def _validator(pointer: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a dev extra) is missing")
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": SPEC_URI + pointer}, registry=registry)


def _check(method: str, path: str, answer: tuple[int, dict[str, str], bytes],
           expected: int) -> Any:
    """Assert the answer has the expected, documented status, content type and body schema."""
    status, headers, body = answer
    assert status == expected, (status, body[:300])
    pointer, response = _response(method, path, status)
    content_type = headers["Content-Type"]
    assert content_type in response["content"], f"{method} {path} {status}: {content_type}"
    if content_type != "application/json":
        return body
    data = json.loads(body)
    escaped = content_type.replace("~", "~0").replace("/", "~1")
    _validator(f"{pointer}/content/{escaped}/schema").validate(data)
    return data


def _streaming(live: Live) -> dict[str, Any]:
    def ready() -> dict[str, Any]:  # falsy (empty) until the camera streams
        _status, _headers, body = live.request("GET", "/v1/cameras/cam")
        camera: dict[str, Any] = json.loads(body)
        return camera if camera["state"] == "streaming" and camera["last_seq"] else {}

    return wait_for(ready, 30, "the camera to stream")


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
    os.chmod(unix_live.socket, 0o666)  # let the child connect at all
    try:
        def post(target: str, body: object) -> bytes:
            data = json.dumps(body).encode()
            return (f"POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                    ).encode() + data
        frame, subscription = _as_nobody(unix_live.socket, [
            post("/v1/cameras/cam/snapshot-to-fifo", {"fifo": str(fifo)}),
            post("/v1/subscriptions", {"name": "nobodys", "camera": "cam", "fifo": str(taken)}),
        ])
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
