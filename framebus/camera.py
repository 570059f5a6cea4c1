"""One decoder thread per camera: open, demux, decode, publish, reconnect, and a stall watchdog.

Invariants:

* A camera's trouble stays in its own thread: nothing here holds a lock another camera needs.
* Only the current *generation* of a camera's thread may publish. The watchdog does not trust
  PyAV's own timeouts (an open or read can hang): a thread past its deadline is abandoned, a new
  generation starts, and the old thread exits on its own when its call returns, publishing
  nothing. ``abandoned_alive`` counts such threads, so a leak would be visible.
* Credentials are inserted into the URL only for ``av.open``; logs, states and errors use the
  redacted URL and the error's class and errno text, never FFmpeg's message with the URL in it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from urllib.parse import urlsplit

import av
import av.error
from pydantic import SecretStr

from framebus.backoff import Backoff, BackoffPolicy
from framebus.config import CameraConfig
from framebus.errors import FramebusError
from framebus.failures import describe_error, failure_reason, human_reason
from framebus.hwdecode.choice import Choice, HardwareRequired, choose, decoder_for, on_device
from framebus.hwdecode.state import DecodingState, DeviceFailed
from framebus.opening import decoder_options, open_options
from framebus.remote.settings import RemoteConfig
from framebus.store import LatestFrameStore, StoredFrame
from framebus.urls import redact_url, url_with_credentials
from framebus.wire import CaptureSource, FrameHeader, StreamState

log = logging.getLogger("framebus.camera")


class CameraState(StrEnum):
    """Where a camera is in its life cycle."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth_failed"
    UNSUPPORTED = "unsupported"
    STOPPED = "stopped"


# what a camera state means to a subscriber (PROTOCOL.md STATE messages)
_WIRE_STATE = {
    CameraState.CONNECTING: StreamState.RECONNECTING,
    CameraState.STREAMING: StreamState.STREAMING,
    CameraState.STALLED: StreamState.RECONNECTING,
    CameraState.BACKOFF: StreamState.RECONNECTING,
    CameraState.AUTH_FAILED: StreamState.DOWN,
    CameraState.UNSUPPORTED: StreamState.DOWN,
    CameraState.STOPPED: StreamState.DOWN,
}
QUIET_MIN_S = 1.0  # a streaming camera without a frame for this long (or 3 intervals) is idle


class _Abandoned(Exception):
    """Raised inside an abandoned thread to unwind it quietly."""


class _Unsupported(Exception):
    """The source opened but has nothing we can decode."""


class _TooLarge(_Unsupported):
    """The stream declares more pixels than the camera's ``max_pixels``."""


@dataclass
class CameraStats:
    """Plain counters the decoder thread increments; metrics read them at scrape time."""

    frames_decoded: int = 0
    keyframes_decoded: int = 0
    packets: int = 0
    input_bytes: int = 0  # sum of the demuxed packets' sizes (the compressed stream)
    decode_errors: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    epoch: int = 0
    width: int = 0
    height: int = 0
    codec: str = ""
    declared_fps: float = 0.0  # the stream's declared frame rate; 0 when it declares none
    last_frame_mono: float = 0.0
    state_since_mono: float = 0.0
    frame_interval: float = 0.0  # smoothed seconds between decoded frames

    @property
    def fps(self) -> float:
        """Decoded frames per second, smoothed; 0 when stalled for more than a second."""
        if not self.frame_interval or time.monotonic() - self.last_frame_mono > 1.0 + (
            2 * self.frame_interval
        ):
            return 0.0
        return 1.0 / self.frame_interval


