"""What the fan-out loop keeps per subscriber, and the messages it sends (FIFO and shm).

A FIFO subscriber's message is the header plus the rendition's buffers; an shm subscriber's is
the header alone, naming a slot that the decoder thread filled once for every subscriber of
the rendition. An shm message is pinned from the moment it is offered until the reader has
begun a later message (``HoldLedger``), or, once the daemon ended the stream itself, for
``PARK_S`` longer, so the reader can finish with its last frame.

A multi-camera shm subscriber reads each camera's frames from that camera's own segment (one
``ShmKey`` per camera), through its one FIFO and one ``HoldLedger``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from framebus.exporter import Seat, ShmExporter, ShmKey
from framebus.outbox import Outbox, Outgoing
from framebus.shm import ShmFrame
from framebus.slots import HoldLedger
from framebus.store import Payload, Rendition, StoredFrame
from framebus.wire import EncodedHeader

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
SHM_PIPE_SIZE = 4096  # one page: the pipe is "full" with one message, so EPOLLOUT means drained
PARK_S = 2.0
TRANSPORTS = ("fifo", "shm")


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """What a subscriber wants and where it reads."""

    name: str
    camera: str  # the first (or only) camera
    rendition: Rendition
    path: Path
    max_fps: float | None = None
    pipe_size: int = 1 << 20
    mode: int = 0o660
    group: str | None = None
    transport: str = "fifo"
    cameras: tuple[str, ...] = ()  # a multi-camera subscriber's cameras (camera is the first)
    state_messages: bool = True  # STATE messages (PROTOCOL.md, revision 1.2) in the stream

    @property
    def all_cameras(self) -> tuple[str, ...]:
        """Every camera whose frames go into this subscriber's FIFO."""
        return self.cameras or (self.camera,)

    def shm_key_for(self, camera: str) -> ShmKey:
        """The segment this subscriber shares for ``camera``'s frames (``transport: shm``)."""
        return ShmKey(camera, self.rendition, self.path.parent, self.mode, self.group)

    @property
    def shm_keys(self) -> dict[str, ShmKey]:
        """Per camera, the segment its frames come through; empty unless ``transport: shm``.
        A multi-camera subscriber has one per camera: a segment holds one camera's frames."""
        if self.transport != "shm":
            return {}
        return {camera: self.shm_key_for(camera) for camera in self.all_cameras}


@dataclass
class LatencyHistogram:
    """Publish-to-fully-written latency, as plain counters (cumulative at scrape time)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1  # first bound >= it
        self.sum_s += seconds


@dataclass(slots=True)  # made per message and subscriber: not frozen (7x the cost)
class _Message:
    encoded: EncodedHeader  # shared by every subscriber of the frame's rendition

    @property
    def seq(self) -> int:
        """The frame's sequence number."""
        return self.encoded.header.seq

    @property
    def publish_mono_ns(self) -> int:
        """When the frame was published (for the latency histogram)."""
        return self.encoded.header.publish_mono_ns


@dataclass(slots=True)  # made per message and subscriber: not frozen (7x the cost)
class Sending(_Message):
    """What a FIFO subscriber's outbox keeps alive: one rendition's buffers and its header, not
    the decoded frame with every other rendition, so a stalled reader pins exactly its own
    two frames."""

    payload: Payload

    def encode(self, missed: int) -> list[memoryview]:
        """[header bytes, *payload buffers] for writev, with this subscriber's ``missed``."""
        return [memoryview(self.encoded.with_missed(missed)), *self.payload.buffers]


@dataclass(slots=True)  # made per message and subscriber: not frozen (7x the cost)
class ShmSending(_Message):
    """An shm message: the header naming a pinned slot (the pin is this object's to drop)."""

    shm: ShmFrame

    def encode(self, missed: int) -> list[memoryview]:
        """The header only; the payload is already in the slot."""
        return [memoryview(self.encoded.with_missed(missed))]

    def unpin(self) -> None:
        """Let the slot go."""
        self.shm.segment.pool.unpin(self.shm.ref)


@dataclass(slots=True)  # made per message and subscriber: not frozen (7x the cost)
class StateSending:
    """A STATE message: a camera's state, encoded once and sent as is to its subscribers."""

    data: bytes

    def encode(self, _missed: int) -> list[memoryview]:
        """The whole message (STATE messages take no part in missed)."""
        return [memoryview(self.data)]


Token = Sending | ShmSending | StateSending


def release(token: Token) -> None:
    """Outbox hook: a token dropped without being sent gives back its pin."""
    if isinstance(token, ShmSending):
        token.unpin()


def state_outgoing(camera: str, data: bytes) -> Outgoing[Token]:
    """A STATE message for ``camera``'s subscribers (``data`` from ``wire.encode_state``)."""
    sending = StateSending(data)
    return Outgoing(0, sending, sending.encode, camera)


def fifo_outgoing(frame: StoredFrame, payload: Payload) -> Outgoing[Token]:
    """A FIFO message of ``payload``."""
    sending = Sending(frame.encoded_for(payload), payload)
    return Outgoing(frame.seq, sending, sending.encode, frame.camera, payload.nbytes)


def shm_outgoing(frame: StoredFrame, payload: Payload, shm: ShmFrame) -> Outgoing[Token] | None:
    """An shm message naming ``shm``'s slot, pinned now; None if the slot was already reused
    (the frame was replaced and every earlier holder let go)."""
    if not shm.segment.pool.pin(shm.ref):
        return None
    if shm.encoded is None:  # built once per frame and rendition, shared by its subscribers
        shm.encoded = EncodedHeader(replace(frame.header(payload), shm=shm.location), 0)
    sending = ShmSending(shm.encoded, shm)
    return Outgoing(frame.seq, sending, sending.encode, frame.camera, payload.nbytes)


