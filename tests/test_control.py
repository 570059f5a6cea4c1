"""The control plane against a running daemon, the real RTSP server and real FIFOs."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from apikit import ApiClient
from fanoutkit import ReaderProcess, running_daemon
from prometheus_client.parser import text_string_to_metric_families
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus.client import FrameRequestError, request_frame
from framebus.config import SubscriberConfig
from framebus.daemon import Daemon
from framebus.errors import ConfigError
from framebus.outbox import RATE_LIMIT, SLOW_READER, SUPERSEDED

HTTP = {"listen": "127.0.0.1:0", "wait_timeout": "1s"}


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=640, height=360, gop=10)])


@pytest.fixture
def daemon(server: RtspServer, tmp_path: Path) -> Iterator[Daemon]:
    fifo_dir = tmp_path / "fifos"
    with running_daemon({"cam": {"url": server.url("cam"), "idle_decode": "all"}},
                        {"configured": {"camera": "cam", "format": "gray"}}, fifo_dir,
                        http=HTTP) as running:
        wait_for(lambda: running.store.latest("cam") is not None, 20, "a first frame")
        yield running


def test_camera_endpoints(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    status, body = api.json("GET", "/v1/cameras")
    assert status == 200 and [c["name"] for c in body["cameras"]] == ["cam"]
    status, cam = api.json("GET", "/v1/cameras/cam")
    assert status == 200
    assert (cam["state"], cam["width"], cam["height"], cam["codec"]) == (
        "streaming", 640, 360, "h264")
    assert cam["subscribers"] == ["configured"] and cam["last_seq"] >= 1
    assert api.json("GET", "/v1/cameras/nope") == (
        404, {"error": "unknown_camera", "detail": "no camera named 'nope'"})


def test_snapshots(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    status, headers, body = api.request("GET", "/v1/cameras/cam/snapshot.jpg?width=320")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    picture = next(av.open(io.BytesIO(body)).decode(video=0))
    assert (picture.width, picture.height) == (320, 180)
    seq = int(headers["X-Framebus-Seq"])
    assert int(headers["Age"]) >= 0 and int(headers["X-Framebus-Capture-Time-Ns"]) > 0
    status, headers, body = api.request("GET", f"/v1/cameras/cam/snapshot.png?newer_than={seq}")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
    assert int(headers["X-Framebus-Seq"]) > seq
    status, _, body = api.request("GET", "/v1/cameras/cam/snapshot.jpg?newer_than=99999999")
    assert status == 503 and b"no frame newer than 99999999" in body
    status, _, body = api.request("GET", "/v1/cameras/cam/snapshot.jpg?max_age=0.000001")
    assert status == 503 and b"frame_too_old" in body
    assert api.request("GET", "/v1/cameras/cam/snapshot.jpg?width=abc")[0] == 400
    for bad in ("nan", "inf", "-1", "soon"):  # nan would compare false and always pass
        status, _, body = api.request("GET", f"/v1/cameras/cam/snapshot.jpg?max_age={bad}")
        assert status == 400 and b"max_age" in body, (bad, status, body)


def test_frame_request_through_a_private_fifo(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    latest = daemon.store.latest("cam")
    assert latest is not None
    frame = request_frame("cam", url=api.url, fifo_dir=daemon.config.fifo_dir, format="rgb24",
                          width=160, timeout=5, token=api.token)
    assert frame.array.shape == (90, 160, 3) and frame.seq >= latest.seq
    assert not [p for p in daemon.config.fifo_dir.iterdir() if p.name.startswith("request-")]
    out = daemon.config.fifo_dir.parent / "shot.png"
    cli = subprocess.run([sys.executable, "-m", "framebus", "snapshot", "cam", "--fifo",
                          "--url", api.url, "--fifo-dir", str(daemon.config.fifo_dir),
                          "--token-file", str(daemon.token_path), "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert next(av.open(str(out)).decode(video=0)).width == 640


def hostile(tmp_path: Path, fifo_dir: Path) -> dict[str, tuple[Path, Path | None]]:
    """name -> (path to request, file that must stay untouched)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "elsewhere.fifo")
    precious = fifo_dir / "precious.txt"
    precious.write_text("keep")
    (fifo_dir / "to-etc.fifo").symlink_to("/etc/hostname")
    os.mkfifo(fifo_dir / "real.fifo")
    (fifo_dir / "alias.fifo").symlink_to(fifo_dir / "real.fifo")
    return {
        "dotdot": (fifo_dir / ".." / "outside" / "elsewhere.fifo", None),
        "symlink into /etc": (fifo_dir / "to-etc.fifo", Path("/etc/hostname")),
        "regular file": (precious, precious),
        "fifo outside": (outside / "elsewhere.fifo", None),
        "device": (Path("/dev/null"), None),
        "relative": (Path("fifos/real.fifo"), None),
        "symlink to a fifo": (fifo_dir / "alias.fifo", None),
    }