class Camera:
    """A camera's decoder thread, its state machine and its watchdog hooks."""

    def __init__(
        self,
        name: str,
        config: CameraConfig,
        password: SecretStr | None,
        store: LatestFrameStore,
        rng: random.Random | None = None,
        remote: RemoteConfig | None = None,
    ) -> None:
        self.name = name
        self.remote = remote  # how a zenoh: source reaches the network
        self.config = config
        self.store = store
        self.stats = CameraStats()
        self.decoding = DecodingState(name, config.hwaccel)  # hardware or software, and why
        self.state = CameraState.STOPPED
        self.reason = ""
        self._abandoned: set[int] = set()  # generations still running after being abandoned
        self._open_url = url_with_credentials(config.url, config.username, password)
        self._password = password
        b = config.backoff
        self._backoff = Backoff(
            BackoffPolicy(b.initial, b.max, 2.0, b.jitter, b.reset_after, b.auth_failure),
            rng or random.Random(),
        )
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = float("inf")  # watchdog: the current phase must make progress by then
        self._lock = threading.Lock()
        self._last_logged: tuple[CameraState, str] | None = None
        self._quiet = False  # subscribers were told it is idle (no frame for a while)

    # -- life cycle (supervisor thread) ---------------------------------------------------

    def start(self) -> None:
        """Start (or restart) the decoder thread as a new generation."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._stop.clear()
            self._deadline = float("inf")
            self._thread = threading.Thread(
                target=self._run, args=(generation,), name=f"camera-{self.name}", daemon=True
            )
            self._thread.start()

    def halt(self) -> threading.Thread | None:
        """Ask the thread to end, without waiting; returns it."""
        self._stop.set()
        with self._lock:
            self._generation += 1  # whatever is running may no longer publish
            return self._thread

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end; a thread stuck in PyAV is abandoned after ``timeout``."""
        thread = self.halt()
        if thread is not None:
            thread.join(timeout)
        self._set_state(CameraState.STOPPED, "stopped")

    def watchdog(self, now: float) -> bool:
        """Supervisor tick: restart a thread that missed its deadline; True if it did."""
        if self._stop.is_set():
            return False
        if now <= self._deadline:
            self._check_quiet(now)
            return False
        if self.state is CameraState.STREAMING:
            self._set_state(CameraState.STALLED, f"no frame for {self.config.stall_timeout:g}s")
            self.stats.reconnects["stalled"] += 1
        else:
            self.stats.reconnects["hung"] += 1
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._abandoned.add(self._generation)
        self.start()  # the old generation notices it was abandoned when PyAV returns
        return True

    def _check_quiet(self, now: float) -> None:
        """Tell subscribers a streaming camera went quiet, well before the stall timeout."""
        stats = self.stats
        quiet_after = max(QUIET_MIN_S, 3 * stats.frame_interval)
        if (self.state is CameraState.STREAMING and not self._quiet and stats.last_frame_mono
                and now - stats.last_frame_mono > quiet_after):
            self._quiet = True
            self.store.set_state(self.name, StreamState.IDLE,
                                 f"no frame for {quiet_after:.1f}s", stats.epoch)

    @property
    def idle(self) -> bool:
        """True while the camera streams but decodes keyframes only, because nobody wants its
        frames (``idle_decode: keyframes``): its fps is then the keyframe rate."""
        return self.state is CameraState.STREAMING and self._decode_keyframes_only()

    def _decode_keyframes_only(self) -> bool:
        return self.config.idle_decode == "keyframes" and not self.store.is_wanted(self.name)

    @property
    def abandoned_alive(self) -> int:
        """Abandoned decoder threads that have not returned from PyAV yet."""
        return len(self._abandoned)

    # -- the decoder thread ---------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _run(self, generation: int) -> None:
        try:
            while self._current(generation):
                delay = self._session(generation)
                if delay > 0 and self._current(generation):
                    self._deadline = float("inf")
                    self._stop.wait(delay)
        except _Abandoned:
            pass
        finally:
            self._abandoned.discard(generation)

    def _session(self, generation: int) -> float:
        """One connect-and-stream attempt; returns the delay before the next one."""
        cfg = self.config
        if not (self._is_file() and self.state is CameraState.STREAMING):
            self._set_state(CameraState.CONNECTING, "connecting")  # a file loop stays streaming
        self._deadline = time.monotonic() + cfg.open_timeout + 1.0
        container = None
        opening = time.monotonic()
        opened = False
        try:
            # PyAV's read timeout sits past the stall deadline on purpose: when it interrupts a
            # read, the RTSP demuxer hands out a stale buffered frame, which would hide the
            # stall from the watchdog. The watchdog detects; this only unblocks the thread.
            if self.config.url.startswith("zenoh:"):
                return self._remote(generation)
            # the device opens first: its errors are not the camera's
            choice = choose(cfg.decoding, broken=self.decoding.broken())
            self.decoding.chose(choice)
            lavfi = self._open_url.startswith("lavfi:")  # an FFmpeg filter graph as a source
            container = av.open(self._open_url.removeprefix("lavfi:"),
                                options=open_options(cfg),
                                format="lavfi" if lavfi else None,
                                timeout=(cfg.open_timeout, cfg.stall_timeout + cfg.read_timeout),
                                hwaccel=choice.hwaccel())
            opened = True
            if not self._current(generation):
                raise _Abandoned
            self._stream(generation, container, choice)
            if self._is_file():
                return 0.0  # a file source loops: start it again at once
            self.stats.reconnects["eof"] += 1
            return self._fail(generation, CameraState.BACKOFF, "stream ended")
        except _Abandoned:
            raise
        except av.error.HTTPUnauthorizedError as exc:
            self.stats.reconnects["auth_failed"] += 1
            return self._fail(generation, CameraState.AUTH_FAILED,
                              human_reason(exc, self.config.url), auth=True, exc=exc)
        except DeviceFailed:  # again at once, in software
            self.stats.reconnects["hwaccel"] += 1
            if not self._current(generation):
                raise _Abandoned from None
            return 0.0
        except HardwareRequired as exc:  # retried at the slow pace of a refused login
            self.decoding.refused(cfg.hwaccel, str(exc), exc.label)
            self.stats.reconnects["hwaccel"] += 1
            return self._fail(generation, CameraState.UNSUPPORTED, f"hwaccel_required: {exc}",
                              auth=True)
        except _Unsupported as exc:
            reason = "too_large" if isinstance(exc, _TooLarge) else "unsupported"
            self.stats.reconnects[reason] += 1
            return self._fail(generation, CameraState.UNSUPPORTED, str(exc), auth=True)
        except Exception as exc:  # every other FFmpeg/OS failure: back off and retry
            timed_out = not opened and time.monotonic() - opening >= cfg.open_timeout
            self.stats.reconnects[failure_reason(exc, timed_out)] += 1
            return self._fail(generation, CameraState.BACKOFF,
                              human_reason(exc, self.config.url, timed_out), exc=exc)
        finally:
            if container is not None:
                container.close()

    def _remote(self, generation: int) -> float:
        """Frames of another host's export (framebus.remote.source); like a stream that
        ended, a session that breaks or never delivers backs off and retries."""
        from framebus.remote.source import NoFrames, stream_remote

        self.stats.codec = "zenoh"
        epoch = self.stats.epoch

        def publish(frame: av.VideoFrame, header: FrameHeader, new_epoch: bool) -> None:
            nonlocal epoch
            if new_epoch:
                self.stats.epoch += 1
                epoch = self.stats.epoch
            self._check_size(frame.width, frame.height)
            self._publish(generation, frame, epoch, Fraction(*header.time_base), None, 0,
                          (header.capture_time_ns, header.capture_source))

        try:
            stream_remote(self.config.url, self.remote or RemoteConfig(),
                          lambda: self._current(generation), publish, self.config.open_timeout)
        except (NoFrames, FramebusError) as exc:  # their messages hold names, no secrets
            self.stats.reconnects["timeout" if isinstance(exc, NoFrames) else "error"] += 1
            return self._fail(generation, CameraState.BACKOFF, str(exc))
        if not self._current(generation):
            raise _Abandoned
        self.stats.reconnects["eof"] += 1
        return self._fail(generation, CameraState.BACKOFF, "remote stream ended")

    def _is_file(self) -> bool:
        return urlsplit(self.config.url).scheme in ("", "file")

    def _stream(self, generation: int, container: av.container.InputContainer,
                choice: Choice) -> None:
        if not container.streams.video:
            raise _Unsupported("no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or stream.codec_context.name is None:
            raise _Unsupported("no decoder for the video stream")
        self._check_size(codec.width, codec.height)  # from the SDP/extradata: before decoding
        self.stats.codec = codec.name
        decoder, why = decoder_for(choice, codec)  # the stream's own, or a qsv decoder
        if why is not None:
            self._not_on_device(why)
        if not decoder.is_open:  # a stream that grows later is refused by the decoder itself
            decoder.options = decoder_options(self.config)
        decoder.thread_count = self.config.decoder_threads
        if self.config.decoder_threads != 1:
            decoder.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.stats.declared_fps = float(rate) if rate else 0.0
        self.stats.epoch += 1
        epoch = self.stats.epoch
        time_base = stream.time_base or Fraction(1, 90000)
        start_pts = stream.start_time or 0
        size: tuple[int, int, str] | None = None
        skipping: bool | None = None
        self._deadline = time.monotonic() + self.config.stall_timeout
        for packet in container.demux(stream):
            if not self._current(generation):
                raise _Abandoned
            idle = self._decode_keyframes_only()
            if idle != skipping:
                decoder.skip_frame = "NONKEY" if idle else "DEFAULT"
                skipping = idle
            self.stats.packets += 1
            self.stats.input_bytes += packet.size
            try:
                frames = decoder.decode(packet)
            except av.error.FFmpegError:
                self.stats.decode_errors += 1
                self.decoding.decode_failed()  # a device failing every packet: software
                # the decoder refused a picture over max_pixels (it knows the new size): say so
                self._check_size(decoder.width, decoder.height)
                continue
            for frame in frames:
                self.decoding.decoded()
                self._check_size(frame.width, frame.height)  # a stream may grow mid-way
                shape = (frame.width, frame.height, frame.format.name)
                if size is not None and shape != size:
                    self.stats.epoch += 1  # size or format changed mid-stream
                    epoch = self.stats.epoch
                if shape != size and self.decoding.active and (why := on_device(choice, decoder)):
                    self._not_on_device(why)  # FFmpeg chose software itself
                size = shape
                # FFmpeg fills this in once the first RTCP sender report has arrived
                realtime_us = container.start_time_realtime
                self._publish(generation, frame, epoch, time_base, realtime_us, start_pts)

    def _not_on_device(self, why: str) -> None:
        """The chosen device cannot decode this stream: software, or the end of the session
        when hardware is required."""
        self.decoding.not_on_device(why)
        if self.config.hwaccel_required:
            raise HardwareRequired(why, self.decoding.label(why))

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.config.max_pixels:
            raise _TooLarge(f"stream is {width}x{height} ({width * height} pixels), over "
                            f"max_pixels {self.config.max_pixels}: refused")

    def _publish(self, generation: int, frame: av.VideoFrame, epoch: int,
                 time_base: Fraction, realtime_us: int | None, start_pts: int,
                 capture: tuple[int, CaptureSource] | None = None) -> None:
        now = time.monotonic()
        if not self._current(generation):
            raise _Abandoned
        stats = self.stats
        stats.frames_decoded += 1
        stats.keyframes_decoded += bool(frame.key_frame)
        stats.width, stats.height = frame.width, frame.height
        if stats.last_frame_mono:
            gap = now - stats.last_frame_mono
            stats.frame_interval = gap if not stats.frame_interval else (
                0.9 * stats.frame_interval + 0.1 * gap)
        stats.last_frame_mono = now
        self._deadline = now + self.config.stall_timeout
        if self.state is not CameraState.STREAMING:
            self._backoff.connected(now)
            self._set_state(CameraState.STREAMING,
                            f"{frame.width}x{frame.height} {stats.codec}")
        else:
            self._backoff.healthy(now)
            if self._quiet:  # frames again after a quiet spell: same epoch
                self._quiet = False
                self.store.set_state(self.name, StreamState.STREAMING, self.reason, epoch)
        pts = frame.pts
        if capture is not None:  # a remote source keeps the exporting host's capture clock
            capture_ns, source = capture
        elif realtime_us and pts is not None:
            offset_ns = int((pts - start_pts) * time_base * 1_000_000_000)
            capture_ns, source = realtime_us * 1000 + offset_ns, CaptureSource.RTCP
        else:
            capture_ns, source = time.time_ns(), CaptureSource.RECEIVE
        self.store.publish(StoredFrame(
            camera=self.name, seq=self.store.next_seq(self.name), epoch=epoch, frame=frame,
            pts=pts, time_base=(time_base.numerator, time_base.denominator),
            capture_time_ns=capture_ns, capture_source=source, keyframe=bool(frame.key_frame),
        ))

    def _fail(self, generation: int, state: CameraState, reason: str, auth: bool = False,
              exc: BaseException | None = None) -> float:
        if not self._current(generation):
            raise _Abandoned  # an abandoned thread must not touch the state
        delay = self._backoff.next_delay(time.monotonic(), auth_failed=auth)
        self._set_state(state, reason, "" if exc is None else describe_error(exc))
        return delay

    def _set_state(self, state: CameraState, reason: str, error: str = "") -> None:
        """Record a transition; log it once (a retry that fails the same way logs nothing)."""
        if state is not self.state:
            self.stats.state_since_mono = time.monotonic()
        self.state, self.reason = state, reason
        self._quiet = False
        wire = _WIRE_STATE[state]
        self.store.set_state(self.name, wire, reason if wire is StreamState.STREAMING
                             else f"{state.value}: {reason}", self.stats.epoch)
        retrying = state is CameraState.CONNECTING and self._backoff.failures > 0
        if retrying or (state, reason) == self._last_logged:
            return
        self._last_logged = (state, reason)
        level = logging.INFO if state in (CameraState.STREAMING, CameraState.STOPPED,
                                           CameraState.CONNECTING) else logging.WARNING
        # the person reads the reason; whoever debugs gets the exception behind it too
        log.log(level, "camera %s: %s (%s)%s [%s]", self.name, state.value, reason,
                f" [{error}]" if error else "", redact_url(self.config.url),
                extra={"CAMERA": self.name})


class CameraSet:
    """All cameras plus the watchdog thread that ticks their deadlines."""

    TICK_S = 0.25

    def __init__(self, store: LatestFrameStore) -> None:
        self.store = store
        self.cameras: dict[str, Camera] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def add(self, camera: Camera) -> None:
        """Start a camera and watch it."""
        self.cameras[camera.name] = camera
        camera.start()
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._tick, name="camera-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def remove(self, name: str) -> None:
        """Stop and forget a camera."""
        camera = self.cameras.pop(name, None)
        if camera is not None:
            camera.stop()
            self.store.forget(name)

    def close(self, timeout: float = 1.0) -> None:
        """Stop every camera and the watchdog, all at once and within ``timeout`` together.

        A thread returns at its camera's next packet; one blocked in PyAV (a stalled camera,
        a hanging open: PyAV's own timeouts cannot be cut short) is abandoned at the
        deadline, which a daemon thread may be as the process exits. One camera after the
        other, 2 s each, two stalled cameras held SIGTERM for 4 s (issue 21)."""
        self._stop.set()
        cameras = list(self.cameras.values())
        for camera in cameras:
            camera.halt()
        deadline = time.monotonic() + timeout
        for camera in cameras:
            self.cameras.pop(camera.name, None)
            camera.stop(max(0.0, deadline - time.monotonic()))
            self.store.forget(camera.name)
        if self._watchdog is not None:
            self._watchdog.join(max(0.1, deadline - time.monotonic()))

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK_S):
            now = time.monotonic()
            for camera in list(self.cameras.values()):
                camera.watchdog(now)
