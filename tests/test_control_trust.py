"""The hardened control plane: whom it trusts, and what a caller cannot make it do.

A real daemon (in this process), the real RTSP test server, real FIFOs and reader processes.
Every wait has a deadline (waiting.wait_for); nothing sleeps and hopes.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from faultkit import CheckedReader
from prometheus_client.parser import text_string_to_metric_families
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus.client import Subscriber
from framebus.daemon import Daemon
from framebus.fifo import unread_bytes

# wait_timeout bounds a frame request's own timeout: long enough that a stalled request
# (STALL_S) certainly outlives the requests a test makes meanwhile, even on a loaded machine
HTTP: dict[str, Any] = {"listen": "127.0.0.1:0", "wait_timeout": "20s"}
STALL_S = 6.0
NATIVE = (640, 360)
Labels = tuple[tuple[str, str], ...]


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=NATIVE[0], height=NATIVE[1], gop=10),
                                Mount("small", width=160, height=120, gop=10)])


@contextmanager
def daemon_of(server: RtspServer, tmp_path: Path, cameras: dict[str, Any] | None = None,
              subscribers: dict[str, Any] | None = None, **http: Any) -> Iterator[Daemon]:
    """A daemon with camera "cam" (plus ``cameras``), streaming before this returns."""
    all_cameras = {"cam": {"url": server.url("cam"), "idle_decode": "all"}, **(cameras or {})}
    with running_daemon(all_cameras, subscribers or {}, tmp_path / "fifos",
                        http={**HTTP, **http}) as daemon:
        wait_for(lambda: daemon.store.latest("cam") is not None, 30, "a first frame")
        yield daemon


def metrics(daemon: Daemon) -> dict[tuple[str, Labels], float]:
    status, _, raw = ApiClient(daemon, token="").request("GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(raw.decode()) for s in family.samples}


def subscription_names(api: ApiClient) -> list[str]:
    status, body = api.json("GET", "/v1/subscriptions")
    assert status == 200
    return [s["name"] for s in body["subscriptions"]]


@contextmanager
def stalled_request(daemon: Daemon) -> Iterator[tuple[Path, list[tuple[int, Any]]]]:
    """A snapshot-to-fifo request stuck writing: its FIFO is open for reading but never read,
    and a native bgr24 frame (691 kB) is larger than the pipe (64 kB). Yields once bytes are
    in the pipe (the request holds its FIFO and a worker): the FIFO and a list that gets the
    request's (status, body); at exit, checks it ended 504 after its timeout."""
    fifo = daemon.config.fifo_dir / "stalled.fifo"
    os.mkfifo(fifo, 0o600)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    result: list[tuple[int, Any]] = []

    def post() -> None:
        result.append(ApiClient(daemon).json("POST", "/v1/cameras/cam/snapshot-to-fifo", {
            "fifo": str(fifo), "format": "bgr24", "timeout": STALL_S}))
    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    try:
        wait_for(lambda: unread_bytes(fd) > 0 or result, 30, "the stalled request to write")
        assert not result, f"the request ended before stalling: {result}"
        yield fifo, result
        thread.join(STALL_S + 30)
        assert result and (result[0][0], result[0][1]["error"]) == (504, "reader_too_slow")
    finally:
        thread.join(STALL_S + 30)
        os.close(fd)


# -- 1. hijacking a subscriber's FIFO ---------------------------------------------------------


