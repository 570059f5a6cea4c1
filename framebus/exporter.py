"""Per rendition, one copy of each frame into shared memory, for every shm subscriber of it.

The store calls ``export`` in the decoder thread after converting a frame and before publishing
it, and ``release`` when a newer frame replaces it; the fan-out loop registers subscribers
(``want``/``unwant``) and pins the slots it names in messages. A key is what subscribers can
share a segment by: camera, rendition, the directory of their FIFOs, and the permissions. A
multi-camera subscriber wants one key per camera, so each camera's frames live in that
camera's own segment, shared with every other shm subscriber of the key.

The exporter knows frames only as (camera, seq, payloads): it does not import the store, which
imports it (tests/test_layers.py).

Invariants:

* One segment per key at a time, made with ``room`` seats: the most live subscribers the key
  has had, rounded up to a power of two, ``capacity(room) = 3 * room + 2`` slots. A change of
  frame geometry (size, format, layout) or more live subscribers than ``room`` makes a new
  segment; the old one is retired: no new frames, and its file is unlinked once none of its
  slots is pinned (a reader may still have a message naming it unread).
* The memory bound holds with readers that never read (PROTOCOL.md section 12): a stuck
  reader pins the segment it was sent, but rooms only double, so the segments a key's stuck
  readers can keep (one of each room, 1, 2, 4 ... ``room``) add up to less than twice the
  newest one plus 2 slots per doubling, however subscribers come and go.
* Each subscriber has a ``Seat`` per key; seats are served (``admitted``) in the order they
  came, the first ``room`` of them, so a subscriber once served stays served. A join whose
  bigger segment cannot be made (a full tmpfs) leaves everyone served as before: only the
  seats past ``room`` wait, with the error, and the key retries at most once a second.
* A removed subscriber's seat counts until its pins are released (``leave``, then
  ``vacate``): pins parked for a reader's last frame never share a segment's room with a
  joiner, so ``capacity(room)`` always leaves a free slot.
* A key whose segment cannot be made at all records the error (``status``) and retries at
  most once a second; its subscribers get no frames meanwhile, every other key carries on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from framebus.rendition import Payload, Rendition
from framebus.shm import Segment, ShmError, ShmFrame, make_segment, segment_mode, slot_size_for
from framebus.slots import capacity, seats_for

RETRY_S = 1.0
WAITING = ("waiting for room in the shm segment (a subscriber that left frees its seat "
           "within 2 s)")


@dataclass(frozen=True, slots=True)
class ShmKey:
    """What shm subscribers share one segment by. Looked up for every frame and subscriber:
    the hash is computed once (a dataclass would hash the rendition and the path each time)."""

    camera: str
    rendition: Rendition
    directory: Path
    mode: int
    group: str | None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.camera, self.rendition, self.directory,
                                                self.mode, self.group)))

    def __hash__(self) -> int:
        return self._hash


class Seat:
    """One subscriber's place at one key (a multi-camera subscriber has one per camera)."""

    __slots__ = ("admitted", "key", "leaving")

    def __init__(self, key: ShmKey) -> None:
        self.key = key  # the exporter's own key object: per-frame lookups match by identity
        self.admitted = False  # among the first ``room`` seats: sent frames from the segment
        self.leaving = False  # removed; its place counts until its pins are released


@dataclass
class ExportState:
    """One key's segment, seats and failures (read by metrics and the API)."""

    segment: Segment | None = None
    room: int = 0  # seats the segment was made for: it never shrinks while the key lives
    seats: list[Seat] = field(default_factory=list)  # in the order they came
    error: str = ""  # why the key has no usable segment: every subscriber of it waits
    waiting: str = ""  # why a bigger segment could not be made: only seats past room wait
    failures: Counter[str] = field(default_factory=Counter)
    exported: int = 0
    segments_made: int = 0
    _retry_at: float = 0.0

    @property
    def subscribers(self) -> int:
        """Live subscribers (not leaving): what the segment is sized for."""
        return sum(not seat.leaving for seat in self.seats)

    def admit(self) -> None:
        """The first ``room`` seats are served. Seats only move forward and room only grows,
        so a seat once admitted stays admitted."""
        for index, seat in enumerate(self.seats):
            seat.admitted = index < self.room


