"""Per-subscriber send state, as pure code: one in-flight message and one pending slot.

No file descriptors, no clocks: the fan-out loop passes the time in and does the writing.

Invariants:

* A subscriber holds at most two frames: the one being written (possibly partly) and the
  newest one waiting. Memory does not grow with the reader's slowness.
* A message, once its first byte is written, is finished before anything else is written:
  ``chunks()`` always continues the in-flight message. Drops only happen at frame boundaries.
* Accounting is exact: ``offered == sent + dropped + in_flight`` where ``in_flight`` counts
  the in-flight and pending frames (0, 1 or 2). Dropped frames have a reason:
  ``slow_reader`` (replaced in the pending slot), ``rate_limit`` (skipped for ``max_fps``),
  ``reader_gone`` (lost when the reader left), ``shutdown`` (not begun before stopping) or
  ``superseded`` (replaced in the store before the loop could offer it).
* ``missed`` in each sent header is the number of frames of the camera since the previous
  sent one, so the gaps a reader sees in ``seq`` equal the drops counted here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

SLOW_READER = "slow_reader"
RATE_LIMIT = "rate_limit"
READER_GONE = "reader_gone"
SHUTDOWN = "shutdown"
SUPERSEDED = "superseded"


@dataclass(slots=True)
class Outgoing(Generic[T]):
    """A frame offered to one subscriber: its seq, a token (the frame) and how to encode it."""

    seq: int
    token: T
    encode: Callable[[int], list[memoryview]]  # missed -> [header, *payload buffers]


@dataclass
class OutboxStats:
    """Plain counters, read by metrics at scrape time."""

    offered: int = 0
    sent: int = 0
    bytes_sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class RateLimiter:
    """Admit at most ``max_fps`` frames a second, evenly (times in ns, passed in)."""

    def __init__(self, max_fps: float | None) -> None:
        self.interval_ns = int(1e9 / max_fps) if max_fps else 0
        self._next_due: int | None = None

    def admit(self, now_ns: int) -> bool:
        """True if a frame published at ``now_ns`` may be sent."""
        if not self.interval_ns:
            return True
        if self._next_due is None:  # the first frame anchors the schedule
            self._next_due = now_ns + self.interval_ns
            return True
        if now_ns < self._next_due:
            return False
        # keep the schedule (so the average rate is exact) unless we fell behind it
        scheduled = self._next_due + self.interval_ns
        self._next_due = scheduled if scheduled > now_ns else now_ns + self.interval_ns
        return True


class Outbox(Generic[T]):
    """What one subscriber still has to receive.

    ``release(token)`` is called for every token the outbox lets go of without completing it
    (dropped, replaced, lost with the reader): shm subscribers unpin slots there.
    """

    def __init__(self, max_fps: float | None = None,
                 release: Callable[[T], None] | None = None) -> None:
        self.stats = OutboxStats()
        self.release = release
        self._limiter = RateLimiter(max_fps)
        self._chunks: list[memoryview] = []  # the rest of the in-flight message
        self._in_flight: Outgoing[T] | None = None
        self._pending: Outgoing[T] | None = None
        self._last_seq: int | None = None  # seq of the last message begun
        self.last_completed: T | None = None  # the frame whose last byte was just written

    @property
    def has_bytes(self) -> bool:
        """True while there is something to write (the loop wants EPOLLOUT exactly then)."""
        return bool(self._chunks) or self._pending is not None

    @property
    def mid_message(self) -> bool:
        """True while a begun message still has bytes to write."""
        return bool(self._chunks)

    @property
    def in_flight(self) -> int:
        """Frames held: in flight plus pending (0..2)."""
        return (self._in_flight is not None) + (self._pending is not None)

    def held(self) -> list[T]:
        """The frames this outbox keeps alive (at most two)."""
        return [o.token for o in (self._in_flight, self._pending) if o is not None]

    def offer(self, outgoing: Outgoing[T], now_ns: int, superseded: int = 0) -> None:
        """A new frame for this subscriber; newest wins over an unsent pending one.

        ``superseded`` frames of the camera came and went before this one could be offered:
        they count as offered and dropped, so drops always equal the reader's seq gaps.
        """
        self.stats.offered += 1 + superseded
        if superseded:
            self.stats.dropped[SUPERSEDED] += superseded
        if not self._limiter.admit(now_ns):
            self.stats.dropped[RATE_LIMIT] += 1
            self._let_go(outgoing)
            return
        if self._pending is not None:
            self.stats.dropped[SLOW_READER] += 1
            self._let_go(self._pending)
        self._pending = outgoing

    def _let_go(self, outgoing: Outgoing[T] | None) -> None:
        if outgoing is not None and self.release is not None:
            self.release(outgoing.token)

    def chunks(self) -> list[memoryview]:
        """The bytes to write next: the rest of the in-flight message, or the next one begun."""
        if not self._chunks and self._pending is not None:
            outgoing, self._pending = self._pending, None
            missed = 0 if self._last_seq is None else max(0, outgoing.seq - self._last_seq - 1)
            self._chunks = outgoing.encode(missed)
            self._in_flight = outgoing
            self._last_seq = outgoing.seq
        return self._chunks

    def wrote(self, count: int) -> bool:
        """``count`` bytes of ``chunks()`` were written; True when the message completed."""
        chunks = self._chunks
        self.stats.bytes_sent += count
        while count and chunks:
            head = chunks[0]
            if count >= len(head):
                count -= len(head)
                chunks.pop(0)
            else:
                chunks[0] = head[count:]
                count = 0
        if chunks or self._in_flight is None:
            return False
        self.last_completed = self._in_flight.token
        self._in_flight = None
        self.stats.sent += 1
        return True

    def reader_gone(self) -> None:
        """The reader left: whatever was in flight or pending is lost; the next reader starts
        at a message boundary with the newest frame."""
        self.stats.dropped[READER_GONE] += self.in_flight
        self._let_go(self._in_flight)
        self._let_go(self._pending)
        self._chunks, self._in_flight, self._pending = [], None, None
        self._last_seq = None

    def retarget(self, max_fps: float | None) -> None:
        """The subscriber's options changed: new frames follow the new rate limit."""
        self._limiter = RateLimiter(max_fps)

    def drop_pending(self) -> None:
        """Shutting down: forget the frame not yet begun (the in-flight one still finishes)."""
        if self._pending is not None:
            self._let_go(self._pending)
            self._pending = None
            self.stats.dropped[SHUTDOWN] += 1