def test_hijack_attempts_are_refused_and_the_victim_is_undisturbed(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path, subscribers={"victim": {"camera": "cam",
                                                             "format": "gray"}}) as daemon:
        api = ApiClient(daemon)
        victim = daemon.config.fifo_dir / "victim.fifo"
        hard_link = daemon.config.fifo_dir / "alias.fifo"  # the same FIFO under another name
        os.link(victim, hard_link)
        reader = CheckedReader(victim, max_seconds=120)
        try:
            reader.wait_frames(5)
            for attempt in range(3):
                for path in (victim, hard_link):
                    status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                            {"fifo": str(path), "format": "gray"})
                    assert (status, body["error"]) == (409, "fifo_in_use"), (path, body)
                    status, body = api.json("POST", "/v1/subscriptions", {
                        "name": f"thief-{attempt}", "camera": "cam", "fifo": str(path)})
                    assert (status, body["error"]) == (409, "fifo_in_use"), (path, body)
                reader.wait_more(3)  # the victim reads on between the attempts
            reader.wait_more(10)
            status, victim_status = api.json("GET", "/v1/subscriptions/victim")
            assert (status, victim_status["disconnects"], victim_status["connected"]) == (
                200, 0, True)
            assert subscription_names(api) == ["victim"]
        finally:
            summary = reader.stop()
    assert summary["frames"] >= 19 and summary["opens"] == 1, summary
    assert (summary["protocol_errors"], summary["truncated"], reader.torn) == (0, 0, 0), summary


# -- 2. one requester FIFO, two requests ------------------------------------------------------


def test_a_second_request_into_a_fifo_being_written_is_refused(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path) as daemon:
        api = ApiClient(daemon)
        with stalled_request(daemon) as (fifo, first):
            status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                    {"fifo": str(fifo), "format": "gray", "width": 32})
            assert (status, body["error"]) == (409, "fifo_in_use"), body
            assert not first, "the first request must still be writing"
        # the first one ended (504, checked by stalled_request): the FIFO is free again
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                    {"fifo": str(fifo), "format": "gray", "width": 32})
            assert status == 200 and (body["width"], body["height"]) == (32, 18), body
            assert len(os.read(fd, 65536)) > 32 * 18
        finally:
            os.close(fd)


# -- 3. cross-site requests and content types --------------------------------------------------


def test_cross_site_requests_and_wrong_content_types_are_refused(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path) as daemon:
        api = ApiClient(daemon)
        port = api.port
        before = subscription_names(api)
        create = b'{"name": "planted", "camera": "cam", "format": "gray"}'
        json_type = {"Content-Type": "application/json"}
        answers: list[dict[str, str]] = []

        def post(headers: dict[str, str]) -> tuple[int, bytes]:
            status, got, raw = api.request("POST", "/v1/subscriptions", create, headers)
            answers.append(got)
            return status, raw

        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            status, raw = post({"Content-Type": media})
            assert status == 415 and b"unsupported_media_type" in raw, (media, raw)
        refused = [({"Host": "evil.example"}, 421, b"unknown_host"),
                   ({"Host": f"evil.example:{port}"}, 421, b"unknown_host"),
                   ({"Origin": "http://evil.example"}, 403, b"cross_origin"),
                   ({"Origin": "null"}, 403, b"cross_origin"),
                   # another local web server's page (same host, another port): not ours
                   ({"Host": f"localhost:{port}", "Origin": "http://localhost:9999"}, 403,
                    b"cross_origin"),
                   ({"Sec-Fetch-Site": "cross-site"}, 403, b"cross_origin")]
        for headers, want_status, error in refused:
            status, raw = post({**json_type, **headers})
            assert status == want_status and error in raw, (headers, status, raw)
        assert subscription_names(api) == before  # nothing was created
        for headers in ({"Host": f"localhost:{port}"}, {"Host": f"127.0.0.1:{port}"},
                        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
                        {"Sec-Fetch-Site": "same-origin"}):
            status, got, _ = api.request("GET", "/v1/cameras", None, headers)
            answers.append(got)
            assert status == 200, headers
        status, got, raw = api.request("OPTIONS", "/v1/subscriptions", None,
                                       {"Host": f"localhost:{port}",
                                        "Origin": f"http://localhost:{port}",
                                        "Access-Control-Request-Method": "POST"})
        answers.append(got)
        assert status == 405 and got["Content-Type"] == "application/json"
        assert b"method_not_allowed" in raw
        for got in answers:
            assert not [h for h in got if h.lower().startswith("access-control-")], got
        # a 401 comes from the head alone: the declared 64 kB body is never waited for
        head = (f"POST /v1/subscriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n").encode()
        start = time.monotonic()
        with socket.create_connection((api.host, port), timeout=5) as conn:
            conn.sendall(head)
            answer = b""
            while chunk := conn.recv(65536):  # ends when the server closes; times out if not
                answer += chunk
        elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"connection: close" in answer.lower() and elapsed < 5, (elapsed, answer)
        assert b"access-control-" not in answer.lower()


