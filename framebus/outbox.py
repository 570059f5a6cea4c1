"""Per-subscriber send state, as pure code: one in-flight message and one pending slot per
stream (camera: a subscriber may carry several, PROTOCOL.md section 2).

No file descriptors, no clocks: the fan-out loop passes the time in and does the writing.

Invariants:

* A subscriber holds at most 1 + S frames for S streams: the one being written (possibly
  partly) and the newest one waiting per stream. Memory does not grow with the reader's
  slowness.
* Streams are served fairly: pending frames go out in the order their streams began to
  wait, and a newer frame replaces its stream's pending one in place, so a 25 fps camera
  never starves a 5 fps one (between two frames of a stream, every other waiting stream gets
  one).
* A message, once its first byte is written, is finished before anything else is written:
  ``chunks()`` always continues the in-flight message. Drops only happen at frame boundaries.
* Accounting is exact, in total and per stream (``stream_stats``): ``offered == sent +
  dropped + in_flight`` where ``in_flight`` counts the in-flight and pending frames. Dropped
  frames have a reason:
  ``slow_reader`` (replaced in the pending slot), ``rate_limit`` (skipped for ``max_fps``),
  ``reader_gone`` (lost when the reader left), ``shutdown`` (not begun before stopping) or
  ``superseded`` (replaced in the store before the loop could offer it).
* ``missed`` in each sent header is the number of frames of the camera since the previous
  sent one of the same camera, so the gaps a reader sees in each camera's ``seq`` equal the
  drops counted here for that stream.
* STATE messages (``offer_state``) wait in a slot of their own per stream, a newer one
  replacing an older one, and go out before waiting frames (they are small and say why frames
  stopped). They are not frames: no rate limit, no seq, no part in the frame counters.
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
    stream: str = ""  # the camera: seq, missed, pending slot and rate limit are per stream
    payload_bytes: int = 0  # the frame's pixels, in the FIFO after the header or in shm


@dataclass
class OutboxStats:
    """Plain counters, read by metrics at scrape time."""

    offered: int = 0
    sent: int = 0
    bytes_sent: int = 0  # written to the FIFO: headers and payloads, or (shm) headers only
    payload_bytes: int = 0  # payloads of the frames sent, whichever way they went
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
        self.stream_stats: dict[str, OutboxStats] = {}  # the only counters (see ``stats``)
        self.release = release
        self._max_fps = max_fps
        self._limiters: dict[str, RateLimiter] = {}
        self._chunks: list[memoryview] = []  # the rest of the in-flight message
        self._in_flight: Outgoing[T] | None = None
        self._in_flight_stats = OutboxStats()  # its stream's counters (set when it is begun)
        self._pending: dict[str, Outgoing[T]] = {}  # per stream, in the order they began waiting
        self._states: dict[str, Outgoing[T]] = {}  # STATE messages waiting, per stream
        self._uncounted = OutboxStats()  # a STATE message's counters: it is not a frame
        self._last_seq: dict[str, int] = {}  # per stream: seq of the last message begun
        self.last_completed: T | None = None  # the frame whose last byte was just written

    @property
    def stats(self) -> OutboxStats:
        """The totals over every stream, summed when asked (scrape time), so the fan-out path
        counts each event once. Safe to call from other threads: each dict is copied in one
        C-level step before it is read, so the loop adding a stream or a reason meanwhile
        cannot break the iteration."""
        total = OutboxStats()
        for stats in list(self.stream_stats.values()):
            total.offered += stats.offered
            total.sent += stats.sent
            total.bytes_sent += stats.bytes_sent
            total.payload_bytes += stats.payload_bytes
            total.dropped.update(dict(stats.dropped))
        return total

    @property
    def has_bytes(self) -> bool:
        """True while there is something to write (the loop wants EPOLLOUT exactly then)."""
        return bool(self._chunks) or bool(self._pending) or bool(self._states)

    @property
    def mid_message(self) -> bool:
        """True while a begun message still has bytes to write."""
        return bool(self._chunks)

    @property
    def in_flight(self) -> int:
        """Frames held: in flight plus pending (0 .. 1 + streams)."""
        return (self._in_flight is not None) + len(self._pending)

    def held(self) -> list[T]:
        """The frames this outbox keeps alive."""
        return [outgoing.token for outgoing in self._holding()]

    def _stats_of(self, stream: str) -> OutboxStats:
        stats = self.stream_stats.get(stream)
        if stats is None:  # not setdefault: that would build a new OutboxStats every call
            stats = self.stream_stats[stream] = OutboxStats()
        return stats

    def _count(self, stream: str, reason: str | None = None, offered: int = 0,
               dropped: int = 1) -> None:
        stats = self._stats_of(stream)
        stats.offered += offered
        if reason is not None:
            stats.dropped[reason] += dropped

    def offer(self, outgoing: Outgoing[T], now_ns: int, superseded: int = 0) -> None:
        """A new frame for this subscriber; newest wins over its stream's unsent pending one.

        ``superseded`` frames of the camera came and went before this one could be offered:
        they count as offered and dropped, so drops always equal the reader's seq gaps.
        """
        stream = outgoing.stream
        self._count(stream, offered=1 + superseded)
        if superseded:
            self._count(stream, SUPERSEDED, dropped=superseded)
        limiter = self._limiters.get(stream)
        if limiter is None:
            limiter = self._limiters[stream] = RateLimiter(self._max_fps)
        if not limiter.admit(now_ns):
            self._count(stream, RATE_LIMIT)
            self._let_go(outgoing)
            return
        replaced = self._pending.get(stream)
        if replaced is not None:
            self._count(stream, SLOW_READER)
            self._let_go(replaced)
        self._pending[stream] = outgoing  # a replaced one keeps its stream's place in line

    def offer_state(self, outgoing: Outgoing[T]) -> None:
        """A STATE message for ``outgoing.stream``; replaces one of that stream still waiting
        (only the newest state matters)."""
        self._let_go(self._states.pop(outgoing.stream, None))
        self._states[outgoing.stream] = outgoing

    def _let_go(self, outgoing: Outgoing[T] | None) -> None:
        if outgoing is not None and self.release is not None:
            self.release(outgoing.token)

    def chunks(self) -> list[memoryview]:
        """The bytes to write next: the rest of the in-flight message, or the next one begun
        (the stream that has waited longest)."""
        if not self._chunks and self._states:
            stream = next(iter(self._states))
            outgoing = self._states.pop(stream)
            self._chunks = outgoing.encode(0)
            self._in_flight, self._in_flight_stats = outgoing, self._uncounted
        elif not self._chunks and self._pending:
            stream = next(iter(self._pending))
            outgoing = self._pending.pop(stream)
            last = self._last_seq.get(stream)
            missed = 0 if last is None else max(0, outgoing.seq - last - 1)
            self._chunks = outgoing.encode(missed)
            self._in_flight, self._in_flight_stats = outgoing, self._stats_of(stream)
            self._last_seq[stream] = outgoing.seq
        return self._chunks

    def wrote(self, count: int) -> bool:
        """``count`` bytes of ``chunks()`` were written; True when the message completed."""
        chunks = self._chunks
        if self._in_flight is not None:
            self._in_flight_stats.bytes_sent += count
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
        done, self._in_flight = self._in_flight, None
        self.last_completed = done.token
        self._in_flight_stats.sent += 1
        self._in_flight_stats.payload_bytes += done.payload_bytes
        return True

    def reader_gone(self) -> None:
        """The reader left: whatever was in flight or pending is lost; the next reader starts
        at a message boundary with the newest frames."""
        for outgoing in self._holding():
            if outgoing is not self._in_flight or self._in_flight_stats is not self._uncounted:
                self._count(outgoing.stream, READER_GONE)  # frames only, not a STATE message
            self._let_go(outgoing)
        self._chunks, self._in_flight, self._pending = [], None, {}
        self._states.clear()
        self._last_seq.clear()

    def _holding(self) -> list[Outgoing[T]]:
        return ([] if self._in_flight is None else [self._in_flight]) + list(
            self._pending.values())

    def retarget(self, max_fps: float | None) -> None:
        """The subscriber's options changed: new frames follow the new rate limit."""
        self._max_fps = max_fps
        self._limiters.clear()

    def drop_pending(self) -> None:
        """Shutting down: forget the frames not yet begun (the in-flight one still finishes)."""
        for outgoing in self._pending.values():
            self._let_go(outgoing)
            self._count(outgoing.stream, SHUTDOWN)
        self._pending = {}
        self._states.clear()
