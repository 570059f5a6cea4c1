"""The latest-frame store: the newest decoded frame per camera, converted once per rendition.

Invariants:

* A camera's slot holds exactly one frame, the newest; publishing replaces it atomically (one
  attribute store), so readers never see a half-built frame and never wait on a lock.
* Every rendition (format, size) some subscriber *wants* is converted in the decoder thread
  before the frame is published, at most once per frame, and shared by all who want it. The
  fan-out loop therefore only reads finished payloads. Renditions nobody registered (a snapshot
  request) are converted on demand, still at most once per frame.
* Payloads are zero-copy views of PyAV's plane buffers: offsets and strides describe PyAV's
  own line padding, so no packing copy is made.
* With an ``exporter`` (shm subscribers), the wanted renditions are also copied once into
  shared memory before publishing; the newest frame pins its slots until a newer one replaces
  it (``exporter.release``), so a new reader can always be sent the newest frame.

Layers: the store uses the exporter, which uses the segments (``shm``), and all of them speak
the rendition vocabulary of ``framebus.rendition``; nothing below imports the store
(tests/test_layers.py). ``Rendition``, ``Payload``, ``render`` and their constants are
re-exported here for the callers that import them from the store.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import av

from framebus.exporter import ShmExporter, ShmKey
from framebus.rendition import AV_FORMAT as AV_FORMAT
from framebus.rendition import DEFAULT_QUALITY as DEFAULT_QUALITY
from framebus.rendition import ON_DEMAND_KEPT as ON_DEMAND_KEPT
from framebus.rendition import Payload as Payload
from framebus.rendition import Rendition as Rendition
from framebus.rendition import render as render
from framebus.shm import ShmFrame
from framebus.wire import (
    CaptureSource,
    EncodedHeader,
    Flags,
    FrameHeader,
    StateHeader,
    StreamState,
    encode_state,
)


def new_instance() -> int:
    """A random, non-zero 64-bit identity for this daemon process (PROTOCOL.md's
    ``instance``): a reader compares it between messages to see a restart that no EOF told
    it about."""
    return int.from_bytes(os.urandom(8), "little") or 1


INSTANCE = new_instance()
RETIRED_KEPT = 1024  # counts of renditions nobody wants now, kept in case one comes back


def _redraw_instance() -> None:
    global INSTANCE
    INSTANCE = new_instance()


os.register_at_fork(after_in_child=_redraw_instance)  # a forked daemon is another process


@dataclass(slots=True)
class StoredFrame:
    """A decoded frame with its metadata and the renditions made of it so far."""

    camera: str
    seq: int
    epoch: int
    frame: av.VideoFrame
    pts: int | None
    time_base: tuple[int, int]
    capture_time_ns: int
    capture_source: CaptureSource
    keyframe: bool
    publish_mono_ns: int = 0
    renditions: dict[Rendition, Payload] = field(default_factory=dict)
    shm: dict[ShmKey, ShmFrame] = field(default_factory=dict)  # copies in shared memory
    _encoded: dict[int, EncodedHeader] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """Native width of the decoded frame."""
        return int(self.frame.width)

    @property
    def height(self) -> int:
        """Native height of the decoded frame."""
        return int(self.frame.height)

    def encoded_for(self, payload: Payload) -> EncodedHeader:
        """The FIFO message header of ``payload``, built and encoded once per payload and
        shared by its subscribers (each gets it with its own ``missed``)."""
        found = self._encoded.get(id(payload))
        if found is None:
            found = self._encoded[id(payload)] = EncodedHeader(self.header(payload),
                                                               payload.nbytes)
        return found

    def header(self, payload: Payload) -> FrameHeader:
        """The wire header for sending ``payload`` (``missed`` is set per subscriber)."""
        return FrameHeader(
            camera=self.camera, seq=self.seq, format=payload.format, width=payload.width,
            height=payload.height, planes=payload.planes, epoch=self.epoch, pts=self.pts,
            time_base=self.time_base, capture_time_ns=self.capture_time_ns,
            capture_source=self.capture_source, publish_mono_ns=self.publish_mono_ns,
            flags=Flags.KEYFRAME if self.keyframe else Flags.NONE, instance=INSTANCE,
        )


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """A camera's state as subscribers are told it (PROTOCOL.md STATE messages), with the
    message encoded once for all of them."""

    state: StreamState
    reason: str
    epoch: int
    message: bytes


class LatestFrameStore:
    """Newest frame per camera, the renditions subscribers want, and publish notifications;
    each camera's state for STATE messages."""

    def __init__(self) -> None:
        self._latest: dict[str, StoredFrame] = {}
        self._seq: dict[str, int] = {}
        self._wanted: dict[str, Counter[Rendition]] = {}
        self._wanted_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._state_listeners: list[Callable[[str, CameraStatus], None]] = []
        self._states: dict[str, CameraStatus] = {}
        self._state_lock = threading.Lock()
        # per (camera, rendition) some subscriber wants now: there from its first want at 0,
        # gone with its last unwant, so its series are bounded by the subscriptions of now
        # (not every width ever asked). A rendition wanted again resumes its old count (kept
        # for the last RETIRED_KEPT ones): a counter never goes back while the process lives,
        # as the soak checks; only one retired longer ago starts again from 0
        self.conversions: dict[tuple[str, Rendition], int] = {}
        self._retired: OrderedDict[tuple[str, Rendition], int] = OrderedDict()
        self.on_demand: Counter[str] = Counter()  # conversions for requests, per camera
        self.published = threading.Condition()
        self.exporter: ShmExporter | None = None  # set when shm subscribers exist

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(camera)`` after every publish (it must not block)."""
        self._listeners.append(callback)

    def add_state_listener(self, callback: Callable[[str, CameraStatus], None]) -> None:
        """Call ``callback(camera, status)`` after every change of a camera's state (must not
        block)."""
        self._state_listeners.append(callback)

    def set_state(self, camera: str, state: StreamState, reason: str, epoch: int) -> None:
        """A camera's decoder or watchdog: the camera is now ``state``. Only a change of the
        state itself is told to subscribers (a retry that fails again the same way is not)."""
        with self._state_lock:
            current = self._states.get(camera)
            if current is not None and current.state is state:
                return
            header = StateHeader(camera, state, seq=self._seq.get(camera, 0), epoch=epoch,
                                 capture_time_ns=time.time_ns(),
                                 publish_mono_ns=time.monotonic_ns(), instance=INSTANCE)
            status = self._states[camera] = CameraStatus(state, reason, epoch,
                                                         encode_state(header, reason))
        for callback in self._state_listeners:
            callback(camera, status)

    def state(self, camera: str) -> CameraStatus | None:
        """A camera's state as last set (None before its first)."""
        return self._states.get(camera)

    def want(self, camera: str, rendition: Rendition) -> None:
        """A subscriber wants this rendition of this camera (reference counted)."""
        with self._wanted_lock:
            wanted = Counter(self._wanted.get(camera, Counter()))
            wanted[rendition] += 1
            self._wanted[camera] = wanted  # copy-on-write: decoders read without the lock
            if (camera, rendition) not in self.conversions:
                self.conversions[camera, rendition] = self._retired.pop((camera, rendition), 0)

    def unwant(self, camera: str, rendition: Rendition) -> None:
        """Undo one ``want``."""
        with self._wanted_lock:
            wanted = Counter(self._wanted.get(camera, Counter()))
            wanted[rendition] -= 1
            self._wanted[camera] = +wanted
            if rendition not in self._wanted[camera]:
                count = self.conversions.pop((camera, rendition), None)
                if count is not None:
                    self._retired[camera, rendition] = count
                    while len(self._retired) > RETIRED_KEPT:
                        self._retired.popitem(last=False)

    def is_wanted(self, camera: str) -> bool:
        """True while any subscriber wants frames of this camera."""
        return bool(self._wanted.get(camera))

    def latest(self, camera: str) -> StoredFrame | None:
        """The newest frame of a camera, or None before its first frame."""
        return self._latest.get(camera)

    def next_seq(self, camera: str) -> int:
        """The sequence number the next frame of this camera gets (monotonic for the process)."""
        return self._seq.get(camera, 0) + 1

    def publish(self, stored: StoredFrame) -> None:
        """Decoder thread: convert what subscribers want, then make the frame the newest."""
        for rendition in self._wanted.get(stored.camera, Counter()):
            self._render_into(stored, rendition)
        exporter = self.exporter
        if exporter is not None:
            # the one copy per rendition into shared memory, each pinned once for the store
            stored.shm = exporter.export(stored.camera, stored.seq, stored.renditions)
        stored.publish_mono_ns = time.monotonic_ns()
        self._seq[stored.camera] = stored.seq
        previous = self._latest.get(stored.camera)
        self._latest[stored.camera] = stored
        if previous is not None and exporter is not None:
            exporter.release(previous.shm.values())  # still pinned by whoever was sent them
            previous.shm = {}
        with self.published:
            self.published.notify_all()
        for callback in self._listeners:
            callback(stored.camera)

    def payload(self, stored: StoredFrame, rendition: Rendition) -> Payload:
        """A rendition of a stored frame, converting it now if nobody has yet.

        One no subscriber wants (a snapshot at some size) is kept on the frame only while the
        frame holds fewer than ``ON_DEMAND_KEPT`` of them, and counted per camera in
        ``on_demand``, never per size: requests cannot grow memory or metric labels."""
        found = stored.renditions.get(rendition)
        if found is not None:
            return found
        with self._render_lock:
            if self.is_wanted_rendition(stored.camera, rendition):
                return self._render_into(stored, rendition)
            found = stored.renditions.get(rendition)
            if found is None:
                found, converted = render(stored.frame, rendition)
                self.on_demand[stored.camera] += converted
                if len(stored.renditions) < self.renditions_of(stored.camera) + ON_DEMAND_KEPT:
                    stored.renditions[rendition] = found
            return found

    def is_wanted_rendition(self, camera: str, rendition: Rendition) -> bool:
        """True if a subscriber already wants this rendition of the camera."""
        return rendition in self._wanted.get(camera, ())

    def renditions_of(self, camera: str) -> int:
        """How many distinct renditions subscribers want of a camera."""
        return len(self._wanted.get(camera, ()))

    def _render_into(self, stored: StoredFrame, rendition: Rendition) -> Payload:
        found = stored.renditions.get(rendition)
        if found is None:
            found, converted = render(stored.frame, rendition)
            stored.renditions[rendition] = found
            if converted:
                self._count_conversion((stored.camera, rendition))
        return found

    def _count_conversion(self, key: tuple[str, Rendition]) -> None:
        # under the lock of want/unwant: never brings back the count of a rendition whose
        # last subscriber just left (the lock costs nothing next to the conversion itself)
        with self._wanted_lock:
            if key in self.conversions:
                self.conversions[key] += 1

    def forget(self, camera: str) -> None:
        """Drop a removed camera's newest frame and state."""
        self._states.pop(camera, None)
        previous = self._latest.pop(camera, None)
        if previous is not None and self.exporter is not None:
            self.exporter.release(previous.shm.values())
            previous.shm = {}