# -- 4. authentication by default --------------------------------------------------------------


def test_with_no_token_configured_a_generated_token_guards_the_api(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path) as daemon:
        token_file = daemon.config.fifo_dir / "api.token"
        anonymous = ApiClient(daemon, token="")
        for path in ("/metrics", "/healthz"):
            assert anonymous.request("GET", path)[0] == 200, path
        for path in ("/v1/cameras", "/v1/cameras/cam/snapshot.jpg", "/v1/subscriptions"):
            assert anonymous.request("GET", path)[0] == 401, path
        assert daemon.token_path == token_file
        assert token_file.stat().st_mode & 0o777 == 0o640
        assert daemon.control is not None
        with_file_token = ApiClient(daemon.control.address, token_file.read_text().strip())
        assert with_file_token.request("GET", "/v1/cameras")[0] == 200
        assert with_file_token.request("GET", "/v1/cameras/cam/snapshot.jpg")[0] == 200
    assert not token_file.exists()


# -- 5. modes, directories, NUL characters ----------------------------------------------------


def test_modes_directories_and_nul_paths_are_checked(
        server: RtspServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with daemon_of(server, tmp_path) as daemon:
        api = ApiClient(daemon)
        fifo_dir = daemon.config.fifo_dir
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "loose", "camera": "cam", "mode": "0666"})
        assert status == 400 and body["detail"].startswith("mode"), body
        assert not (fifo_dir / "loose.fifo").exists()
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "tight", "camera": "cam", "mode": "0640"})
        assert status == 201, body
        assert (fifo_dir / "tight.fifo").stat().st_mode & 0o777 == 0o640
        for missing in (fifo_dir / "absent" / "x.fifo", fifo_dir / "absent" / "deep" / "x.fifo"):
            status, body = api.json("POST", "/v1/subscriptions",
                                    {"name": "nodir", "camera": "cam", "fifo": str(missing)})
            assert (status, body["error"]) == (400, "bad_request"), body
            status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                    {"fifo": str(missing)})
            assert status in (400, 403), body
            assert not (fifo_dir / "absent").exists()
        for nul in (f"{fifo_dir}/a\u0000b.fifo", "a\u0000b"):
            status, body = api.json("POST", "/v1/subscriptions",
                                    {"name": "nul", "camera": "cam", "fifo": nul})
            assert status == 400 and body["detail"].startswith("fifo"), body
            status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo", {"fifo": nul})
            assert status == 400 and body["detail"].startswith("fifo"), body
        assert subscription_names(api) == ["tight"]
    errors = [r for r in caplog.records
              if r.name == "framebus.control" and (r.levelno >= logging.ERROR or r.exc_info)]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("group", ["a\u0000b", "no-such-group"])
