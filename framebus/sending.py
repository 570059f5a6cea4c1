"""What the fan-out loop keeps per subscriber, and the messages it sends (FIFO and shm).

A FIFO subscriber's message is the header plus the rendition's buffers; an shm subscriber's is
the header alone, naming a slot that the decoder thread filled once for every subscriber of
the rendition. An shm message is pinned from the moment it is offered until the reader has
begun a later message (``HoldLedger``), or, once the daemon ended the stream itself, for
``PARK_S`` longer, so the reader can finish with its last frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from framebus.exporter import ShmKey
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

    @property
    def shm_key(self) -> ShmKey | None:
        """The segment this subscriber shares, for ``transport: shm``."""
        if self.transport != "shm":
            return None
        return ShmKey(self.camera, self.rendition, self.path.parent, self.mode, self.group)


@dataclass
class LatencyHistogram:
    """Publish-to-fully-written latency, as plain counters (cumulative at scrape time)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        index = 0
        while index < len(LATENCY_BUCKETS_S) and seconds > LATENCY_BUCKETS_S[index]:
            index += 1
        self.counts[index] += 1
        self.sum_s += seconds


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Sending(_Message):
    """What a FIFO subscriber's outbox keeps alive: one rendition's buffers and its header, not
    the decoded frame with every other rendition, so a stalled reader pins exactly its own
    two frames."""

    payload: Payload

    def encode(self, missed: int) -> list[memoryview]:
        """[header bytes, *payload buffers] for writev, with this subscriber's ``missed``."""
        return [memoryview(self.encoded.with_missed(missed)), *self.payload.buffers]


@dataclass(frozen=True, slots=True)
class ShmSending(_Message):
    """An shm message: the header naming a pinned slot (the pin is this object's to drop)."""

    shm: ShmFrame

    def encode(self, missed: int) -> list[memoryview]:
        """The header only; the payload is already in the slot."""
        return [memoryview(self.encoded.with_missed(missed))]

    def unpin(self) -> None:
        """Let the slot go."""
        self.shm.segment.pool.unpin(self.shm.ref)


@dataclass(frozen=True, slots=True)
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
    return Outgoing(frame.seq, sending, sending.encode, frame.camera)


def shm_outgoing(frame: StoredFrame, payload: Payload, shm: ShmFrame) -> Outgoing[Token] | None:
    """An shm message naming ``shm``'s slot, pinned now; None if the slot was already reused
    (the frame was replaced and every earlier holder let go)."""
    if not shm.segment.pool.pin(shm.ref):
        return None
    if shm.encoded is None:  # built once per frame and rendition, shared by its subscribers
        shm.encoded = EncodedHeader(replace(frame.header(payload), shm=shm.location), 0)
    sending = ShmSending(shm.encoded, shm)
    return Outgoing(frame.seq, sending, sending.encode, frame.camera)


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
        self.latency = LatencyHistogram()
        self.next_open_ns = 0
        self.error = ""
        self.last_offered: dict[str, int] = {}  # per camera; absent: nothing offered yet
        self.retiring = False  # removed: finish the in-flight message, then close
        self.retire_deadline_ns = 0
        self.on_closed: Callable[[bool], None] | None = None  # one-shot: called with "complete"
        self.shm_key = spec.shm_key
        self.ledger: HoldLedger[Token] | None = HoldLedger() if self.shm_key else None
        self.drain_wakes = False  # shm: EPOLLOUT fires only once the pipe is drained
        self.message_start = 0  # shm: stream offset where the message being written began

    @property
    def connected(self) -> bool:
        """True while a reader has the FIFO open."""
        return self.fd >= 0

    @property
    def pinned_slots(self) -> int:
        """shm slots this subscriber keeps from reuse: held, unread and pending."""
        if self.ledger is None:
            return 0
        pending = sum(isinstance(t, ShmSending) for t in self.outbox.held())
        return len(self.ledger) + pending
