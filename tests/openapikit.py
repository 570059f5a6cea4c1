"""Shared by the docs/openapi.yaml tests: the spec and its operations, a live daemon (the
``live`` fixture, re-exported by conftest.py), and a checker that validates real answers
against the documented schemas."""

from __future__ import annotations

import http.client
import json
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from camerakit import FAST
from rtspserver import Mount, RtspServer
from waiting import wait_for

from framebus.config import parse_config
from framebus.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
SOURCES = [ROOT / "framebus" / "control.py", ROOT / "framebus" / "api_handlers.py",
           ROOT / "framebus" / "http_server.py", ROOT / "framebus" / "query.py"]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_URI = "urn:framebus:openapi"


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
class Running:
    """A daemon in this process and how to reach it (its token included)."""

    daemon: Daemon
    host: str
    port: int
    fifo_dir: Path

    @property
    def token(self) -> str:
        assert self.daemon.http_token is not None  # generated at start when none is configured
        return self.daemon.http_token.get_secret_value()


@dataclass
class Live(Running):
    """The OpenAPI tests' daemon: requests with the token, raw heads."""

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
        # "broken" would stop the start (a configured FIFO that cannot be made): add it the
        # way a reload does, so its error shows in the API
        running = config.model_copy(update={"subscribers": {
            n: s for n, s in config.subscribers.items() if n != "broken"}})
        daemon = Daemon(running, {"cam": None})
        daemon.start()
        try:
            (fifo_dir / "broken.fifo").write_text("a regular file: the daemon refuses to use it")
            daemon.reconcile(config, {"cam": None})
            assert daemon.control is not None
            host, _, port = daemon.control.address.rpartition(":")
            yield Live(daemon, host, int(port), fifo_dir)
        finally:
            daemon.stop()



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