def test_hostile_fifo_paths_are_refused_and_untouched(daemon: Daemon, tmp_path: Path) -> None:
    api = ApiClient(daemon)
    cases = hostile(tmp_path, daemon.config.fifo_dir)
    before = {name: (kept.read_bytes(), kept.stat().st_mtime_ns)
              for name, (_, kept) in cases.items() if kept is not None}
    for name, (path, _) in cases.items():
        status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo", {"fifo": str(path)})
        assert (status, body["error"]) == (403, "fifo_refused"), name
        status, body = api.json("POST", "/v1/subscriptions",
                                {"name": "h" + str(abs(hash(name)) % 10**6), "camera": "cam",
                                 "fifo": str(path)})
        assert status == 403, (name, body)
    for name, (_, kept) in cases.items():
        if kept is not None:
            assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before[name], name
    status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                            {"fifo": str(daemon.config.fifo_dir / "real.fifo")})
    assert (status, body["error"]) == (409, "no_reader")


def test_a_reader_that_does_not_drain_is_cut_off(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    fifo = daemon.config.fifo_dir / "stuck.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, but never read: 691 KB > the pipe
    try:
        status, body = api.json("POST", "/v1/cameras/cam/snapshot-to-fifo",
                                {"fifo": str(fifo), "format": "bgr24", "timeout": 0.5})
        assert (status, body["error"]) == (504, "reader_too_slow")
        assert os.read(fd, 65536)  # a partial frame: the reader can tell by the length prefix
    finally:
        os.close(fd)
    assert api.json("GET", "/v1/cameras/cam")[0] == 200  # the daemon carries on


def test_subscriptions(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    status, created = api.json("POST", "/v1/subscriptions",
                               {"name": "dyn", "camera": "cam", "format": "gray", "width": 160})
    assert status == 201 and created["source"] == "api"
    reader = ReaderProcess(Path(created["fifo"]), "--count", "3")
    assert reader.finish(30) == 0
    assert {tuple(f["shape"]) for f in reader.frames} == {(90, 160)}
    status, listing = api.json("GET", "/v1/subscriptions")
    assert [s["name"] for s in listing["subscriptions"]] == ["configured", "dyn"]
    assert api.json("POST", "/v1/subscriptions", {"name": "dyn", "camera": "cam"})[0] == 409
    assert api.json("POST", "/v1/subscriptions", {"name": "x", "camera": "nope"})[0] == 404
    status, body = api.json("POST", "/v1/subscriptions", {"name": "y", "camera": "cam",
                                                          "format": "webp"})
    assert status == 400 and body["detail"].startswith("format:")
    assert api.json("DELETE", "/v1/subscriptions/configured")[0] == 409
    assert api.json("DELETE", "/v1/subscriptions/dyn") == (200, {"deleted": "dyn"})
    assert api.json("GET", "/v1/subscriptions/dyn")[0] == 404
    assert not Path(created["fifo"]).exists()  # the daemon made it, the daemon removes it


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("GET", "/v1/nothing", None, 404, "not_found"),
    ("DELETE", "/v1/cameras", None, 405, "method_not_allowed"),
    ("POST", "/v1/subscriptions", b"{not json", 400, "bad_json"),
    ("POST", "/v1/subscriptions", b"[1, 2]", 400, "bad_json"),
    ("POST", "/v1/subscriptions", b"x" * 70000, 413, "body_too_large"),
    ("POST", "/v1/cameras/cam/snapshot-to-fifo", b'{"fifo": "/x", "colour": 1}', 400,
     "bad_request"),
    ("GET", "/v1/cameras/bad%20name", None, 404, "not_found"),
])
def test_bad_requests_get_a_4xx_with_a_json_reason(
    daemon: Daemon, method: str, path: str, body: bytes | None, status: int, error: str
) -> None:
    got_status, headers, raw = ApiClient(daemon).request(
        method, path, body, {"Content-Type": "application/json"} if body is not None else {})
    assert got_status == status
    assert headers["Content-Type"] == "application/json"
    import json
    assert json.loads(raw)["error"] == error


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_show_exact_counts_after_known_frames_and_drops(
    server: RtspServer, tmp_path: Path
) -> None:
    subs: dict[str, dict[str, Any]] = {"all": {"camera": "cam", "format": "gray"},
                                       "limited": {"camera": "cam", "format": "gray",
                                                   "max_fps": 5}}
    with running_daemon({"cam": {"url": server.url("cam"), "idle_decode": "all"}}, subs,
                        tmp_path, http=HTTP) as running:
        readers = {name: ReaderProcess(tmp_path / f"{name}.fifo") for name in subs}
        readers["all"].wait_frames(60)
        server.pause()  # no new frames: the counts settle
        try:
            def settled() -> bool:
                latest = running.store.latest("cam")
                for name, reader in readers.items():
                    outbox = running.fanout.subscribers[name].outbox
                    last = outbox.last_completed
                    if outbox.in_flight or last is None or not reader.frames or (
                        reader.frames[-1]["seq"] != last.seq):
                        return False
                return latest is not None and readers["all"].frames[-1]["seq"] == latest.seq
            def snapshot() -> tuple[bytes, Any, int, dict[str, list[dict[str, Any]]]] | None:
                # frames buffered before the pause may still trickle out: take the scrape and
                # the readers' view together, and only if nothing moved in between
                if not settled():
                    return None
                decoded = running.cameras.cameras["cam"].stats.frames_decoded
                latest = running.store.latest("cam")
                raw = ApiClient(running).request("GET", "/metrics")[2]
                frames = {name: list(reader.frames) for name, reader in readers.items()}
                unchanged = decoded == running.cameras.cameras["cam"].stats.frames_decoded
                return (raw, latest, decoded, frames) if unchanged and settled() else None
            raw, latest, decoded, frames = wait_for(snapshot, 20, "the subscribers to settle")
        finally:
            server.resume()
        values = metric_values(raw.decode())
        for reader in readers.values():
            reader.kill()
    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]
    assert value("framebus_subscriber_frames_sent_total", subscriber="all",
                 camera="cam") == len(frames["all"])
    assert value("framebus_subscriber_frames_sent_total", subscriber="limited",
                 camera="cam") == len(frames["limited"])
    limited_drops = sum(value("framebus_subscriber_frames_dropped_total", subscriber="limited",
                              camera="cam", reason=r)
                        for r in (RATE_LIMIT, SLOW_READER, SUPERSEDED)
                        if ("framebus_subscriber_frames_dropped_total",
                            (("camera", "cam"), ("reason", r), ("subscriber", "limited")))
                        in values)
    # every drop is a gap the reader saw, or a frame after its last one (rate-limited at the end)
    tail = latest.seq - frames["limited"][-1]["seq"]
    assert limited_drops == sum(f["missed"] for f in frames["limited"]) + tail
    assert limited_drops > 0
    assert value("framebus_camera_frames_decoded_total", camera="cam") == decoded
    assert value("framebus_subscriber_latency_seconds_count", subscriber="all",
                 camera="cam") == len(frames["all"])
    assert value("framebus_subscriber_connected", subscriber="all", camera="cam") == 1.0
    assert ("process_resident_memory_bytes", ()) in values


