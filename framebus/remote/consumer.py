"""Remote consumers: frames of a camera on another host, newest-wins end to end.

:class:`RemoteSubscriber` gives the same :class:`framebus.reading.Frame` as
:class:`framebus.client.Subscriber` (numpy views, header, ``missed``) from a zenoh
subscription on ``framebus/<host or *>/<camera>/<rendition or *>``. Zenoh's default handler is
a 256-deep queue: a reader at 5 fps of a 25 fps 720p stream would buffer hundreds of MiB and
fall tens of seconds behind. So the subscription always delivers into a ring of one here
(:class:`_Ring`: the callback replaces what the reader has not taken, counting it as dropped),
and a frame whose capture clock is older than ``max_age`` on arrival is dropped too (socket
buffers after a stall hold old frames). ``missed`` counts every frame of the camera this
reader did not get, wherever it was lost, from ``seq`` (mapping.MissCounter).

With ``host``/``rendition`` left out, the first key that delivers is kept and samples of other
keys are ignored: give ``rendition`` where a camera is exported in several.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from framebus.errors import ProtocolError
from framebus.reading import RESTART, Frame, StreamEvent
from framebus.remote.mapping import MissCounter, decode_sample, selector, split_key
from framebus.remote.session import open_session
from framebus.remote.settings import RemoteConfig
from framebus.wire import PREFIX_LEN, StateHeader, decode_state_reason, state_name

# prefix + header up to flags (u16, little-endian: STATE is in its first byte): camera, seq,
# epoch, missed, pts, time base, capture and publish clocks, format, capture source
_FLAGS_AT = PREFIX_LEN + struct.calcsize("<64sQQQqIIqqBB")
_STATE_FLAG = 4
_STATES_KEPT = 16


@dataclass
class RemoteStats:
    """Counters a remote consumer can show."""

    frames: int = 0
    bytes: int = 0
    missed: int = 0  # frames of the camera never delivered here, by seq
    ring_dropped: int = 0  # replaced in the ring of one before this reader took them
    too_old: int = 0  # arrived older than max_age: dropped
    invalid: int = 0  # samples that are not framebus messages: dropped
    restarts: int = 0
    states: int = 0


class _Ring:
    """A ring of one, filled by zenoh's callback thread, emptied by the reader; STATE samples
    keep a short queue of their own so a frame cannot overwrite one."""

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self.cond = threading.Condition()
        self.sample: Any = None
        self.states: collections.deque[Any] = collections.deque(maxlen=_STATES_KEPT)
        self.key: str | None = None  # the key kept once one delivered (wildcard selectors)
        self.replaced = 0
        self.bad_keys = 0  # samples on keys that are not framebus data keys: never kept
        self.closed = False
        self.wake = wake  # asyncio: hand the wake-up to the event loop

    def put(self, sample: Any) -> None:
        key = str(sample.key_expr)
        if key != self.key:  # a key not yet kept: a wildcard selector lets any chunk by
            try:
                split_key(key)
            except ProtocolError:
                with self.cond:
                    self.bad_keys += 1
                return
        attachment = sample.attachment
        with self.cond:
            if self.closed or (self.key is not None and key != self.key):
                return
            self.key = key
            raw = b"" if attachment is None else attachment.to_bytes()
            if len(raw) > _FLAGS_AT and raw[_FLAGS_AT] & _STATE_FLAG:
                self.states.append((raw, sample.payload))
            else:
                self.replaced += self.sample is not None
                self.sample = (raw, sample.payload)
            self.cond.notify()
        if self.wake is not None:
            self.wake()

    def take(self) -> tuple[str, Any, Any] | None:
        """A waiting STATE sample first, else the newest frame sample; None if none waits."""
        if self.states:
            raw, payload = self.states.popleft()
            return "state", raw, payload
        if self.sample is not None:
            (raw, payload), self.sample = self.sample, None
            return "frame", raw, payload
        return None


class RemoteCore:
    """The state both the blocking and the asyncio remote subscriber share."""

    def __init__(
        self,
        camera: str,
        *,
        host: str | None = None,
        rendition: str | None = None,
        config: RemoteConfig | None = None,
        connect: list[str] | None = None,
        session: Any = None,
        max_age: float | None = None,
        timeout: float | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        self.config = config or RemoteConfig()
        self.camera = camera
        self.selector = selector(camera, host, rendition)
        self.max_age_ns = int((max_age or self.config.max_age) * 1e9)
        self.timeout = timeout
        self.on_event = on_event
        self.stats = RemoteStats()
        self.states: dict[str, StreamEvent] = {}
        self._misses = MissCounter()
        self._instance = 0  # the daemon process of the last frame or state taken (0: none)
        self._own_session = session is None
        self._session = session if session is not None else open_session(
            self.config, connect=connect, listen=[])  # remote.listen is the bridge's
        self._ring = self._make_ring()
        try:
            self._subscriber = self._session.declare_subscriber(self.selector, self._ring.put)
        except Exception:
            self.close()
            raise

    def _make_ring(self) -> _Ring:
        return _Ring()

    @property
    def key(self) -> str | None:
        """The key frames come from (set by the first sample)."""
        return self._ring.key

    def close(self) -> None:
        """Undeclare the subscription (and close the session if this subscriber opened it)."""
        with self._ring.cond:
            self._ring.closed = True
            self._ring.cond.notify_all()
        subscriber = getattr(self, "_subscriber", None)
        if subscriber is not None:
            subscriber.undeclare()
            self._subscriber = None
        if self._own_session and self._session is not None:
            self._session.close()
            self._session = None

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is not None and timeout < 0 else timeout
        return None if timeout is None else time.monotonic() + timeout

    def _accept(self, kind: str, raw: bytes, payload: Any) -> Frame | None:
        """A sample taken from the ring: a frame to deliver, or None (a state, a dropped or
        invalid sample)."""
        with self._ring.cond:  # zenoh's thread adds to it
            self.stats.ring_dropped, self._ring.replaced = (
                self.stats.ring_dropped + self._ring.replaced, 0)
            self.stats.invalid, self._ring.bad_keys = (
                self.stats.invalid + self._ring.bad_keys, 0)
        try:
            message = decode_sample(raw, memoryview(payload.to_bytes()))
        except ProtocolError:
            self.stats.invalid += 1
            return None
        header = message.header
        now = time.monotonic_ns()
        if isinstance(header, StateHeader):
            self._restart_check(header.instance, now)
            self.stats.states += 1
            event = StreamEvent(state_name(header.state), header.camera,
                                decode_state_reason(message.payload), header.epoch, header.seq,
                                header.instance, now)
            self.states[header.camera] = event
            self._emit(event)
            return None
        if time.time_ns() - header.capture_time_ns > self.max_age_ns:
            self.stats.too_old += 1
            return None
        self._restart_check(header.instance, now)
        missed = self._misses.take(header)
        if missed is None:
            return None
        self.stats.frames += 1
        self.stats.bytes += len(message.payload)
        self.stats.missed += missed
        return Frame(dataclasses.replace(header, missed=missed), message.payload, now)

    def _restart_check(self, instance: int, now: int) -> None:
        # against the last instance seen in a frame *or* a state: a new daemon's STATE before
        # its first frame is one restart, not one for the state and another for the frame
        if not instance:
            return
        if self._instance and self._instance != instance:
            self.stats.restarts += 1
            self._emit(StreamEvent(RESTART, "", "", 0, 0, instance, now))
        self._instance = instance

    def _emit(self, event: StreamEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


class RemoteSubscriber(RemoteCore):
    """Frames of ``camera`` from whichever host exports it (blocking; see
    :class:`framebus.remote.aio.AsyncRemoteSubscriber` for asyncio).

    ``config`` (a :class:`RemoteConfig`, e.g. ``load_config(path).remote``) or ``connect``
    (zenoh endpoints such as ``["tcp/10.0.0.5:7447"]``) say how to reach the network;
    ``session`` shares an open zenoh session instead. ``timeout`` bounds each read
    (TimeoutError; None waits forever). Frames are valid until closed: each owns its bytes.
    """

    def __enter__(self) -> RemoteSubscriber:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def read(self, timeout: float | None = -1.0) -> Frame | None:
        """The newest frame not older than ``max_age``; None once closed."""
        deadline = self._deadline(timeout)
        ring = self._ring
        while True:
            with ring.cond:
                while (taken := ring.take()) is None:
                    if ring.closed:
                        return None
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no frame from {self.selector} within the timeout")
                    ring.cond.wait(left)
            frame = self._accept(*taken)
            if frame is not None:
                return frame
