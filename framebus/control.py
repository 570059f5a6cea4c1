"""The control plane: the HTTP API and /metrics, served by http_server on one asyncio thread.

Every error is a 4xx (or 503/504 for "not now") with a JSON body
``{"error": ..., "detail": ...}``; handlers never let an exception escape as a traceback. The
API is described in docs/openapi.yaml.

What is checked from a request's head alone, before any body byte is read, in this order:
the Host (421), the route and method (404/405), the access rules of access.py (401/403),
and for a body its Content-Type (415). Cheap endpoints (status, subscriptions) run on the
event loop, /metrics on a thread of its own (scrape.py); the ones that wait for frames or
convert them (snapshots, frame requests) run on a pool of ``http.workers`` threads, and beyond
it answer 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from framebus.access import host_allowed, host_name, origin_allowed, token_matches
from framebus.api import ApiError, Reply
from framebus.api_handlers import Handlers
from framebus.errors import ConfigError
from framebus.http_server import App, HttpServer, Limits, Peer, Request, Response, error_response
from framebus.jsonbody import MAX_DEPTH, JsonTooDeep, loads_bounded
from framebus.lograte import REQUEST_LINES, bound
from framebus.metrics import OTHER, HttpRequestStats, build_registry, render
from framebus.query import parse_query
from framebus.scrape import SharedRender
from framebus.tlsconfig import server_context
from framebus.view import DaemonView
from framebus.web import Web

log = logging.getLogger("framebus.control")

NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"


@dataclass(frozen=True)
class Route:
    """One endpoint: ``open`` needs no token; ``pooled`` runs on the worker threads; ``web``
    (the browser's, web.py) gets the request and answers with a Response."""

    method: str
    pattern: re.Pattern[str]
    func: Callable[..., Reply | Response | Awaitable[Reply]]
    open: bool = False
    pooled: bool = False
    web: bool = False

    @cached_property
    def template(self) -> str:
        """The path with its parameters as ``{name}``: the ``route`` label of the metrics."""
        return re.sub(r"\(\?P<(\w+)>[^()]*\)", r"{\1}", self.pattern.pattern).replace("\\.", ".")


def _answer(reply: Reply | Response) -> Response:
    if isinstance(reply, Response):
        return reply
    status, headers, body = reply
    return Response(int(status), list(headers.items()), body)


async def _settled(reply: Reply | Response | Awaitable[Reply]) -> Response:
    """The answer of an endpoint, awaited if it is a coroutine (/metrics)."""
    return _answer(await reply if isinstance(reply, Awaitable) else reply)


def _refusal(exc: ApiError) -> Response:
    headers = list(exc.headers.items())
    if exc.status == HTTPStatus.UNAUTHORIZED:
        headers.append(("WWW-Authenticate", 'Bearer realm="framebus"'))
    return error_response(int(exc.status), exc.error, exc.detail, headers)


class Api(App):
    """Routes, access checks and dispatch, over a running daemon."""

    def __init__(self, view: DaemonView, token: SecretStr, workers: ThreadPoolExecutor,
                 worker_count: int,
                 http_stats: Callable[[], tuple[int, int, int, int, int]] | None = None) -> None:
        self.view, self.token = view, token
        self.handlers = h = Handlers(view)
        self.web = w = Web(view, token, workers)
        self.allowed_hosts = frozenset(name.lower() for name in view.config.http.allowed_hosts)
        self.workers, self.worker_count, self.busy_workers = workers, worker_count, 0
        self.routes: list[Route] = [
            Route("GET", re.compile(r"/metrics"), self._metrics, open=True),
            Route("GET", re.compile(r"/healthz"), h.health, open=True),
            Route("GET", re.compile(r"/v1/cameras"), h.list_cameras),
            Route("GET", re.compile(rf"/v1/cameras/{NAME}"), h.get_camera),
            Route("GET", re.compile(rf"/v1/cameras/{NAME}/snapshot\.(?P<kind>jpg|png)"),
                  h.snapshot, pooled=True),
            Route("POST", re.compile(rf"/v1/cameras/{NAME}/snapshot-to-fifo"),
                  h.snapshot_to_fifo, pooled=True),
            Route("GET", re.compile(r"/v1/subscriptions"), h.list_subscriptions),
            Route("POST", re.compile(r"/v1/subscriptions"), h.add_subscription),
            Route("GET", re.compile(rf"/v1/subscriptions/{NAME}"), h.get_subscription),
            Route("GET", re.compile(r"/"), w.page, web=True),
            Route("GET", re.compile(rf"/v1/cameras/{NAME}/live\.mjpeg"), w.live_view, web=True),
            Route("DELETE", re.compile(rf"/v1/subscriptions/{NAME}"), h.delete_subscription),
        ]
        self.requests = HttpRequestStats(route.template for route in self.routes)
        self.registry = build_registry(view, http_stats, self.requests)
        self.scrapes = SharedRender(lambda: render(self.registry))  # off the loop, shared

    # -- from the head alone ------------------------------------------------------------------

    def head(self, request: Request) -> Response | None:
        """Refuse what the head alone says is refused; None lets the body be read."""
        started = time.monotonic()
        try:
            self._check_host(request)
            route, _ = self._route(request)
            self._authorise(request, route)
            if request.method == "POST":
                media = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if media != "application/json":
                    raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   "request bodies must be sent as Content-Type: "
                                   "application/json")
        except ApiError as exc:
            return self._counted(request, started,
                                 self.web.refusal(request, exc) or _refusal(exc))
        return None

    def _counted(self, request: Request, started: float, response: Response) -> Response:
        """Count an answer for the metrics, under its route's template (never the raw path)."""
        try:
            path = urlsplit(request.target).path
        except ValueError:  # e.g. "http://[x/": no route's
            path = ""
        route = next((r.template for r in self.routes if r.pattern.fullmatch(path)), OTHER)
        self.requests.observe(route, request.method, response.status, time.monotonic() - started)
        return response

    def _check_host(self, request: Request) -> None:
        if request.peer.transport == "unix":
            return  # no browser reaches a Unix socket
        host = request.headers.get("host")
        if host is None and request.http_version == "1.0":
            return  # no Host: not a browser (they all send one)
        if not host_allowed(host_name(host or ""), self.allowed_hosts):
            raise ApiError(HTTPStatus.MISDIRECTED_REQUEST, "unknown_host",
                           "Host is not an address or name of this daemon (add the name to "
                           "http.allowed_hosts)")
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(origin, host or "", self.allowed_hosts):
            raise ApiError(HTTPStatus.FORBIDDEN, "cross_origin",
                           "requests from other sites' pages are refused")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise ApiError(HTTPStatus.FORBIDDEN, "cross_origin",
                           "requests from other sites' pages are refused")

    def _route(self, request: Request) -> tuple[Route, dict[str, str]]:
        try:
            path = urlsplit(request.target).path
        except ValueError:  # e.g. "http://[x/": a 400, not a dropped connection
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request",
                           "the request target is not a valid URL") from None
        allowed = []
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            return route, match.groupdict()
        if allowed:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                           f"{request.method} not allowed on {path} (use {', '.join(allowed)})",
                           {"Allow": ", ".join(allowed)})
        raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no such endpoint: {path}")

    def _authorise(self, request: Request, route: Route) -> None:
        if route.open or request.peer.transport == "unix":
            return  # the Unix socket's permissions decide who may connect at all
        # or a browser's session cookie, signed in with the token (web.py says why no other
        # site's page can make use of it: SameSite=Strict, Sec-Fetch-Site, Origin, POST rules)
        if not (token_matches(request.headers.get("authorization"), self.token)
                or self.web.signed_in(request)):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong token")

    # -- with the body ------------------------------------------------------------------------

    async def __call__(self, request: Request, body: bytes) -> Response:
        """Run the endpoint: inline, or on a worker thread when it may wait or convert."""
        started = time.monotonic()
        return self._counted(request, started, await self._run(request, body))

    async def _run(self, request: Request, body: bytes) -> Response:
        try:
            route, args = self._route(request)
            call = self._bind(route, request, body, args)
            if not route.pooled:
                return await _settled(call())  # /metrics awaits its render, off this loop
            if self.busy_workers >= self.worker_count:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "busy",
                               f"all {self.worker_count} workers are converting or waiting "
                               "for frames", {"Retry-After": "1"})
            self.busy_workers += 1
            try:
                reply = await asyncio.get_running_loop().run_in_executor(self.workers, call)
            finally:
                self.busy_workers -= 1
            return await _settled(reply)
        except ApiError as exc:
            return _refusal(exc)
        except Exception:  # a bug must not become a traceback on the wire
            log.exception("http: %s %s failed", request.method, urlsplit(request.target).path)
            return error_response(500, "internal", "internal error (logged)")

    def _bind(self, route: Route, request: Request, body: bytes, args: dict[str, str]
              ) -> Callable[[], Reply | Response | Awaitable[Reply]]:
        if route.web:
            return lambda: route.func(request, **args)
        if request.method == "POST":
            data = self._json(body)  # POST endpoints learn who asks: FIFOs must be theirs
            return lambda: route.func(data, request.peer, **args)
        query = parse_query(request.target)
        return lambda: route.func(query, **args)

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = loads_bounded(body or b"{}", MAX_DEPTH)
        except JsonTooDeep as exc:  # json.loads would recurse into a RecursionError
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", str(exc)) from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", "body must be a JSON object")
        return data

    async def _metrics(self, _query: dict[str, str]) -> Reply:
        # rendered on a thread of its own and shared by concurrent scrapes (scrape.py says
        # why): scrapers in a loop must not hold up /healthz and the API on this loop
        return (HTTPStatus.OK, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
                await self.scrapes.get())