def test_a_refused_group_creates_nothing_and_is_no_500(
        server: RtspServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, group: str) -> None:
    caplog.set_level(logging.INFO)
    with daemon_of(server, tmp_path) as daemon:
        api = ApiClient(daemon)
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "grp", "camera": "cam", "group": group})
        assert 400 <= status < 500, body
        assert not (daemon.config.fifo_dir / "grp.fifo").exists()  # refused: nothing made
        assert subscription_names(api) == []
    errors = [r for r in caplog.records if r.name == "framebus.control" and r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


# -- 6. caps on sizes, subscriptions and renditions -------------------------------------------


def test_no_request_gets_frames_larger_than_the_native_size(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path) as daemon:
        api = ApiClient(daemon)
        status, _, body = api.request("GET", "/v1/cameras/cam/snapshot.jpg?width=8192&height=8192")
        assert status == 200
        picture = next(av.open(io.BytesIO(body)).decode(video=0))
        assert picture.width <= NATIVE[0] and picture.height <= NATIVE[1], picture
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "huge", "camera": "cam", "format": "gray",
                                 "width": 16384})
        assert status == 201, body
        with Subscriber(body["fifo"], timeout=30) as subscriber:
            frame = subscriber.read()
        assert frame is not None
        assert (frame.header.width, frame.header.height) == NATIVE  # the aspect is kept too
        assert len(frame.payload) <= NATIVE[0] * NATIVE[1] + 4096


def test_pixel_subscription_and_rendition_caps(server: RtspServer, tmp_path: Path) -> None:
    tiny = {"url": server.url("small"), "idle_decode": "all", "max_pixels": 20000,
            "max_renditions": 1}
    with daemon_of(server, tmp_path, cameras={"tiny": tiny},
                   subscribers={"tinygray": {"camera": "tiny", "format": "gray"}},
                   max_subscriptions=2) as daemon:
        api = ApiClient(daemon)
        for width, height in ((200, 200), (8192, 3), (8192, 8192)):
            status, body = api.json("POST", "/v1/subscriptions", {
                "name": "big", "camera": "tiny", "format": "gray", "width": width,
                "height": height})
            assert (status, body["error"]) == (400, "too_large"), body
            status, _, raw = api.request(
                "GET", f"/v1/cameras/tiny/snapshot.jpg?width={width}&height={height}")
            assert status == 400 and b"too_large" in raw, raw
            status, body = api.json("POST", "/v1/cameras/tiny/snapshot-to-fifo", {
                "fifo": str(daemon.config.fifo_dir / "x.fifo"), "width": width,
                "height": height})
            assert (status, body["error"]) == (400, "too_large"), body
        status, body = api.json("POST", "/v1/subscriptions", {"name": "one", "camera": "cam"})
        assert status == 201, body
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "other", "camera": "tiny", "format": "bgr24"})
        assert (status, body["error"]) == (409, "too_many_renditions"), body
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "other", "camera": "tiny", "format": "gray",
                                 "width": 80})
        assert (status, body["error"]) == (409, "too_many_renditions"), body
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "same", "camera": "tiny", "format": "gray"})
        assert status == 201, body  # the rendition tinygray already has
        status, body = api.json("POST", "/v1/subscriptions", {"name": "third", "camera": "cam"})
        assert (status, body["error"]) == (409, "too_many_subscriptions"), body
        assert subscription_names(api) == ["one", "same", "tinygray"]


# -- 7. a stream over max_pixels ---------------------------------------------------------------


def test_a_stream_over_max_pixels_is_refused_before_decoding(
        server: RtspServer, tmp_path: Path) -> None:
    big = {"url": server.url("cam"), "idle_decode": "all", "max_pixels": 20000}
    with daemon_of(server, tmp_path, cameras={"big": big},
                   subscribers={"big-sub": {"camera": "big", "format": "gray"}}) as daemon:
        api = ApiClient(daemon)
        key = ("framebus_camera_reconnects_total", (("camera", "big"), ("reason", "too_large")))
        wait_for(lambda: metrics(daemon).get(key, 0) >= 2, 30, "two too_large refusals")
        def unsupported() -> dict[str, Any] | None:
            status, camera = api.json("GET", "/v1/cameras/big")
            assert status == 200, camera
            return camera if camera["state"] == "unsupported" else None
        camera = wait_for(unsupported, 30, "camera big unsupported")
        assert camera is not None and "max_pixels" in camera["reason"], camera
        assert f"{NATIVE[0]}x{NATIVE[1]}" in camera["reason"], camera
        assert (camera["frames_decoded"], camera["last_seq"], camera["codec"]) == (0, None, "")
        assert daemon.store.latest("big") is None
        start = api.json("GET", "/v1/cameras/cam")[1]["last_seq"]
        wait_for(lambda: api.json("GET", "/v1/cameras/cam")[1]["last_seq"] >= start + 10, 30,
                 "camera cam to stream on")
        assert api.json("GET", "/v1/cameras/cam")[1]["state"] == "streaming"
        assert api.json("GET", "/healthz")[1]["streaming"] == 1


