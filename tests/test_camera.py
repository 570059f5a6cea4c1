"""Camera ingest against the real RTSP server (gst-rtsp-server on loopback) and real faults."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from camerakit import GarbageServer, cameras, open_fds
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import timed, wait_for

from framebus.camera import Camera, CameraState
from framebus.store import Rendition
from framebus.wire import PixelFormat

ALL = {"idle_decode": "all"}


def measured(label: str, seconds: float) -> None:
    print(f"\nMEASURED {label}: {seconds:.2f}s")


def decoded(camera: Camera, at_least: int) -> bool:
    return camera.stats.frames_decoded >= at_least


def test_h264_and_h265_decode_with_the_right_size(rtsp_server_factory: RtspServerFactory) -> None:
    server = rtsp_server_factory([Mount("avc", width=640, height=360),
                                  Mount("hevc", codec="h265", width=320, height=240)])
    specs = {"avc": {"url": server.url("avc"), **ALL}, "hevc": {"url": server.url("hevc"), **ALL}}
    with cameras(specs) as (camera_set, store):
        avc, hevc = camera_set.cameras["avc"], camera_set.cameras["hevc"]
        wait_for(lambda: decoded(avc, 10) and decoded(hevc, 10), 20, "both cameras to decode")
        for camera, size, codec in ((avc, (640, 360), "h264"), (hevc, (320, 240), "hevc")):
            frame = store.latest(camera.name)
            assert frame is not None
            assert (frame.width, frame.height) == size
            assert camera.stats.codec == codec
            assert camera.state is CameraState.STREAMING
            bgr = store.payload(frame, Rendition(PixelFormat.BGR24))
            assert (bgr.width, bgr.height, bgr.planes[0].stride >= size[0] * 3) == (*size, True)


def test_credentials(rtsp_server_factory: RtspServerFactory,
                     caplog: pytest.LogCaptureFixture) -> None:
    secret = "Pa55-word-xyzzy"
    server = rtsp_server_factory([Mount("locked", user="viewer", password=secret)])
    url = server.url("locked")
    caplog.set_level(logging.DEBUG)
    specs = {"good": {"url": url, "username": "viewer", **ALL},
             "bad": {"url": url, "username": "viewer"}}
    with cameras(specs, passwords={"good": secret, "bad": "wrong-guess-123"}) as (camera_set, _):
        good, bad = camera_set.cameras["good"], camera_set.cameras["bad"]
        wait_for(lambda: decoded(good, 5), 20, "the camera with the right password to stream")
        wait_for(lambda: bad.state is CameraState.AUTH_FAILED, 20, "auth_failed")
        attempts = bad.stats.reconnects["auth_failed"]
        window = 3.0
        time.sleep(window)  # observing a rate: any hot loop would retry hundreds of times here
        retries = bad.stats.reconnects["auth_failed"] - attempts
        assert retries <= window / 1.0 + 1  # auth_failure backoff is 1 s in these tests
        assert bad.state in (CameraState.AUTH_FAILED, CameraState.CONNECTING)
    for text in [r.getMessage() for r in caplog.records] + [repr(good.config), repr(bad.config)]:
        assert secret not in text and "wrong-guess-123" not in text
    auth_lines = [r for r in caplog.records if "auth_failed" in r.getMessage()]
    assert len(auth_lines) == 1  # the transition is logged once, not per retry


def test_server_killed_then_restarted(rtsp_server_factory: RtspServerFactory) -> None:
    server = rtsp_server_factory([Mount("cam")])
    with cameras({"cam": {"url": server.url("cam"), **ALL}}) as (camera_set, _):
        cam = camera_set.cameras["cam"]
        wait_for(lambda: decoded(cam, 5), 20, "streaming")
        epoch = cam.stats.epoch
        server.kill()
        stall_timeout = cam.config.stall_timeout
        measured("kill: leave streaming", timed(
            lambda: cam.state is not CameraState.STREAMING, stall_timeout + 1, "leave streaming"))
        server.restart()
        cap = cam.config.backoff.max * (1 + cam.config.backoff.jitter)
        measured("kill: back to streaming after restart", timed(
            lambda: cam.state is CameraState.STREAMING, cap + 2, "streaming again"))
        assert cam.stats.epoch > epoch


def test_server_paused_is_a_silent_stall_detected_in_time(
    rtsp_server_factory: RtspServerFactory,
) -> None:
    server = rtsp_server_factory([Mount("cam")])
    with cameras({"cam": {"url": server.url("cam"), **ALL}}) as (camera_set, _):
        cam = camera_set.cameras["cam"]
        wait_for(lambda: decoded(cam, 5), 20, "streaming")
        server.pause()
        try:
            measured("SIGSTOP: leave streaming", timed(
                lambda: cam.state is not CameraState.STREAMING, cam.config.stall_timeout + 1,
                "stall detection"))
        finally:
            server.resume()
        epoch = cam.stats.epoch
        measured("SIGCONT: streaming again", timed(
            lambda: cam.state is CameraState.STREAMING and cam.stats.epoch > epoch, 20,
            "recovery"))


def test_mid_stream_size_change_gives_a_new_epoch_and_size(
    rtsp_server_factory: RtspServerFactory,
) -> None:
    server = rtsp_server_factory([Mount("cam", size_change=((320, 240), (480, 360)),
                                        seconds=1.0)])
    seen: dict[tuple[int, int], set[int]] = {}
    with cameras({"cam": {"url": server.url("cam"), **ALL}}) as (_, store):
        def record(camera: str) -> None:
            frame = store.latest(camera)
            if frame is not None:
                seen.setdefault((frame.width, frame.height), set()).add(frame.epoch)
        store.add_listener(record)
        wait_for(lambda: len(seen) == 2, 20, "both sizes")
    epochs = sorted(seen.values(), key=min)
    assert not epochs[0] & epochs[1]  # no epoch spans two sizes


def test_garbage_answering_listener_errors_without_crash_or_leak() -> None:
    threads_before, fds_before = threading.active_count(), open_fds()
    with GarbageServer() as garbage:
        fast = {"url": garbage.url, "backoff": {"initial": "50ms", "max": "100ms"}}
        with cameras({"junk": fast}) as (camera_set, _):
            junk = camera_set.cameras["junk"]
            wait_for(lambda: garbage.connections >= 20, 30, "20 connection attempts")
            assert junk.state in (CameraState.BACKOFF, CameraState.CONNECTING)
            assert junk.stats.frames_decoded == 0
            assert "banana" not in junk.reason
    wait_for(lambda: open_fds() <= fds_before, 10, "file descriptors to be released")
    wait_for(lambda: threading.active_count() <= threads_before, 10, "threads to end")


def test_one_faulty_camera_does_not_slow_the_others(rtsp_server_factory: RtspServerFactory) -> None:
    server = rtsp_server_factory([Mount(f"c{i}") for i in range(3)])
    specs = {f"c{i}": {"url": server.url(f"c{i}"), **ALL} for i in range(3)}

    def rates(camera_set: object, window: float) -> list[float]:
        cams = [camera_set.cameras[f"c{i}"] for i in range(3)]  # type: ignore[attr-defined]
        before = [c.stats.frames_decoded for c in cams]
        time.sleep(window)  # measuring a rate over a fixed window
        return [(c.stats.frames_decoded - b) / window for c, b in zip(cams, before, strict=True)]

    with GarbageServer() as garbage, cameras(specs) as (camera_set, _):
        for i in range(3):
            wait_for(lambda i=i: decoded(camera_set.cameras[f"c{i}"], 10), 20, "streaming")
        baseline = rates(camera_set, 4.0)
        faulty = Camera("faulty", camera_set.cameras["c0"].config.model_copy(
            update={"url": garbage.url}), None, camera_set.store)
        camera_set.add(faulty)
        wait_for(lambda: garbage.connections >= 2, 10, "the faulty camera to be failing")
        with_fault = rates(camera_set, 4.0)
    print(f"\nMEASURED fps without fault {baseline}, with a faulty camera {with_fault}")
    for base, now in zip(baseline, with_fault, strict=True):
        assert now >= 0.95 * base


def test_idle_camera_decodes_only_keyframes_until_someone_subscribes(
    rtsp_server_factory: RtspServerFactory,
) -> None:
    server = rtsp_server_factory([Mount("cam", gop=10)])
    with cameras({"cam": {"url": server.url("cam")}}) as (camera_set, store):
        cam = camera_set.cameras["cam"]
        wait_for(lambda: cam.stats.packets >= 60, 20, "60 packets")
        assert cam.stats.frames_decoded == cam.stats.keyframes_decoded > 0
        assert cam.stats.frames_decoded <= cam.stats.packets // 10 + 1
        epoch, reconnects = cam.stats.epoch, sum(cam.stats.reconnects.values())
        store.want("cam", Rendition(PixelFormat.GRAY))
        wait_for(lambda: cam.stats.frames_decoded - cam.stats.keyframes_decoded >= 20, 20,
                 "non-key frames to be decoded")
        assert (cam.stats.epoch, sum(cam.stats.reconnects.values())) == (epoch, reconnects)


def test_forced_reconnects_leak_no_threads_or_descriptors(
    rtsp_server_factory: RtspServerFactory,
) -> None:
    server: RtspServer = rtsp_server_factory([Mount("cam", gop=5)])  # short GOP: fast restarts
    threads_before, fds_before = threading.active_count(), open_fds()
    with cameras({"cam": {"url": server.url("cam"), **ALL}}) as (camera_set, _):
        cam = camera_set.cameras["cam"]
        for _ in range(30):  # a leak per reconnect shows at any count
            wait_for(lambda: cam.state is CameraState.STREAMING, 20, "streaming")
            cam.watchdog(float("inf"))  # as if the deadline had passed
        wait_for(lambda: cam.state is CameraState.STREAMING, 20, "streaming at the end")
        assert cam.stats.reconnects["stalled"] == 30
        wait_for(lambda: cam.abandoned_alive == 0, 20, "abandoned threads to exit")
    wait_for(lambda: threading.active_count() <= threads_before, 20, "threads to end")
    wait_for(lambda: open_fds() <= fds_before, 20, "descriptors to be released")


def test_capture_time_switches_to_the_camera_clock_once_rtcp_arrives(
    rtsp_server_factory: RtspServerFactory,
) -> None:
    server = rtsp_server_factory([Mount("cam")])
    with cameras({"cam": {"url": server.url("cam"), **ALL}}) as (_, store):
        def rtcp_frame() -> object:
            frame = store.latest("cam")
            return frame if frame is not None and frame.capture_source == 1 else None
        frame = wait_for(rtcp_frame, 20, "a frame timed by RTCP sender reports")
        age_ns = time.time_ns() - frame.capture_time_ns  # type: ignore[attr-defined]
        assert -1e9 < age_ns < 1e9  # the camera's clock, mapped to wall time, is about now


def test_a_source_without_video_is_unsupported_and_retried_slowly(tmp_path: Path) -> None:
    audio_only = tmp_path / "tone.wav"
    with av.open(str(audio_only), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with cameras({"mic": {"url": str(audio_only)}}) as (camera_set, _):
        mic = camera_set.cameras["mic"]
        wait_for(lambda: mic.state is CameraState.UNSUPPORTED, 20, "unsupported")
        assert mic.reason == "no video stream"
        assert mic.stats.reconnects["unsupported"] == 1  # waits auth_failure (1 s) to retry


def test_a_host_that_does_not_resolve_is_named_not_an_io_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg says "Input/output error" for a mistyped host; the camera's reason says what it
    is. (The lookup is faked: tests use no DNS.)"""
    import errno
    import socket

    from framebus.failures import unresolvable

    def no_such_host(host: str, *_: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    eio = OSError(errno.EIO, "Input/output error")
    assert unresolvable("rtsp://camra1:554/x", eio) == (
        "cannot resolve host 'camra1': Name or service not known")
    assert unresolvable("rtsp://camra1/x", ConnectionRefusedError(errno.ECONNREFUSED, "x")) is None
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_: [])
    assert unresolvable("rtsp://resolves/x", eio) is None  # then it is some other I/O error
