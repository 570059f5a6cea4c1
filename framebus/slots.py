"""Shared-memory slot bookkeeping, as pure code: who may still read which slot.

No files, no mappings, no clocks: the decoder threads and the fan-out loop call in with slot
numbers, tokens and byte counts, so every rule here is tested with integers (tests/test_slots.py).

The hold rule (docs/PROTOCOL.md section 12): a reader holds the payload of the last shm message
it began reading until it begins reading the next one. The daemon cannot see a reader's memory,
but it can see how much of what it wrote is still unread in the pipe (FIONREAD), so it knows
which message each reader has begun. From that:

* ``HoldLedger`` keeps, per subscriber, the messages written and not yet released: at most the
  one the reader holds and one it has not begun, because the loop writes a new message only
  when the reader has begun the last one (``may_send``).
* ``SlotPool`` counts references per slot. A slot is reused only at zero references, and a
  claim stamps it with a new token, so a late ``pin`` of a frame whose slot was already reused
  fails instead of pinning someone else's frame.

Bound (per segment, with ``n`` shm subscribers): each subscriber pins at most 3 slots (held,
unread, pending in its outbox), the store's newest frame 1 and the decoder's write in progress
1, so ``3 * n + 2`` slots always leave one free to write; a segment is made for ``n``
rounded up to a power of two (``capacity``), so joins rarely make a new one. A subscriber of several
cameras has one ledger for its one pipe (at most 2 messages, of any cameras) and one pending
frame per camera, so it too pins at most 3 slots in each camera's segment.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

PINS_PER_SUBSCRIBER = 3  # held by the reader, unread in the pipe, pending in the outbox
SHARED_PINS = 2  # the store's newest frame, the decoder's write in progress


def seats_for(subscribers: int) -> int:
    """Subscribers a segment is made for: ``subscribers`` rounded up to a power of two, so a
    key's segments grow by doubling and all of them together stay under twice the newest."""
    return 1 << (max(1, subscribers) - 1).bit_length()


def capacity(subscribers: int) -> int:
    """Slots of a segment made for ``subscribers``: 3 per seat (``seats_for``) plus the 2
    shared pins, so a writer always finds a free one while at most that many are served."""
    return PINS_PER_SUBSCRIBER * seats_for(subscribers) + SHARED_PINS


@dataclass(frozen=True, slots=True)
class SlotRef:
    """One write into one slot: the slot number and the token stamped on it."""

    slot: int
    token: int


class SlotPool:
    """Reference counts of one segment's slots. Thread-safe: decoder threads claim and release,
    the fan-out loop pins and unpins; the lock is held for a few integer operations only."""

    def __init__(self, count: int, first_token: int = 1) -> None:
        if count < 1:
            raise ValueError("a pool needs at least one slot")
        self._refs = [0] * count
        self._tokens = [0] * count
        self._next_token = first_token
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Slots in the pool."""
        return len(self._refs)

    @property
    def pinned(self) -> int:
        """Slots with at least one reference."""
        return sum(1 for refs in self._refs if refs)

    def references(self) -> int:
        """All references held (a slot pinned twice counts twice)."""
        return sum(self._refs)

    def claim(self) -> SlotRef | None:
        """A free slot with one reference (the claimer's) and a fresh token; None if all are
        pinned. The lowest free slot is taken, so a quiet pool touches few pages."""
        with self._lock:
            for slot, refs in enumerate(self._refs):
                if refs == 0:
                    token = self._next_token
                    self._next_token += 1
                    self._refs[slot], self._tokens[slot] = 1, token
                    return SlotRef(slot, token)
        return None

    def pin(self, ref: SlotRef) -> bool:
        """One more reference to ``ref``, if its slot still holds that write (False: the slot
        was released and may have been rewritten; the frame is gone)."""
        with self._lock:
            if self._refs[ref.slot] == 0 or self._tokens[ref.slot] != ref.token:
                return False
            self._refs[ref.slot] += 1
            return True

    def unpin(self, ref: SlotRef) -> None:
        """Drop one reference; a slot at zero may be claimed again."""
        with self._lock:
            if self._tokens[ref.slot] != ref.token or self._refs[ref.slot] == 0:
                raise RuntimeError(f"unpin of slot {ref.slot} token {ref.token}: not pinned")
            self._refs[ref.slot] -= 1

    def holds(self, ref: SlotRef) -> bool:
        """True while ``ref``'s slot is pinned for that write."""
        return self._refs[ref.slot] > 0 and self._tokens[ref.slot] == ref.token


@dataclass(slots=True)
class _Written(Generic[T]):
    start: int  # stream offset of the message's first byte
    end: int  # stream offset just past its last byte
    item: T


class HoldLedger(Generic[T]):
    """The shm messages one reader may still hold, by their place in the byte stream.

    ``wrote`` records each whole message written; ``consumed(unread)`` takes the pipe's FIONREAD
    and returns the items (pins) the reader has released by beginning a later message. Reading
    any byte of a message ends the hold on every earlier one.
    """

    def __init__(self) -> None:
        self._sent: deque[_Written[T]] = deque()
        self.written = 0  # bytes written to the current reader

    def __len__(self) -> int:
        return len(self._sent)

    def items(self) -> list[T]:
        """What is still held or unread, oldest first. Other threads may ask (the API): the
        deque is copied in one C-level step, so the loop changing it meanwhile is harmless."""
        return [w.item for w in list(self._sent)]

    def wrote(self, length: int, item: T) -> None:
        """A whole message of ``length`` bytes, naming ``item``, went into the pipe."""
        start = self.written
        self.advance(length)
        self.record(start, item)

    def advance(self, count: int) -> None:
        """``count`` more bytes went into the pipe (of a message, or before the ledger began:
        a subscriber that switched transport mid-stream)."""
        self.written += count

    def record(self, start: int, item: T) -> None:
        """The message that began at stream offset ``start`` is now written whole."""
        self._sent.append(_Written(start, self.written, item))

    def consumed(self, unread: int) -> list[T]:
        """The pipe holds ``unread`` bytes: release what the reader is done with."""
        if not 0 <= unread <= self.written:
            raise ValueError(f"unread {unread} outside 0..{self.written}")
        read = self.written - unread
        released: list[T] = []
        while len(self._sent) >= 2 and read > self._sent[1].start:
            released.append(self._sent.popleft().item)
        return released

    def may_send(self, unread: int) -> bool:
        """True when a new message may be written: the reader has begun the last one, so at
        most one unread message is ever in the pipe."""
        return not self._sent or self.written - unread > self._sent[-1].start

    def clear(self) -> list[T]:
        """The reader left: everything it held is released; the next reader starts at 0."""
        items = [w.item for w in self._sent]
        self._sent.clear()
        self.written = 0
        return items
