"""The browser's routes against a running daemon with a real (lavfi) camera: the status page
and its sign-in (401 page, ?token= → cookie + 303, the cookie's rules), and live.mjpeg (distinct
JPEG parts at the capped rate, a reader that stops is dropped, the cap on live views, the
lifetime, eviction, the daemon's stop)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from fanoutkit import running_daemon
from openapikit import SPEC, Running, _check, _response
from pydantic import SecretStr
from waiting import wait_for

from framebus.web import BOUNDARY, COOKIE, SESSION_S, LiveViews, session_value

CAMERA = {"url": "lavfi:testsrc2=size=320x240:rate=25,realtime", "idle_decode": "all"}
HTTP = {"listen": "127.0.0.1:0", "wait_timeout": "1s", "write_timeout": "1s",
        "max_connections": 8}  # at most 4 live views: half the connections
WEB_SOURCE = Path(__file__).resolve().parent.parent / "framebus" / "web.py"


@dataclass
class Site(Running):
    """The web tests' daemon: its live views and plain requests (headers as given)."""

    @property
    def live(self) -> LiveViews:
        assert self.daemon.control is not None
        return self.daemon.control.api.web.live

    def request(self, target: str, headers: dict[str, str] | None = None, method: str = "GET"
                ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            connection.request(method, target, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def cookie(self) -> str:
        """Sign in with ?token=: the ``Cookie`` header value to send from then on."""
        status, headers, _ = self.request(f"/?token={self.token}")
        assert status == 303, status
        return headers["Set-Cookie"].split(";")[0]

    def open_live(self, query: str = "", rcvbuf: int | None = None) -> View:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting: the window is agreed at the handshake
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(20)
        sock.connect((self.host, self.port))
        sock.sendall(f"GET /v1/cameras/cam/live.mjpeg{query} HTTP/1.1\r\n"
                     f"Host: {self.host}:{self.port}\r\n"
                     f"Authorization: Bearer {self.token}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return View(sock, response)


@dataclass
class View:
    """A live view being read; close() closes the connection (the socket and its file)."""

    sock: socket.socket
    response: http.client.HTTPResponse

    def close(self) -> None:
        self.response.close()
        self.sock.close()


def read_part(response: http.client.HTTPResponse) -> tuple[dict[str, str], bytes]:
    """The next JPEG part of a live view (after its boundary line)."""
    line = response.readline()
    while line.strip() in (b"", f"--{BOUNDARY}".encode()):
        if not line:
            raise EOFError("the stream ended")
        line = response.readline()
    headers = {}
    while line.strip():
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
        line = response.readline()
    body = response.read(int(headers["content-length"]))
    assert response.readline() == b"\r\n"  # the part ends, the next boundary follows
    return headers, body


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    fifo_dir = tmp_path_factory.mktemp("web") / "fifos"
    with running_daemon({"cam": CAMERA}, {}, fifo_dir, http=HTTP) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
        assert daemon.control is not None
        host, _, port = daemon.control.address.rpartition(":")
        yield Site(daemon, host, int(port), fifo_dir)


# -- the page and signing in -------------------------------------------------------------------


def test_the_page_without_a_token_is_a_401_page_saying_where_the_token_is(site: Site) -> None:
    answer = site.request("/")
    body = _check("GET", "/", answer, 401).decode()
    assert answer[1]["WWW-Authenticate"] == 'Bearer realm="framebus"'
    assert f"http://{site.host}:{site.port}/?token=" in body
    assert str(site.fifo_dir / "api.token") in body and "wrong" not in body
    wrong = site.request("/?token=nope")
    assert _check("GET", "/", wrong, 401).decode().count("That token is wrong") == 1
    with socket.create_connection((site.host, site.port), timeout=20) as sock:  # no URL
        sock.sendall(b"GET http://[x/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    # the API's own routes still answer JSON, and take no token in the query
    for target in ("/v1/cameras", f"/v1/cameras?token={site.token}"):
        assert _check("GET", "/v1/cameras", site.request(target), 401)["error"] == (
            "unauthorized")


def test_the_token_in_the_query_sets_a_session_cookie_and_redirects(site: Site) -> None:
    _, headers, _ = answer = site.request(f"/?token={site.token}")
    _check("GET", "/", answer, 303)
    assert headers["Location"] == "/"
    name_value, *attributes = [part.strip() for part in headers["Set-Cookie"].split(";")]
    assert name_value.startswith(f"{COOKIE}=") and site.token not in name_value
    assert {"HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={SESSION_S}"} == set(attributes)


def test_the_page_with_the_cookie_is_self_contained(site: Site) -> None:
    cookie = site.cookie()
    answer = site.request("/", {"Cookie": cookie})
    page = _check("GET", "/", answer, 200).decode()
    assert "http://" not in page and "https://" not in page  # no URL of any other host
    assert re.findall(r"<(?:link|iframe|object|embed)|<script[^>]*src|@import|url\(", page) == []
    assert all(url.startswith("/") for url in re.findall(r'(?:src|href|action)="([^"]*)"', page))
    for path in ("/v1/cameras", "/v1/subscriptions", "live.mjpeg", "snapshot.jpg"):
        assert path in page
    # the policy allows exactly the page's own script and style
    policy = answer[1]["Content-Security-Policy"]
    for tag in ("script", "style"):
        inline = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        assert inline is not None
        digest = base64.b64encode(hashlib.sha256(inline[1].encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert "frame-ancestors 'none'" in policy and answer[1]["X-Frame-Options"] == "DENY"
    # the cookie authorises the API like the bearer header does
    listed = _check("GET", "/v1/cameras", site.request("/v1/cameras", {"Cookie": cookie}), 200)
    assert listed["cameras"][0]["name"] == "cam"


def test_the_cookie_serves_the_daemons_own_pages_only(site: Site) -> None:
    cookie = site.cookie()
    ours = f"http://{site.host}:{site.port}"
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": ours}, {"Sec-Fetch-Site": "none"}):
        assert site.request("/v1/cameras", {"Cookie": cookie, **headers})[0] == 200, headers
    # another site's page: refused before the token is looked at, cookie or not
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        for target, path in (("/", "/"), ("/v1/cameras", "/v1/cameras"),
                             ("/v1/cameras/cam/live.mjpeg", "/v1/cameras/{name}/live.mjpeg")):
            answer = site.request(target, {"Cookie": cookie, **headers})
            assert _check("GET", path, answer, 403)["error"] == "cross_origin", headers
    # same-site but not same-origin (a page on another port of this host): not with the cookie
    answer = site.request("/v1/cameras", {"Cookie": cookie, "Sec-Fetch-Site": "same-site"})
    assert _check("GET", "/v1/cameras", answer, 401)["error"] == "unauthorized"
    assert site.request("/v1/cameras", {"Authorization": f"Bearer {site.token}",
                                        "Sec-Fetch-Site": "same-site"})[0] == 200
    # forged, expired or another token's cookies
    assert site.daemon.http_token is not None
    expired = session_value(site.daemon.http_token, time.time() - SESSION_S - 5)
    for value in (cookie.split("=", 1)[1] + "0", expired, "99999999999.abc",
                  session_value(SecretStr("another token"))):
        assert site.request("/v1/cameras", {"Cookie": f"{COOKIE}={value}"})[0] == 401, value
    # one valid value among other cookies of the same name (another port's app) counts
    both = f"{COOKIE}=junk; other=1; {cookie}"
    assert site.request("/v1/cameras", {"Cookie": both})[0] == 200


# -- live views ----------------------------------------------------------------------------


def test_live_view_sends_distinct_jpegs_at_the_capped_rate(site: Site) -> None:
    view = site.open_live("?fps=40")  # capped at 10
    response = view.response
    try:
        assert response.status == 200 and response.getheader("X-Framebus-Fps") == "10"
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Length") is None
        assert response.getheader("Content-Type") == (
            f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        parts, times = [], []
        for _ in range(8):
            headers, jpeg = read_part(response)
            times.append(time.monotonic())
            parts.append((int(headers["x-framebus-seq"]), jpeg))
    finally:
        view.close()
    seqs = [seq for seq, _ in parts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({jpeg for _, jpeg in parts}) == len(parts)  # every part a different picture
    for _, jpeg in parts:
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
        picture = next(av.open(io.BytesIO(jpeg)).decode(video=0))
        assert (picture.width, picture.height) == (320, 240)  # 640 wide, but never upscaled
    # at most 10 a second: n parts need at least (n - 2) intervals of 0.1 s between them
    assert times[-1] - times[0] >= (len(times) - 2) * 0.1 - 0.02, times
    wait_for(lambda: site.live.running == 0, 10, "the view to end")


def test_live_view_over_http_1_0_ends_by_closing(site: Site) -> None:
    with socket.create_connection((site.host, site.port), timeout=20) as sock:
        sock.sendall(f"GET /v1/cameras/cam/live.mjpeg HTTP/1.0\r\nHost: {site.host}\r\n"
                     f"Authorization: Bearer {site.token}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        try:  # no chunked framing for HTTP/1.0: the body ends when the connection does
            assert response.status == 200
            assert response.getheader("Transfer-Encoding") is None
            assert response.getheader("Content-Length") is None
            assert response.getheader("Connection") == "close"
            assert read_part(response)[1][:2] == b"\xff\xd8"
        finally:
            response.close()
    wait_for(lambda: site.live.running == 0, 10, "the view to end")


def test_live_view_size_and_query_errors(site: Site) -> None:
    view = site.open_live("?width=160&fps=2.5")
    response = view.response
    try:
        assert response.getheader("X-Framebus-Fps") == "2.5"
        _, jpeg = read_part(response)
        picture = next(av.open(io.BytesIO(jpeg)).decode(video=0))
        assert (picture.width, picture.height) == (160, 120)
    finally:
        view.close()
    path = "/v1/cameras/{name}/live.mjpeg"
    bearer = {"Authorization": f"Bearer {site.token}"}
    for query in ("fps=0", "fps=-1", "fps=abc", "fps=nan", "fps=inf", "width=0", "width=x",
                  "width=9000"):
        answer = site.request(f"/v1/cameras/cam/live.mjpeg?{query}", bearer)
        assert _check("GET", path, answer, 400)["error"] == "bad_query", query
    answer = site.request("/v1/cameras/nope/live.mjpeg", bearer)
    assert _check("GET", path, answer, 404)["error"] == "unknown_camera"
    answer = site.request("/v1/cameras/cam/live.mjpeg")
    assert _check("GET", path, answer, 401)["error"] == "unauthorized"
    assert site.request("/v1/cameras/cam/live.mjpeg", bearer, method="HEAD")[0] == 405
    wait_for(lambda: site.live.running == 0, 10, "the views to end")


def test_a_viewer_that_stops_reading_is_dropped(site: Site) -> None:
    assert site.daemon.control is not None
    server = site.daemon.control.server
    timed_out = server.timed_out
    view = site.open_live("?fps=10", rcvbuf=4096)
    response = view.response
    try:
        read_part(response)
        assert site.live.running == 1
        started = time.monotonic()  # from here on nothing is read: the buffers fill up
        wait_for(lambda: site.live.running == 0, 20, "the stalled viewer to be dropped")
        took = time.monotonic() - started
    finally:
        view.close()
    assert server.timed_out >= timed_out + 1
    # ~10 KB parts at 10 a second fill the ~150 KB of socket buffers in about 1.5 s; then
    # one write waits write_timeout (1 s) and the view is cut off
    assert took < 8, took


def test_live_views_are_capped(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    assert site.live.max_streams == 4  # 8 by default, but never over half of 8 connections
    monkeypatch.setattr(site.live, "max_streams", 2)
    path = "/v1/cameras/{name}/live.mjpeg"
    views = [site.open_live() for _ in range(2)]
    try:
        for view in views:
            read_part(view.response)
        answer = site.request("/v1/cameras/cam/live.mjpeg",
                              {"Authorization": f"Bearer {site.token}"})
        assert _check("GET", path, answer, 503)["error"] == "busy"
        assert answer[1]["Retry-After"] == "5"
        views.pop().close()
        wait_for(lambda: site.live.running == 1, 10, "the closed view to free its place")
        views.append(site.open_live())
        read_part(views[-1].response)
        assert site.live.running == 2
    finally:
        for view in views:
            view.close()
    wait_for(lambda: site.live.running == 0, 10, "every view to end")


def test_viewers_of_one_size_share_each_encoded_frame(site: Site) -> None:
    encoded = site.live.encoded
    views = [site.open_live("?fps=5&width=200") for _ in range(3)]
    try:
        seqs = [[int(read_part(view.response)[0]["x-framebus-seq"]) for _ in range(6)]
                for view in views]
    finally:
        for view in views:
            view.close()
    # the views tick together, so they mostly send the same frames, each encoded once
    distinct = len(set(seqs[0]) | set(seqs[1]) | set(seqs[2]))
    assert site.live.encoded - encoded == distinct
    assert distinct <= 12, seqs  # 18 if each view had its own
    wait_for(lambda: site.live.running == 0, 10, "the views to end")


def test_a_live_view_ends_after_its_lifetime(site: Site, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setattr(site.live, "max_seconds", 1.0)
    view = site.open_live()
    response = view.response
    started = time.monotonic()
    try:
        with pytest.raises(EOFError):
            for _ in range(100):
                read_part(response)
        took = time.monotonic() - started
    finally:
        view.close()
    assert 0.8 < took < 5, took
    assert response.isclosed()  # the chunked body ended properly (its last chunk came)
    wait_for(lambda: site.live.running == 0, 10, "the view to be freed")


def test_live_views_are_busy_connections_never_evicted_as_idle(site: Site) -> None:
    assert site.daemon.control is not None
    server = site.daemon.control.server
    views = [site.open_live() for _ in range(2)]
    idle = []
    try:
        for view in views:
            read_part(view.response)
        evicted = server.evicted
        # 8 connections at most: 2 views, then 8 idle ones; the oldest idle ones make room
        for _ in range(8):
            idle.append(socket.create_connection((site.host, site.port), timeout=20))
        wait_for(lambda: server.evicted >= evicted + 2, 10, "idle connections to be evicted")
        for view in views:  # the views still run
            read_part(view.response)
        assert site.live.running == 2
    finally:
        for sock in idle:
            sock.close()
        for view in views:
            view.close()
    wait_for(lambda: site.live.running == 0, 10, "the views to end")


def test_the_web_errors_are_documented() -> None:
    """control.py's checks of the error codes (test_openapi.py) do not read web.py: here
    (with query.py, the query parser the live view shares with the API)."""
    source = WEB_SOURCE.read_text() + WEB_SOURCE.with_name("query.py").read_text()
    found = set(re.findall(r'ApiError\(\s*HTTPStatus\.(\w+),\s*"(\w+)"', source))
    assert found == {("NOT_FOUND", "unknown_camera"), ("BAD_REQUEST", "bad_query"),
                     ("SERVICE_UNAVAILABLE", "busy")}
    enum = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    statuses = {"NOT_FOUND": 404, "BAD_REQUEST": 400, "SERVICE_UNAVAILABLE": 503}
    for status, code in found:
        assert code in enum
        description = _response("GET", "/v1/cameras/{name}/live.mjpeg", statuses[status])[1]
        assert f"`{code}`" in description["description"], code


def test_live_views_end_when_the_daemon_stops(tmp_path: Path) -> None:
    with running_daemon({"cam": CAMERA}, {}, tmp_path / "fifos", http=HTTP) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 20, "a first frame")
        assert daemon.control is not None
        host, _, port = daemon.control.address.rpartition(":")
        view = Site(daemon, host, int(port), tmp_path / "fifos")
        live = view.open_live()
        response = live.response
        read_part(response)
        daemon.stop()
        started = time.monotonic()
        with pytest.raises((EOFError, ConnectionError, http.client.IncompleteRead)):
            for _ in range(100):
                read_part(response)
        assert time.monotonic() - started < 5
        live.close()


def test_over_the_unix_socket_the_page_needs_no_sign_in(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with running_daemon({"cam": CAMERA}, {}, tmp_path / "fifos",
                        http={"unix_socket": str(path)}) as daemon:
        assert daemon.control is not None
        for target in ("/", "/?token=anything"):  # no cookie to set: the socket is the key
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(20)
                sock.connect(str(path))
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close"
                             "\r\n\r\n".encode())
                response = http.client.HTTPResponse(sock)
                response.begin()
                page = response.read()
            assert response.status == 200 and b"/v1/cameras" in page, target
            assert response.getheader("Set-Cookie") is None
