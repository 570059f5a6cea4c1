"""docs/openapi.yaml stays true to the code: a valid OpenAPI document whose paths are exactly the
routes of framebus.control.Api, whose request schemas match the pydantic models, and whose
response schemas (strict: every field required or listed, nothing else allowed) accept what a
real daemon answers over HTTP, errors included.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
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
SOURCES = [ROOT / "framebus" / "control.py", ROOT / "framebus" / "api_handlers.py"]
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

    def request(self, method: str, target: str, body: object = None,
                raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            connection.request(method, target, body=data,
                               headers={"Content-Type": "application/json"} if data else {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def exchange(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send a request head as is (no body follows) and read the answer."""
        with socket.create_connection((self.host, self.port), timeout=20) as sock:
            sock.sendall(head)
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
            "cameras": {"cam": {**FAST, "url": server.url("cam")}},
            "subscribers": {"det": {"camera": "cam", "format": "gray", "width": 160},
                            "broken": {"camera": "cam"}},
            "http": {"listen": "127.0.0.1:0", "wait_timeout": "1s"},
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
    for method, pattern, _func in live.daemon.control.api.routes:
        paths, params = _route_paths(pattern.pattern)
        for path in paths:
            routes.add((method, path))
            operation = SPEC["paths"].get(path, {}).get(method.lower())
            assert operation is not None, f"{method} {path} is routed but not in the spec"
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


def test_every_error_code_in_the_code_is_documented_with_its_status() -> None:
    source = "\n".join(path.read_text() for path in SOURCES)
    found = set(re.findall(r'ApiError\(\s*HTTPStatus\.(\w+),\s*"(\w+)"', source))
    found.add(("INTERNAL_SERVER_ERROR", "internal"))  # the catch-all in Handler._dispatch
    assert len(found) > 10, "the ApiError pattern no longer matches the code"
    codes = {code for _status, code in found}
    enum = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes == enum
    for status_name, code in sorted(found):
        status = HTTPStatus[status_name].value
        described = []
        for method, path, operation in _operations():
            if str(status) in operation["responses"]:
                described.append(_response(method, path, status)[1]["description"])
        text = "\n".join(described) + SPEC["info"]["description"]
        assert f"`{code}`" in text and str(status) in text, (
            f"{status} {code} is not documented on any operation")


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
    assert _check("POST", path, live.request("POST", target, {"fifo": 1, "x": 2}), 400)
    assert _check("POST", path, live.request("POST", target, raw=b"[]"), 400)
    assert _check("POST", path, live.request("POST", "/v1/cameras/nope/snapshot-to-fifo",
                                             relative), 404)["error"] == "unknown_camera"


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
    again = _check("POST", "/v1/subscriptions", live.request("POST", "/v1/subscriptions", body),
                   409)
    assert again["error"] == "exists"
    _check("GET", "/v1/subscriptions/{name}", live.request("GET", "/v1/subscriptions/dyn"), 200)
    unknown_camera = {**body, "name": "dyn2", "camera": "nope"}
    assert _check("POST", "/v1/subscriptions",
                  live.request("POST", "/v1/subscriptions", unknown_camera), 404)
    outside = {**body, "name": "dyn3", "fifo": "/etc/framebus-test.fifo"}
    assert _check("POST", "/v1/subscriptions",
                  live.request("POST", "/v1/subscriptions", outside), 403)
    assert _check("POST", "/v1/subscriptions",
                  live.request("POST", "/v1/subscriptions", {"camera": "cam"}), 400)
    deleted = _check("DELETE", "/v1/subscriptions/{name}",
                     live.request("DELETE", "/v1/subscriptions/dyn"), 200)
    assert deleted == {"deleted": "dyn"}
    for name, status in (("dyn", 404), ("det", 409)):
        _check("DELETE", "/v1/subscriptions/{name}",
               live.request("DELETE", f"/v1/subscriptions/{name}"), status)
    _check("GET", "/v1/subscriptions/{name}", live.request("GET", "/v1/subscriptions/dyn"), 404)


def test_protocol_errors_and_metrics_match_the_spec(live: Live) -> None:
    error = _validator("#/components/schemas/Error")
    post = b"POST /v1/subscriptions HTTP/1.1\r\nHost: framebus\r\n"
    for answer, status, code in (
        (live.request("GET", "/v1/nothing"), 404, "not_found"),
        (live.request("GET", "/v1/cameras/"), 404, "not_found"),
        (live.request("DELETE", "/v1/cameras"), 405, "method_not_allowed"),
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
    status, headers, body = live.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] in _response("GET", "/metrics", 200)[1]["content"]
    assert b"framebus_camera_frames_decoded_total" in body
