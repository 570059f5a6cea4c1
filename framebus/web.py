"""What a browser gets: the status page (GET /) and live views of the cameras
(GET /v1/cameras/{name}/live.mjpeg), and the session cookie that lets an ``<img>`` in.

**Signing in.** An ``<img src>`` or a typed URL cannot send the bearer header. So GET
``/?token=TOKEN`` (the API token; the 401 page without one says where it is and has a form
for it) answers 303 to ``/`` with the cookie ``framebus_session``: HttpOnly (no script reads
it), SameSite=Strict, Path=/, for ``SESSION_S``. Its value is ``EXPIRES.MAC`` with MAC =
HMAC-SHA256(token, "framebus-session:EXPIRES"): the token itself never sits in the browser, a
new token ends every session, and a session ends by itself. control.py takes the cookie as it
takes the bearer header: over TCP only (the Unix socket needs neither), after the Host and
Origin checks.

**Why another site's page cannot use the cookie.** SameSite=Strict: the browser sends it on
no request another *site* starts, not even a link followed from there. A site ignores the
port, though (a page on localhost:3000 is same-site with the daemon on localhost:8470), so the
cookie counts only when the browser says the request comes from the daemon's own pages or
from the user (``Sec-Fetch-Site`` same-origin or none; browsers too old to send it still
apply SameSite) and an ``Origin``, if any, is the daemon's own. What changes anything is a
POST or a DELETE: browsers send an Origin with every POST (control.py refuses a foreign one),
a cross-origin DELETE or JSON POST needs a CORS preflight the daemon never grants, and a POST
body must be ``application/json``, which no HTML form can send. The pages refuse to be
framed and run only their own inline script (a CSP hash). What it cannot stop: a cookie is
kept per host, not per port, so a server on another port of the same host name is sent the
cookie (never the token) until it expires.

**Live views.** ``multipart/x-mixed-replace`` JPEG parts, at most ``fps`` a second (default
5, capped at 10) and ``width`` wide (default 640, never over the camera's own). Each frame is
encoded once per (camera, width) on the control plane's worker threads, never on the event
loop, and shared by every viewer of that size (a subscriber or snapshot wanting the same
JPEG shares it too, through the store). A slow viewer gets fewer frames, never older ones.
At most ``max_streams`` run at once (503 ``busy`` with Retry-After beyond, and never more
than half of ``http.max_connections``), each for at most ``max_seconds``; one also ends when
its client closes or stops reading (``http.write_timeout``), and all end when the daemon stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from framebus.access import TOKEN_FILE_NAME, origin_allowed
from framebus.api import ApiError
from framebus.http_server import Request, Response
from framebus.query import parse_query, query_decimal, query_int
from framebus.store import Rendition, StoredFrame
from framebus.webpage import csp, login_page, status_page
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from framebus.store import LatestFrameStore
    from framebus.view import DaemonView

log = logging.getLogger("framebus.web")

COOKIE = "framebus_session"
SESSION_S = 12 * 3600
DEFAULT_FPS, MAX_FPS, DEFAULT_WIDTH, MAX_WIDTH = 5.0, 10.0, 640, 8192
BOUNDARY = "framebus-live"
TRUSTED_FETCH_SITES = (None, "same-origin", "none")  # the daemon's own pages, or the user
IDLE_POLL_S = 0.25  # how often a view looks for a frame while its camera sends none


def _split(request: Request) -> tuple[str, dict[str, str]]:
    """The path and query of a request ("" and {} for a target that is no URL)."""
    try:
        path = urlsplit(request.target).path
    except ValueError:
        return "", {}
    return path, parse_query(request.target)


def _mac(token: SecretStr, expires: int) -> str:
    message = f"framebus-session:{expires}".encode()
    return hmac.new(token.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


def session_value(token: SecretStr, now: float | None = None) -> str:
    """A cookie value valid for ``SESSION_S`` from ``now``."""
    expires = int(now if now is not None else time.time()) + SESSION_S
    return f"{expires}.{_mac(token, expires)}"


def session_valid(value: str, token: SecretStr, now: float | None = None) -> bool:
    """True for a value ``session_value`` made with this token that has not expired."""
    expires, _, mac = value.partition(".")
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    current = now if now is not None else time.time()
    if not current < int(expires) <= current + SESSION_S + 60:
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, int(expires)).encode())


def _cookies(header: str, name: str) -> list[str]:
    """The values of every cookie called ``name`` (another port's app may set one too)."""
    values = []
    for pair in header.split(";")[:64]:
        key, _, value = pair.strip().partition("=")
        if key == name:
            values.append(value.strip())
    return values


def _page_headers(content_type: str = "text/html; charset=utf-8") -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("Cache-Control", "no-store"),
            ("Content-Security-Policy", csp()), ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]