def test_promtool_finds_nothing_to_complain_about(daemon: Daemon) -> None:
    _, _, raw = ApiClient(daemon).request("GET", "/metrics")
    lint = subprocess.run(["promtool", "check", "metrics"], input=raw, capture_output=True,
                          timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr)


def test_bearer_token(server: RtspServer, tmp_path: Path) -> None:
    with running_daemon({"cam": {"url": server.url("cam")}}, {}, tmp_path,
                        http={**HTTP, "token": "t0ken-value"}) as running:
        assert ApiClient(running, token="").request("GET", "/v1/cameras")[0] == 401
        assert ApiClient(running, token="wrong").request("GET", "/v1/cameras")[0] == 401
        assert ApiClient(running, token="t0ken-value").request("GET", "/v1/cameras")[0] == 200
        assert ApiClient(running, token="").request("GET", "/metrics")[0] == 200  # open


def test_frame_request_errors_come_back_as_exceptions(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    with pytest.raises(FrameRequestError) as info:
        request_frame("nope", url=api.url, fifo_dir=daemon.config.fifo_dir, timeout=2,
                      token=api.token)
    assert info.value.status == 404 and info.value.error == "unknown_camera"


def test_a_frame_request_waits_no_longer_than_its_own_timeout(
        server: RtspServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera with no frame yet: the daemon answers 503 within the caller's timeout (1 s),
    not its own wait_timeout (30 s), and the client raises that reason, not a TimeoutError."""
    thread_errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    dark_url = server.url("cam").replace("/cam", "/no-such-mount")
    with running_daemon({"dark": {"url": dark_url}}, {}, tmp_path / "fifos",
                        http={**HTTP, "wait_timeout": "30s"}) as running:
        with pytest.raises(FrameRequestError) as info:
            api = ApiClient(running)
            request_frame("dark", url=api.url, fifo_dir=running.config.fifo_dir, timeout=1,
                          token=api.token)
        assert (info.value.status, info.value.error) == (503, "no_frame")
        assert "within 1s" in info.value.detail
        assert not list(running.config.fifo_dir.glob("request-*"))
    assert thread_errors == []


def test_a_refused_request_body_is_never_run_as_a_second_request(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    request = (b"POST /v1/nothing HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
               % len(smuggled)) + smuggled
    with socket.create_connection((api.host, api.port), timeout=5) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)  # the server answers what it has, then closes
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 ") == 1 and b"404 Not Found" in answer
    assert b"framebus_camera" not in answer


@pytest.mark.parametrize("method", ["HEAD", "PUT", "PATCH", "OPTIONS"])
def test_other_methods_get_a_json_405(daemon: Daemon, method: str) -> None:
    status, headers, raw = ApiClient(daemon).request(method, "/v1/cameras")
    assert status == 405 and headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert b"method_not_allowed" in raw


def test_unauthorised_answers_name_the_scheme(server: RtspServer, tmp_path: Path) -> None:
    with running_daemon({"cam": {"url": server.url("cam")}}, {}, tmp_path,
                        http={**HTTP, "token": "abc"}) as running:
        status, headers, _ = ApiClient(running, token="").request("GET", "/v1/cameras")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")


def test_an_uncreatable_fifo_stops_the_start_and_at_reload_disturbs_nobody(
        server: RtspServer, tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifos"
    fifo_dir.mkdir()
    (fifo_dir / "plain").write_text("a file where a directory should be")
    camera = {"url": server.url("cam"), "idle_decode": "all"}
    bad = {"camera": "cam", "fifo": str(fifo_dir / "plain" / "x.fifo")}
    good = {"camera": "cam", "format": "gray"}
    with pytest.raises(ConfigError) as refused, running_daemon(
            {"cam": camera}, {"bad": bad, "good": good}, fifo_dir, http=HTTP):
        pass
    assert str(refused.value).startswith("subscribers.bad.fifo: ")
    assert "x.fifo" in str(refused.value)
    with running_daemon({"cam": camera}, {"good": good}, fifo_dir, http=HTTP) as running:
        config = running.config.model_copy(update={"subscribers": {
            **running.config.subscribers, "bad": SubscriberConfig.model_validate(bad)}})
        running.reconcile(config, running.passwords)  # what a reload does
        assert "x.fifo: cannot" in running.subscriber_errors["bad"]
        reader = ReaderProcess(fifo_dir / "good.fifo", "--count", "2")
        assert reader.finish(30) == 0
        status, body = ApiClient(running).json("POST", "/v1/subscriptions", {
            "name": "dyn", "camera": "cam", "fifo": str(fifo_dir / "plain" / "y.fifo")})
        assert (status, body["error"]) == (400, "bad_request")  # the API makes no directory
        assert "not an existing directory" in body["detail"]


def test_api_modes_are_octal_strings(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    status, body = api.json("POST", "/v1/subscriptions", {"name": "m1", "camera": "cam",
                                                          "mode": 440})
    assert status == 400 and body["detail"].startswith("mode:")
    status, body = api.json("POST", "/v1/subscriptions", {"name": "m2", "camera": "cam",
                                                          "mode": "0640"})
    assert status == 201
    assert (daemon.config.fifo_dir / "m2.fifo").stat().st_mode & 0o777 == 0o640


def test_a_lavfi_source_streams(tmp_path: Path) -> None:
    with running_daemon({"gen": {"url": "lavfi:testsrc2=size=160x120:rate=25,realtime",
                                 "idle_decode": "all"}}, {}, tmp_path) as running:
        wait_for(lambda: running.cameras.cameras["gen"].stats.frames_decoded >= 10, 20,
                 "frames from the lavfi source")
        frame = running.store.latest("gen")
        assert frame is not None and (frame.width, frame.height) == (160, 120)


def test_a_request_target_that_is_no_url_is_a_400(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    with socket.create_connection((api.host, api.port), timeout=10) as conn:
        conn.sendall(b"GET http://[x/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in answer, answer
