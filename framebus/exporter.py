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

* One segment per key at a time, sized ``capacity(n)`` slots for its ``n`` subscribers; a
  change of frame geometry (size, format, layout) or more subscribers than it was made for
  makes a new segment. The old one is retired: no new frames, and its file is unlinked once
  none of its slots is pinned (a reader may still have a message naming it unread).
* A key whose segment cannot be made records the error (``status``) and retries at most once a
  second; its subscribers get no frames meanwhile, every other key and subscriber carries on.
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
from framebus.slots import capacity

RETRY_S = 1.0


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


@dataclass
class ExportState:
    """One key's segment, subscriber count and failures (read by metrics and the API)."""

    subscribers: int = 0
    segment: Segment | None = None
    error: str = ""
    failures: Counter[str] = field(default_factory=Counter)
    exported: int = 0
    segments_made: int = 0
    _retry_at: float = 0.0


class ShmExporter:
    """The shm side of the store: segments per key, the copy into a slot, pins of the newest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, dict[ShmKey, ExportState]] = {}  # copy-on-write per camera
        # each segment's tokens start at a new multiple of 2**40: no two writes share a token
        self._token_blocks = itertools.count(1)
        self._retired: list[Segment] = []  # unlinked once no slot of theirs is pinned

    def want(self, key: ShmKey) -> ShmKey:
        """One more subscriber of ``key``; returns the key object the exporter keeps for it
        (equal to ``key``), which its subscribers use so lookups match by identity."""
        with self._lock:
            states = dict(self._keys.get(key.camera, {}))
            kept = next((k for k in states if k == key), key)
            state = states.setdefault(kept, ExportState())
            state.subscribers += 1
            self._keys[key.camera] = states
            return kept

    def unwant(self, key: ShmKey) -> None:
        """One subscriber fewer; the last one retires the segment."""
        with self._lock:
            states = dict(self._keys.get(key.camera, {}))
            state = states.get(key)
            if state is None:
                return
            state.subscribers -= 1
            if state.subscribers <= 0:
                del states[key]
                if state.segment is not None:
                    self._retire(state.segment)
            self._keys[key.camera] = states
        self._reap()

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
            if payload is None or state.subscribers <= 0:
                continue
            segment = self._segment_for(key, state, payload)
            if segment is None:
                continue
            ref = segment.pool.claim()
            if ref is None:  # cannot happen while capacity() holds; counted if it does
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
        slots = capacity(state.subscribers)
        geometry = (payload.format, payload.width, payload.height, payload.nbytes)
        if segment is not None and segment.geometry == geometry and segment.pool.count >= slots:
            return segment
        now = time.monotonic()
        if now < state._retry_at:
            return None
        try:
            made = make_segment(key.directory, slot_size_for(payload.nbytes), slots,
                                segment_mode(key.mode), key.group, next(self._token_blocks) << 40)
            made.geometry = geometry
        except ShmError as exc:
            state._retry_at = now + RETRY_S
            state.failures[exc.reason] += 1
            state.error = str(exc)
            return None
        with self._lock:
            if segment is not None:
                self._retire(segment)
            if state.subscribers <= 0:  # the last subscriber left while we made it
                made.unlink()
                return None
            state.segment, state.error = made, ""
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