class Web:
    """The browser's routes and its session check (control.py routes to them)."""

    def __init__(self, view: DaemonView, token: SecretStr, workers: Executor) -> None:
        self.view, self.token = view, token
        http = view.config.http
        self.live = LiveViews(view.store, workers,
                              min(http.max_live_streams, http.max_connections // 2),
                              http.live_max_seconds)

    # -- sessions ----------------------------------------------------------------------------

    def signed_in(self, request: Request) -> bool:
        """For a TCP request without the bearer header: the right ``?token=`` on GET /, or a
        valid session cookie on a request from the daemon's own pages (see the docstring)."""
        path, query = _split(request)
        if path == "/" and "token" in query:
            return self._token_is(query["token"])
        if request.headers.get("sec-fetch-site") not in TRUSTED_FETCH_SITES:
            return False
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(origin, request.headers.get("host", ""),
                                                     frozenset()):
            return False
        values = _cookies(request.headers.get("cookie", ""), COOKIE)
        return any(session_valid(value, self.token) for value in values)

    def _token_is(self, given: str) -> bool:
        expected = self.token.get_secret_value().encode()
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected)

    def refusal(self, request: Request, exc: ApiError) -> Response | None:
        """The 401 of the page is a page saying how to sign in (None: the usual JSON)."""
        path, query = _split(request)
        if exc.status != HTTPStatus.UNAUTHORIZED or path != "/":
            return None
        return self._login(request, wrong="token" in query)

    def _login(self, request: Request, wrong: bool) -> Response:
        http = self.view.config.http
        if http.token is not None:
            where = "is <code>http.token</code> in the daemon's configuration"
        else:
            path = http.token_file or self.view.config.fifo_dir / TOKEN_FILE_NAME
            where = f"is in <code>{html.escape(str(path))}</code>"
        problem = "That token is wrong." if wrong else "This page needs the API token."
        body = login_page(problem, request.headers.get("host") or http.listen, where)
        return Response(401, [*_page_headers(),
                              ("WWW-Authenticate", 'Bearer realm="framebus"')], body)

    # -- routes --------------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        """GET /: the status page; with ``?token=``, sign in (303 to / with the cookie)."""
        _, query = _split(request)
        if "token" in query and request.peer.transport == "tcp":
            if not self._token_is(query["token"]):
                return self._login(request, wrong=True)
            cookie = (f"{COOKIE}={session_value(self.token)}; Max-Age={SESSION_S}; Path=/; "
                      "HttpOnly; SameSite=Strict")
            return Response(303, [*_page_headers(), ("Location", "/"), ("Set-Cookie", cookie)],
                            b'<!doctype html><title>framebus</title><a href="/">framebus</a>')
        return Response(200, _page_headers(), status_page(self.live.max_seconds))

    def live_view(self, request: Request, name: str) -> Response:
        """GET /v1/cameras/{name}/live.mjpeg."""
        if name not in self.view.cameras.cameras:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_camera", f"no camera named {name!r}")
        _, query = _split(request)
        fps = min(query_decimal(query, "fps", 0, low_open=True, expected="a number > 0 "
                                "(ASCII digits, e.g. 5 or 0.5; above 10 counts as 10)")
                  or DEFAULT_FPS, MAX_FPS)
        width = query_int(query, "width", 1, MAX_WIDTH) or DEFAULT_WIDTH
        stream = self.live.open(name, fps, width)
        headers = [("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"),
                   ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                   ("X-Framebus-Fps", f"{fps:g}")]
        return Response(200, headers, stream=stream)


