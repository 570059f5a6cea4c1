"""A synthetic camera: ready-made bgr24 frames published into a LatestFrameStore, no decoding.

Used by the fan-out throughput and latency benchmarks, which run the store and a FanoutLoop
in the benchmark process (the real classes, real FIFOs) and read with consumer processes.
"""

from __future__ import annotations

import threading
import time

import av
import numpy as np

from framebus.fanout import FanoutLoop
from framebus.store import LatestFrameStore, StoredFrame
from framebus.wire import CaptureSource


def make_frames(width: int, height: int, count: int = 2) -> list[av.VideoFrame]:
    """``count`` different bgr24 frames, built once (payloads are views of their planes)."""
    rng = np.random.default_rng(width * height)
    return [av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), np.uint8),
                                       format="bgr24") for _ in range(count)]


def frame_bytes(frame: av.VideoFrame) -> bytes:
    """The frame's pixels as one packed bytes object (for the baselines)."""
    array = frame.to_ndarray()
    return bytes(np.ascontiguousarray(array).data)


def stored(camera: str, seq: int, frame: av.VideoFrame) -> StoredFrame:
    """A store entry for a synthetic frame."""
    return StoredFrame(camera=camera, seq=seq, epoch=1, frame=frame, pts=seq, time_base=(1, 25),
                       capture_time_ns=time.time_ns(), capture_source=CaptureSource.RECEIVE,
                       keyframe=True)


class EagerPublisher:
    """Publishes frames as fast as the fan-out loop takes them ("keep publishing").

    A tight publishing loop in a Python thread would hold the GIL for whole switch intervals
    and starve the loop it feeds, so the publisher is paced by the loop itself: it publishes the
    next frame as soon as any connected subscriber has begun writing the newest one (its
    pending slot is free), signalled from the loop's ``on_tick`` hook. Every subscriber thus
    always has a newer frame waiting when it finishes one; the newest-wins outbox drops the
    rest, so throughput is the frames readers fully receive.

    An shm subscriber's message (a header) is written whole at once, so "begun" means its
    outbox is empty: the reader has begun the newest frame's message and the gate let it
    through. Counting a frame held back by the gate as free would let the publisher copy
    frames into shared memory as fast as it can, only for the outbox to drop them.
    """

    def __init__(self, store: LatestFrameStore, loop: FanoutLoop,
                 frames: list[av.VideoFrame], camera: str = "cam") -> None:
        self.store = store
        self.loop = loop
        self.frames = frames
        self.camera = camera
        self.seq = 0
        self.published = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        loop.on_tick = self.on_tick

    def on_tick(self) -> None:
        """Loop thread: wake the publisher once a subscriber has taken the newest frame."""
        seq = self.seq
        for sub in self.loop.subscribers.values():
            held = 0 if sub.ledger is not None else 1  # shm: nothing may wait in the outbox
            taken = sub.last_offered.get(self.camera, 0) >= seq
            if sub.connected and taken and sub.outbox.in_flight <= held:
                self._ready.set()
                return

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing."""
        self._stop.set()
        self._ready.set()
        self._thread.join(5)

    @property
    def native_id(self) -> int | None:
        """The publisher thread's OS thread id."""
        return self._thread.native_id

    def _run(self) -> None:
        while not self._stop.is_set():
            self._ready.clear()
            self.seq += 1
            self.store.publish(stored(self.camera, self.seq, self.frames[self.seq % 2]))
            self.published += 1
            self._ready.wait(0.01)  # also paces publishing before any reader is connected


class PacedPublisher:
    """Publishes one camera's frames at a fixed rate, like a real camera (a thread)."""

    def __init__(self, store: LatestFrameStore, camera: str, frames: list[av.VideoFrame],
                 fps: float, phase_s: float = 0.0) -> None:
        self.store = store
        self.camera = camera
        self.frames = frames
        self.period_ns = int(1e9 / fps)
        self.phase_ns = int(phase_s * 1e9)
        self.published = 0
        self.late = 0  # publishes more than a period behind schedule (skipped ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"publish-{camera}", daemon=True)

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        due = time.monotonic_ns() + self.phase_ns
        seq = 0
        while not self._stop.is_set():
            now = time.monotonic_ns()
            if now < due:
                self._stop.wait((due - now) / 1e9)
                continue
            seq += 1
            self.store.publish(stored(self.camera, seq, self.frames[seq % len(self.frames)]))
            self.published += 1
            due += self.period_ns
            if due <= now:
                self.late += 1
                due = now + self.period_ns
