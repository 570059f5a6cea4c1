"""The control plane: an HTTP API (standard library server) and /metrics.

Every error is a 4xx (or 503/504 for "not now") with a JSON body
``{"error": ..., "detail": ...}``; request bodies are size-limited; handlers never let an
exception escape as a 5xx traceback. The API is described in docs/openapi.yaml.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from framebus.errors import FramebusError
from framebus.metrics import build_registry, render

if TYPE_CHECKING:
    from framebus.daemon import Daemon

log = logging.getLogger("framebus.control")


class ApiError(FramebusError):
    """An error answer: HTTP status, short code and a detail for humans."""

    def __init__(self, status: HTTPStatus, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}


Reply = tuple[HTTPStatus, dict[str, str], bytes]
Route = tuple[str, re.Pattern[str], Callable[..., Reply]]


def json_reply(data: object, status: HTTPStatus = HTTPStatus.OK) -> Reply:
    """A JSON answer."""
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def validation_detail(exc: ValidationError) -> str:
    """The first pydantic error as ``field: message`` (never echoing input values)."""
    first = exc.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{path}: {message}" if path else message


class Handler(BaseHTTPRequestHandler):
    """Dispatches requests to the API; the server object carries the API."""

    server: ControlServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def __getattr__(self, name: str) -> Callable[[], None]:
        # every other method (HEAD, PUT, TRACE, ...) gets a JSON 405 from the router, not the
        # standard library's HTML 501 page
        if name.startswith("do_") and name[3:].isalpha() and name[3:].isupper():
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors the standard library detects itself (a bad request line, headers too long)
        get the same JSON body as ours."""
        status = HTTPStatus(code)
        body = json.dumps({"error": status.phrase.lower().replace(" ", "_"),
                           "detail": message or status.description}).encode()
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        try:
            # read the body before anything can refuse the request: left unread on a kept-alive
            # connection, it would be parsed as the next request
            body = self._body()
            reply = self.server.api.handle(method, self.path, self.headers, lambda: body)
        except ApiError as exc:
            reply = json_reply({"error": exc.error, "detail": exc.detail}, exc.status)
            reply[1].update(exc.headers)
            if exc.status == HTTPStatus.UNAUTHORIZED:
                reply[1]["WWW-Authenticate"] = 'Bearer realm="framebus"'
        except Exception:  # a bug must not become a traceback on the wire
            log.exception("http: %s %s failed", method, urlsplit(self.path).path)
            reply = json_reply({"error": "internal", "detail": "internal error (logged)"},
                               HTTPStatus.INTERNAL_SERVER_ERROR)
        status, headers, body = reply
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required",
                               "send a Content-Length (chunked bodies are not accepted)")
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "bad Content-Length") from None
        limit = self.server.api.max_body
        if length < 0 or length > limit:
            self.close_connection = True
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large",
                           f"request body over {limit} bytes")
        return self.rfile.read(length)


class ControlServer(ThreadingHTTPServer):
    """TCP server carrying the API."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        self.api = api
        super().__init__(address, Handler)


class UnixControlServer(ThreadingMixIn, UnixStreamServer):
    """The same API on a Unix socket."""

    daemon_threads = True

    def __init__(self, path: Path, api: Api) -> None:
        self.api = api
        path.unlink(missing_ok=True)
        super().__init__(str(path), Handler)
        os.chmod(path, 0o660)  # the owner and its group may connect, whatever the umask

    def get_request(self) -> tuple[socket.socket, Any]:
        request, _ = self.socket.accept()
        return request, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) pair


class Api:
    """Routes and their implementations, over a running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        from framebus.api_handlers import Handlers

        self.daemon = daemon
        self.registry = build_registry(daemon)
        self.max_body = daemon.config.http.max_body_bytes
        self.handlers = Handlers(daemon)
        h = self.handlers
        name = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
        self.routes: list[Route] = [
            ("GET", re.compile(r"/metrics"), self._metrics),
            ("GET", re.compile(r"/v1/cameras"), h.list_cameras),
            ("GET", re.compile(rf"/v1/cameras/{name}"), h.get_camera),
            ("GET", re.compile(rf"/v1/cameras/{name}/snapshot\.(?P<kind>jpg|png)"), h.snapshot),
            ("POST", re.compile(rf"/v1/cameras/{name}/snapshot-to-fifo"), h.snapshot_to_fifo),
            ("GET", re.compile(r"/v1/subscriptions"), h.list_subscriptions),
            ("POST", re.compile(r"/v1/subscriptions"), h.add_subscription),
            ("GET", re.compile(rf"/v1/subscriptions/{name}"), h.get_subscription),
            ("DELETE", re.compile(rf"/v1/subscriptions/{name}"), h.delete_subscription),
        ]

    def handle(self, method: str, target: str, headers: Any, body: Callable[[], bytes]) -> Reply:
        """Authorise, route and run one request."""
        self._authorise(headers)
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        allowed = []
        for route_method, pattern, func in self.routes:
            match = pattern.fullmatch(parts.path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            args = match.groupdict()
            if method == "POST":
                return func(self._json(body()), **args)
            return func(query, **args)
        if allowed:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                           f"{method} not allowed on {parts.path} (use {', '.join(allowed)})",
                           {"Allow": ", ".join(allowed)})
        raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no such endpoint: {parts.path}")

    def _authorise(self, headers: Any) -> None:
        token = self.daemon.http_token
        if token is None:
            return
        given = str(headers.get("Authorization", ""))
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong token")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", "body must be a JSON object")
        return data

    def _metrics(self, _query: dict[str, str]) -> Reply:
        return (HTTPStatus.OK, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
                render(self.registry))


class ControlPlane:
    """Owns the HTTP server thread."""

    def __init__(self, daemon: Daemon) -> None:
        http = daemon.config.http
        self.api = Api(daemon)
        self.server: ControlServer | UnixControlServer
        if http.unix_socket is not None:
            self.server = UnixControlServer(http.unix_socket, self.api)
            self.address: str = str(http.unix_socket)
        else:
            host, _, port = http.listen.rpartition(":")
            self.server = ControlServer((host.strip("[]"), int(port)), self.api)
            bound_host, bound_port = self.server.server_address[:2]
            self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()
        log.info("http: listening on %s", self.address)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2.0)