class ShmExporter:
    """The shm side of the store: segments per key, the copy into a slot, pins of the newest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, dict[ShmKey, ExportState]] = {}  # copy-on-write per camera
        # each segment's tokens start at a new multiple of 2**40: no two writes share a token
        self._token_blocks = itertools.count(1)
        self._retired: list[Segment] = []  # unlinked once no slot of theirs is pinned

    def want(self, key: ShmKey) -> Seat:
        """One more subscriber of ``key``: its seat, last in line."""
        with self._lock:
            states = dict(self._keys.get(key.camera, {}))
            kept = next((k for k in states if k == key), key)
            state = states.setdefault(kept, ExportState())
            seat = Seat(kept)
            state.seats.append(seat)
            state.admit()
            self._keys[key.camera] = states
            return seat

    def leave(self, seat: Seat) -> None:
        """The subscriber was removed: the segment is no longer sized for it, but its place
        stays taken until ``vacate`` (its pins may still be parked)."""
        seat.leaving = True

    def vacate(self, seat: Seat) -> None:
        """The seat's pins are all released: the seats behind it move up; the last one
        retires the segment."""
        seat.leaving = True
        with self._lock:
            states = dict(self._keys.get(seat.key.camera, {}))
            state = states.get(seat.key)
            if state is None or seat not in state.seats:
                return
            state.seats.remove(seat)
            seat.admitted = False
            if not state.seats:
                del states[seat.key]
                if state.segment is not None:
                    self._retire(state.segment)
            state.admit()
            self._keys[seat.key.camera] = states
        self._reap()

    def error(self, seat: Seat) -> str:
        """Why this seat gets no frames ("" while it does)."""
        state = self.state(seat.key)
        if state is None:
            return ""
        if state.error:
            return state.error
        return "" if seat.admitted else state.waiting or WAITING

    def state(self, key: ShmKey) -> ExportState | None:
        """The key's current state (None once nobody wants it)."""
        return self._keys.get(key.camera, {}).get(key)

    def states(self) -> list[tuple[ShmKey, ExportState]]:
        """Every key and its state."""
        return [(k, s) for states in list(self._keys.values()) for k, s in list(states.items())]

    def export(self, camera: str, seq: int,
               renditions: Mapping[Rendition, Payload]) -> dict[ShmKey, ShmFrame]:
        """Decoder thread: copy each wanted rendition of frame ``seq`` of ``camera`` into a
        free slot of its key's segment. The copies come back pinned once, for the caller (the
        store's newest frame), until it passes them to ``release``."""
        copies: dict[ShmKey, ShmFrame] = {}
        for key, state in list(self._keys.get(camera, {}).items()):
            payload = renditions.get(key.rendition)
            if payload is None or state.subscribers <= 0:  # only leaving seats: no new frames
                continue
            segment = self._segment_for(key, state, payload)
            if segment is None:
                continue
            ref = segment.pool.claim()
            if ref is None:  # cannot happen while room holds; counted if it does
                state.failures["no_free_slot"] += 1
                continue
            location = segment.write(ref, seq, payload)
            copies[key] = ShmFrame(segment, ref, location)
            state.exported += 1
        return copies

    def release(self, shm_frames: Iterable[ShmFrame]) -> None:
        """A newer frame replaced the one these copies are of: drop the pins ``export`` gave
        them (whoever was sent them keeps its own)."""
        for shm in shm_frames:
            shm.segment.pool.unpin(shm.ref)
        if self._retired:
            self._reap()

    def close(self) -> None:
        """Daemon exit: unlink every segment."""
        with self._lock:
            for _, state in self.states():
                if state.segment is not None:
                    state.segment.unlink()
            self._keys.clear()
            for segment in self._retired:
                segment.unlink()
            self._retired.clear()

    def _segment_for(self, key: ShmKey, state: ExportState, payload: Payload) -> Segment | None:
        segment = state.segment
        geometry = (payload.format, payload.width, payload.height, payload.nbytes)
        fits = segment is not None and segment.geometry == geometry
        if fits and state.room >= state.subscribers:
            return segment
        now = time.monotonic()
        if now < state._retry_at:
            return segment if fits else None
        # rooms double: a key's segments, stuck readers' included, stay under twice the newest
        room = max(state.room, seats_for(state.subscribers))
        try:
            made = make_segment(key.directory, slot_size_for(payload.nbytes), capacity(room),
                                segment_mode(key.mode), key.group, next(self._token_blocks) << 40)
            made.geometry = geometry
        except ShmError as exc:
            state._retry_at = now + RETRY_S
            state.failures[exc.reason] += 1
            if fits:  # a join: who is served carries on from the old segment, joiners wait
                state.waiting = str(exc)
                return segment
            state.error = str(exc)
            return None
        with self._lock:
            if segment is not None:
                self._retire(segment)
            if not state.seats:  # the last subscriber left while we made it
                made.unlink()
                return None
            state.segment, state.room, state.error, state.waiting = made, room, "", ""
            state.admit()
            state.segments_made += 1
        return made

    def _retire(self, segment: Segment) -> None:
        segment.retired = True
        self._retired.append(segment)

    def _reap(self) -> None:
        # A retired segment gains no pins (only slots with references can be pinned), so one
        # seen at zero references stays there: unlink it. Until then, messages naming it may
        # still be unread in some pipe, and their readers must find the file.
        with self._lock:
            for segment in [s for s in self._retired if s.pool.references() == 0]:
                segment.unlink()
                self._retired.remove(segment)