class Subscriber:
    """A subscriber's loop-side state: its FIFO descriptor, outbox and counters."""

    def __init__(self, spec: SubscriberSpec) -> None:
        self.spec = spec
        self.fd = -1
        self.mask = 0
        self.outbox: Outbox[Token] = Outbox(spec.max_fps, release)
        self.pipe_size = 0
        self.connects = 0
        self.disconnects = 0
        # one histogram per camera (metrics label latency by one camera); the FIFO's total
        # is their sum, made when read: observing both cost a second bisect per frame
        self.camera_latency = {camera: LatencyHistogram() for camera in spec.all_cameras}
        self.next_open_ns = 0
        self.error = ""
        self.last_offered: dict[str, int] = {}  # per camera; absent: nothing offered yet
        self.retiring = False  # removed: finish the in-flight message, then close
        self.retire_deadline_ns = 0
        self.on_closed: Callable[[bool], None] | None = None  # one-shot: called with "complete"
        self.shm_keys = spec.shm_keys
        self.shm_seats: dict[str, Seat] = {}  # per camera, the exporter's seat (FanoutLoop.add)
        self.removed = False  # its seats are vacated once its pins are released
        self.shm_errors = dict.fromkeys(self.shm_keys, "")  # per camera: why its segment failed
        # one ledger for the one pipe, whatever the cameras: the hold rule is per pipe
        self.ledger: HoldLedger[Token] | None = HoldLedger() if self.shm_keys else None
        self.drain_wakes = False  # shm: EPOLLOUT fires only once the pipe is drained
        self.message_start = 0  # shm: stream offset where the message being written began

    @property
    def connected(self) -> bool:
        """True while a reader has the FIFO open."""
        return self.fd >= 0

    def observe_latency(self, camera: str, seconds: float) -> None:
        """Loop thread: a frame of ``camera`` was fully written ``seconds`` after publish."""
        histogram = self.camera_latency.get(camera)
        if histogram is not None:
            histogram.observe(seconds)

    @property
    def latency(self) -> LatencyHistogram:
        """The FIFO's latency, every camera together (a sum when read: scrapes and the API
        are rare, frames are not)."""
        parts = list(self.camera_latency.values())
        if len(parts) == 1:
            return parts[0]
        total = LatencyHistogram()
        for part in parts:
            total.counts = [a + b for a, b in zip(total.counts, part.counts, strict=True)]
            total.sum_s += part.sum_s
        return total

    def shm_state(self, camera: str, error: str) -> None:
        """Loop thread, per frame offered: ``camera``'s segment is fine ("") or failed. The
        subscriber's ``error`` says it; with several cameras, naming each one that failed."""
        if len(self.shm_keys) == 1:
            self.error = error
            return
        self.shm_errors[camera] = error
        if error or self.error:  # all fine and nothing to clear: no string work per frame
            self.error = "; ".join(f"{c}: {e}" for c, e in self.shm_errors.items() if e)

    def pinned_by_camera(self) -> Counter[str]:
        """shm slots this subscriber keeps from reuse, per camera: held, unread and pending.

        At most 3 per camera, so at most 3 in each segment (a segment holds one camera's
        frames), however many cameras share the pipe; this is what sizes a segment at
        ``slots.capacity(n) = 3n + 2``. Why 3:

        * the ledger holds at most 2 messages for the whole pipe, whichever cameras they are
          of: the one the reader began last (held) and one written after it (unread), because
          ``HoldLedger.may_send`` lets a message be written only once the reader has begun the
          previous one, and ``consumed`` lets go of everything before the one begun last;
        * the outbox keeps at most 1 pending frame per camera (newest wins per stream);
        * nothing stays in flight: an shm message (256 bytes) is written whole by one writev
          into a pipe that holds at most one other message (a write of up to PIPE_BUF bytes
          is atomic), and moves from the outbox to the ledger in the same ``_flush``.

        STATE messages take a ledger place but pin nothing. Safe from other threads (API,
        metrics): both lists are copied in one step before they are read.
        """
        if self.ledger is None:
            return Counter()
        return Counter(t.encoded.header.camera
                       for t in [*self.ledger.items(), *self.outbox.held()]
                       if isinstance(t, ShmSending))

    def shm_status(self, exporter: ShmExporter) -> dict[str, Any]:
        """For the API: the segment a single-camera subscriber reads and what it pins there;
        for a multi-camera one the same per camera under ``cameras`` (each camera's frames
        have their own segment), with that camera's error."""
        pins = self.pinned_by_camera()
        per_camera: dict[str, dict[str, Any]] = {}
        for camera, key in self.shm_keys.items():
            state = exporter.state(key)
            segment = state.segment if state is not None else None
            per_camera[camera] = {"segment": segment.name if segment else None,
                                  "segment_bytes": segment.size if segment else 0,
                                  "slots": segment.pool.count if segment else 0,
                                  "pinned_slots": pins[camera]}
        if not self.spec.cameras:
            return per_camera[self.spec.camera]
        for camera, info in per_camera.items():
            info["error"] = self.shm_errors.get(camera, "")
        return {"cameras": per_camera}

    @property
    def pinned_slots(self) -> int:
        """shm slots this subscriber keeps from reuse, every camera together: at most 3 for
        one camera, at most 2 + one per camera for several (``pinned_by_camera``)."""
        return sum(self.pinned_by_camera().values())