class ControlPlane:
    """Owns the HTTP thread: one event loop serving the API on TCP, a Unix socket or both."""

    def __init__(self, view: DaemonView, token: SecretStr, max_connections: int) -> None:
        http = view.config.http
        # first: a bad certificate or key is a config error before anything is started
        self.tls = server_context(http)
        self._http = http
        self.workers = ThreadPoolExecutor(http.workers, thread_name_prefix="http-worker")
        self.api = Api(view, token, self.workers, http.workers, lambda: self.peer_stats)
        self.limits = Limits(max_connections=max_connections,
                             handshake_timeout=http.head_timeout, head_timeout=http.head_timeout,
                             body_timeout=http.body_timeout,
                             write_timeout=http.write_timeout, max_body=http.max_body_bytes)
        self.server = HttpServer(self.api, self.limits)
        self.loop = asyncio.new_event_loop()
        self.address = ""  # the TCP address, or the Unix socket's path when that alone
        self.unix_address = ""
        self._unix_socket = http.unix_socket
        self._listen = http.listen
        self._also_tcp = "listen" in http.model_fields_set  # given beside unix_socket
        self._thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
        # what requests make these loggers write is bounded (lograte.py says why); the
        # asyncio logger's lines on this loop are about client sockets too
        bound("framebus.http", "framebus.control", "framebus.web", "asyncio")

    def start(self) -> None:
        """Bind (errors such as "address in use" raise here) and serve in the background:
        on ``http.unix_socket`` if set, on ``http.listen`` if no socket is set or it is
        given too (both: TCP for browsers and scrapers, the socket for frame requests into
        the caller's own FIFOs, which need the caller's uid)."""
        places = []
        if self._unix_socket is not None:
            path = self._unix_socket
            path.unlink(missing_ok=True)
            self.loop.run_until_complete(self.server.listen_unix(str(path)))
            os.chmod(path, 0o660)  # the owner and its group may connect, whatever the umask
            self.address = self.unix_address = str(path)
            places.append(str(path))
        if self._unix_socket is None or self._also_tcp:
            host, _, port = self._listen.rpartition(":")
            try:
                address = self.loop.run_until_complete(
                    self.server.listen_tcp(host.strip("[]"), int(port), self.tls))
            except OSError as exc:
                self.loop.run_until_complete(self.server.close())  # the socket, if bound
                raise OSError(exc.errno, f"http.listen {self._listen}: {exc.strerror}") from None
            self.address = f"{address[0]}:{address[1]}"
            places.insert(0, self.address)
        self.loop.call_soon_threadsafe(self._report_suppressed)
        self._thread.start()
        # the first word after "listening on" is the address clients read from the log
        log.info("http: listening on %s (%sat most %d connections)",
                 " and on the Unix socket ".join(places),
                 "HTTPS, " if self.tls else "", self.limits.max_connections)

    def reload_tls(self) -> None:
        """SIGHUP: load the certificate and key files again (renewed ones) for connections
        from now on; on failure log why and keep serving the loaded ones."""
        if self.tls is None or not self._thread.is_alive():
            return
        try:
            context = server_context(self._http)
        except ConfigError as exc:
            log.error("reload: keeping the loaded TLS certificate: %s", exc)
            return
        assert context is not None
        self.tls = context
        # the loop thread reads it at each accept: set it there, as one reference
        self.loop.call_soon_threadsafe(setattr, self.server, "tls", context)
        log.info("reload: TLS certificate and key loaded again")

    def _report_suppressed(self) -> None:
        """Every ``report_s``: say how many request log lines were suppressed, if any."""
        REQUEST_LINES.report()
        self.loop.call_later(REQUEST_LINES.report_s, self._report_suppressed)

    def stop(self) -> None:
        """Stop serving, close every connection and the socket."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
        self.loop.close()
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.api.scrapes.close()
        REQUEST_LINES.report()

    @property
    def peer_stats(self) -> tuple[int, int, int, int, int]:
        """(open connections, refused at the cap, evicted idle, timed out, TLS handshakes
        refused or abandoned)."""
        s = self.server
        return len(s.connections), s.refused, s.evicted, s.timed_out, s.tls_failed


__all__ = ["Api", "ControlPlane", "Peer"]