class LiveViews:
    """The running live views and the JPEG parts they share. Event loop thread only."""

    def __init__(self, store: LatestFrameStore, workers: Executor, max_streams: int,
                 max_seconds: float) -> None:
        self.store, self.workers = store, workers
        self.max_streams, self.max_seconds = max_streams, max_seconds
        self.running = 0
        self.encoded = 0  # parts made (one per frame and size, however many viewers)
        self._made: dict[tuple[str, int], tuple[int, asyncio.Future[bytes]]] = {}
        self._viewers: Counter[tuple[str, int]] = Counter()

    def open(self, camera: str, fps: float, width: int) -> LiveStream:
        """A new view (503 ``busy`` at ``max_streams``); its stream's aclose() frees it."""
        if self.running >= self.max_streams:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "busy",
                           f"{self.max_streams} live views are running (the most at once)",
                           {"Retry-After": "5"})
        self.running += 1
        self._viewers[(camera, width)] += 1
        return LiveStream(self, camera, 1.0 / fps, width, time.monotonic() + self.max_seconds)

    def close(self, camera: str, width: int) -> None:
        """One view ended: a size nobody watches any more keeps no part."""
        self.running -= 1
        key = (camera, width)
        self._viewers[key] -= 1
        if self._viewers[key] <= 0:
            del self._viewers[key]
            self._made.pop(key, None)

    async def part(self, frame: StoredFrame, width: int) -> bytes:
        """The multipart part of ``frame`` at ``width``: made once, on a worker thread."""
        key = (frame.camera, width)
        found = self._made.get(key)
        if found is None or found[0] != frame.seq:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.workers, self._encode, frame, width)
            future.add_done_callback(_retrieve)
            found = self._made[key] = (frame.seq, future)
            self.encoded += 1
        return await asyncio.shield(found[1])  # one viewer leaving does not cancel the rest

    def _encode(self, frame: StoredFrame, width: int) -> bytes:
        payload = self.store.payload(frame, Rendition(PixelFormat.JPEG, width))
        jpeg = payload.buffers[0]
        head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                f"X-Framebus-Seq: {frame.seq}\r\n\r\n").encode()
        # the boundary right after the image: a browser shows a part once the next begins
        return b"".join((head, jpeg, f"\r\n--{BOUNDARY}\r\n".encode()))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read, so that a failure nobody awaited is not reported twice


class LiveStream:
    """One viewer's body (an http_server ``Stream``): the newest frame whenever one is
    newer than the last sent and ``interval`` has passed, until ``deadline``."""

    def __init__(self, views: LiveViews, camera: str, interval: float, width: int,
                 deadline: float) -> None:
        self.views, self.camera, self.interval, self.width = views, camera, interval, width
        self.deadline = deadline
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._parts()

    async def _parts(self) -> AsyncIterator[bytes]:
        yield f"--{BOUNDARY}\r\n".encode()
        store, last, next_at = self.views.store, -1, 0.0
        while (now := time.monotonic()) < self.deadline:
            frame = store.latest(self.camera)
            if frame is not None and frame.seq != last and now >= next_at:
                # on a clock grid: views at one rate send the same frames, encoded once
                next_at = max((math.floor(now / self.interval) + 1) * self.interval,
                              now + self.interval / 2)
                last = frame.seq
                try:
                    yield await self.views.part(frame, self.width)
                except Exception:  # e.g. a frame PyAV cannot encode: skip it, not the view
                    log.exception("live view of %s: cannot encode frame %d", self.camera,
                                  frame.seq)
                continue
            fresh = frame is not None and now - frame.publish_mono_ns / 1e9 < 1.0
            wait = max(next_at - now, min(self.interval / 4, 0.02)) if fresh else IDLE_POLL_S
            await asyncio.sleep(min(wait, self.deadline - now))

    async def aclose(self) -> None:
        """Free this view's place (once, however the stream ended)."""
        if not self._closed:
            self._closed = True
            self.views.close(self.camera, self.width)