# -- 8. the worker pool ------------------------------------------------------------------------


def test_a_full_worker_pool_answers_busy_and_leaves_status_endpoints_alone(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path, workers=1) as daemon:
        api = ApiClient(daemon)
        with stalled_request(daemon) as (_, first):
            status, headers, raw = api.request("GET", "/v1/cameras/cam/snapshot.jpg")
            assert status == 503 and b'"busy"' in raw, raw
            assert int(headers["Retry-After"]) >= 1
            assert api.json("GET", "/v1/cameras")[0] == 200
            assert api.json("GET", "/v1/subscriptions")[0] == 200
            assert ApiClient(daemon, token="").request("GET", "/metrics")[0] == 200
            assert not first, "the stalled request must still hold the worker"
        status, headers, _ = api.request("GET", "/v1/cameras/cam/snapshot.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"


# -- 9. metric labels do not grow with requests ------------------------------------------------


def test_snapshots_at_many_sizes_do_not_grow_metric_labels(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path,
                   subscribers={"configured": {"camera": "cam", "format": "gray"}}) as daemon:
        api = ApiClient(daemon)
        on_demand = ("framebus_on_demand_conversions_total", (("camera", "cam"),))
        before = metrics(daemon).get(on_demand, 0)
        widths = [64 + 8 * i for i in range(50)]
        for width in widths:
            status, _, _ = api.request("GET", f"/v1/cameras/cam/snapshot.jpg?width={width}")
            assert status == 200, width
        values = metrics(daemon)
        assert values[on_demand] - before == len(widths)
        conversions = [dict(labels) for (name, labels) in values
                       if name == "framebus_conversions_total"]
        assert all(c["camera"] == "cam" and c["format"] == "gray" and c["width"] == ""
                   for c in conversions), conversions
        assert not any(str(w) in (c["width"] for c in conversions) for w in widths)


def test_renditions_differing_only_in_quality_keep_metric_series_unique(
        server: RtspServer, tmp_path: Path) -> None:
    subscribers = {"q85": {"camera": "cam", "format": "jpeg", "width": 160},
                   "q50": {"camera": "cam", "format": "jpeg", "width": 160, "quality": 50}}
    with daemon_of(server, tmp_path, subscribers=subscribers) as daemon:
        wait_for(lambda: len(daemon.store.conversions) == 2
                 and all(daemon.store.conversions.values()), 30, "both renditions converted")
        _, _, raw = ApiClient(daemon, token="").request("GET", "/metrics")
    series = [line.rsplit(" ", 1)[0] for line in raw.decode().splitlines()
              if line.startswith("framebus_conversions_total")]
    assert len(series) == len(set(series)), series  # a duplicate sample fails the scrape


def test_quality_does_not_make_a_raw_rendition_another_one(
        server: RtspServer, tmp_path: Path) -> None:
    with daemon_of(server, tmp_path, cameras={"one": {"url": server.url("small"),
                                                      "max_renditions": 1}},
                   subscribers={"gray": {"camera": "one", "format": "gray"}}) as daemon:
        status, body = ApiClient(daemon).json("POST", "/v1/subscriptions", {
            "name": "gray-q50", "camera": "one", "format": "gray", "quality": 50})
        assert status == 201, body  # quality is for jpeg only: this is gray's rendition
