"""The RTSP test server fixture, exercised with PyAV as the client (as framebus will use it).

These tests check the fixture other tests rely on: codecs and sizes, real-time pacing,
Basic authentication, resolution changes, several clients, fault injection (SIGKILL,
SIGSTOP/SIGCONT, restart on the same port) and the cost of 16 mounts. The last two run under
`make soak` only, to keep `make test` within its 10 minutes. Every wait has a deadline;
PyAV's own I/O timeouts bound every blocking call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import av.error
import pytest
from rtspserver import Mount, RtspServer, RtspServerFactory

from framebus.testsrc.media import read_counter

FPS = 25
USER, PASSWORD = "viewer", "s3cret:pa ss"
OPEN_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}
# libavformat buffers what arrives while it probes the stream in av.open(); frames decoded
# within this long after the first one are that backlog, not a measure of the pacing.
PROBE_BACKLOG_S = 0.4


def open_rtsp(url: str) -> av.container.InputContainer:
    """Open an RTSP URL the way framebus does (TCP interleaved, 5 s I/O timeouts)."""
    return av.open(url, options=OPEN_OPTIONS, timeout=(5.0, 5.0))


@dataclass
class Reading:
    """What one client saw: arrival times, sizes and counters of decoded frames."""

    times: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    counters: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def rate(self, window: float) -> float:
        """Frames per second over ``window`` seconds, after the probe backlog."""
        assert self.times, "no frames"
        start = self.times[0] + PROBE_BACKLOG_S
        inside = [t for t in self.times if start <= t <= start + window]
        assert len(inside) >= 2, f"too few frames to measure a rate: {len(inside)}"
        return (len(inside) - 1) / (inside[-1] - inside[0])

    def gaps(self, longer_than: float) -> list[float]:
        """Inter-frame gaps longer than ``longer_than`` seconds."""
        return [
            b - a for a, b in zip(self.times, self.times[1:], strict=False) if b - a > longer_than
        ]


def read(
    url: str,
    seconds: float,
    *,
    decode: bool = True,
    until: threading.Event | None = None,
    stop_when: tuple[tuple[int, int], ...] = (),
    into: Reading | None = None,
) -> Reading:
    """Read ``url`` for ``seconds`` after it opened (or until ``stop_when`` sizes were all seen).

    With ``decode=False`` only packets are demuxed (cheap: for measuring the server).
    Errors are captured in :attr:`Reading.error` so threads can report them. ``into`` is
    filled as frames arrive (for watching a reader thread).
    """
    reading = into if into is not None else Reading()
    try:
        with open_rtsp(url) as container:
            opened = time.monotonic()
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                now = time.monotonic()
                if decode:
                    for frame in packet.decode():
                        reading.times.append(time.monotonic())
                        reading.sizes.append((frame.width, frame.height))
                        reading.counters.append(read_counter(frame.to_ndarray(format="gray")))
                elif packet.size:
                    reading.times.append(now)
                if now - opened >= seconds or (until is not None and until.is_set()):
                    break
                if stop_when and set(stop_when) <= set(reading.sizes):
                    break
    except (av.error.FFmpegError, OSError) as exc:
        reading.error = exc
    return reading


def read_in_thread(url: str, seconds: float, **kwargs: object) -> tuple[threading.Thread, Reading]:
    """Start :func:`read` in a daemon thread; return the thread and its (filling) result."""
    result = Reading()

    def run() -> None:
        read(url, seconds, into=result, **kwargs)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def join(thread: threading.Thread, timeout: float) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), f"client thread still running after {timeout} s"


@pytest.fixture(scope="module")
def server() -> Iterator[RtspServer]:
    mounts = [
        Mount("h264", codec="h264", fps=FPS),
        Mount("h265", codec="h265", fps=FPS),
        Mount("private", codec="h264", fps=FPS, user=USER, password=PASSWORD),
        Mount("resize264", codec="h264", fps=FPS, size_change=((320, 240), (480, 360))),
        Mount("resize265", codec="h265", fps=FPS, size_change=((320, 240), (480, 360))),
    ]
    with RtspServer(mounts) as running:
        yield running


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_stream_decodes_at_size_and_rate(server: RtspServer, codec: str) -> None:
    reading = read(server.url(codec), seconds=2.0 + PROBE_BACKLOG_S)
    assert reading.error is None, reading.error
    assert set(reading.sizes) == {(640, 360)}
    rate = reading.rate(window=2.0)
    assert FPS * 0.8 <= rate <= FPS * 1.2, f"{codec}: {rate:.1f} fps, expected ~{FPS}"
    # The clip loops: the counter drawn in the picture goes 0..49 and starts again.
    assert all(0 <= c < 50 for c in reading.counters), reading.counters


def test_auth_rejects_missing_and_wrong_credentials(server: RtspServer) -> None:
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(server.url("private"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(server.url("private", user=USER, password="wrong"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(server.url("private", user="nobody", password=PASSWORD))


def test_auth_accepts_right_credentials(server: RtspServer) -> None:
    with open_rtsp(server.auth_url("private")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            assert (frame.width, frame.height) == (640, 360)
            if index == 4:
                break
        # While the shared media exists, an anonymous client is still refused.
        with pytest.raises(av.error.HTTPUnauthorizedError):
            open_rtsp(server.url("private"))
    # Credentials must not leak into the server's log.
    assert PASSWORD not in server.stderr_text()


def test_open_mounts_need_no_credentials_when_auth_is_on(server: RtspServer) -> None:
    # The server has an auth mount, so RTSPAuth is active; h264 must stay open (checked by
    # the other tests) and must also accept a client that sends credentials anyway.
    reading = read(server.url("h264", user=USER, password=PASSWORD), seconds=0.5)
    assert reading.error is None, reading.error
    assert reading.sizes


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_size_change_mount_produces_both_sizes(server: RtspServer, codec: str) -> None:
    sizes = ((320, 240), (480, 360))
    reading = read(server.url(f"resize{codec[1:]}"), seconds=6.0, stop_when=sizes)
    assert reading.error is None, reading.error
    assert set(reading.sizes) == set(sizes), f"saw {sorted(set(reading.sizes))}"


def test_two_clients_share_a_mount(server: RtspServer) -> None:
    first, first_result = read_in_thread(server.url("h264"), 3.0)
    second, second_result = read_in_thread(server.url("h264"), 3.0)
    join(first, 15)
    join(second, 15)
    for result in (first_result, second_result):
        assert result.error is None, result.error
        assert len(result.times) >= 40, len(result.times)
        assert not result.gaps(0.5), result.gaps(0.5)


@pytest.mark.soak  # 10 s; test_faults_camera pauses and restarts the server in make test
def test_pause_resume_restart_on_same_port(rtsp_server_factory: RtspServerFactory) -> None:
    server = rtsp_server_factory([Mount("cam", fps=FPS)])
    port = server.port

    # SIGSTOP for 1.5 s: the client sees a gap, then frames at the normal rate again
    # (no burst of the frames it missed).
    stop_reading = threading.Event()
    thread, result = read_in_thread(server.url("cam"), 30.0, until=stop_reading)
    deadline = time.monotonic() + 10
    while len(result.times) < 35 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert len(result.times) >= 35, result.error
    server.pause()
    paused_at = time.monotonic()
    while time.monotonic() - paused_at < 1.5:
        time.sleep(0.05)
    server.resume()
    resumed_at = time.monotonic()
    deadline = resumed_at + 10
    while time.monotonic() < deadline and not [t for t in result.times if t > resumed_at + 1.5]:
        time.sleep(0.02)
    stop_reading.set()
    join(thread, 10)
    assert result.error is None, result.error
    assert max(result.gaps(0.5), default=0.0) >= 1.2, result.gaps(0.5)
    after = [t for t in result.times if resumed_at + 0.3 <= t <= resumed_at + 1.5]
    assert len(after) <= 1.2 * 1.2 * FPS + 2, f"burst after SIGCONT: {len(after)} frames"

    # SIGKILL while a client is connected, then restart on the same port.
    thread, result = read_in_thread(server.url("cam"), 30.0)
    deadline = time.monotonic() + 10
    while not result.times and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert result.times, result.error
    server.kill()
    join(thread, 10)  # the client sees EOF or an error, promptly
    server.restart()
    assert server.port == port
    reading = read(server.url("cam"), seconds=1.0)
    assert reading.error is None, reading.error
    assert len(reading.times) >= 10

    # A graceful stop exits with status 0, and a restart still works after it.
    assert server.stop() == 0
    server.restart()
    assert server.port == port
    reading = read(server.url("cam"), seconds=0.3)
    assert reading.error is None, reading.error
    assert reading.times


@pytest.mark.soak  # a cost figure of the fixture, not a check of framebus: make soak
def test_sixteen_mounts_cpu(
    rtsp_server_factory: RtspServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    mounts = [Mount(f"cam{i:02d}", width=640, height=360, fps=FPS) for i in range(16)]
    server = rtsp_server_factory(mounts)
    window = 5.0
    stop = threading.Event()
    clients = [read_in_thread(server.url(m.name), 30.0, decode=False, until=stop) for m in mounts]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(r.times or r.error for _, r in clients):
        time.sleep(0.05)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    while time.monotonic() - t0 < window:
        time.sleep(0.1)
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    stop.set()
    for thread, _ in clients:
        join(thread, 15)
    for _, result in clients:
        assert result.error is None, result.error
        assert result.times
    per_mount_fps = [len([t for t in r.times if t0 <= t <= t1]) / (t1 - t0) for _, r in clients]
    cpu_percent = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    with capsys.disabled():
        print(
            f"\n[rtsp_server] 16 mounts 640x360@{FPS}, 16 TCP clients: server CPU "
            f"{cpu_percent:.1f}% of one core over {t1 - t0:.1f} s "
            f"({os.cpu_count()} cores); per-mount packet rate "
            f"min {min(per_mount_fps):.1f} / max {max(per_mount_fps):.1f} fps"
        )
    # Functional sanity only (not a performance assertion): every mount kept streaming.
    assert min(per_mount_fps) > FPS * 0.5, per_mount_fps
