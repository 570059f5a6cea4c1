"""The reading core shared by the blocking client (framebus.client.Subscriber) and the asyncio
one (framebus.aio.AsyncSubscriber): a FIFO, its FrameReader, the shm mappings and the
statistics, with every wait handed back to the caller (``Wait``) instead of made here, so one
code path serves ``poll`` and the event loop alike. See framebus.client for the FIFO semantics
it relies on."""


import fcntl
import logging
import os
import select
import stat
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from framebus.errors import FifoError, ProtocolError
from framebus.framing import FrameReader
from framebus.shm import SegmentMaps
from framebus.wire import (
    DEFAULT_MAX_PAYLOAD_LEN,
    FrameHeader,
    Message,
    PixelFormat,
    Plane,
    PlaneShape,
    StateHeader,
    packed_layout,
    plane_shapes,
    state_name,
)

_APPEAR_POLL_S = 0.05  # how often to look for a FIFO that does not exist yet
# While no writer has attached, how often to check that the path still names the FIFO we
# hold open (a restarted daemon may have made a new one there: PROTOCOL.md section 10).
_REPLACED_CHECK_S = 0.5
log = logging.getLogger("framebus.client")
# said once per absence, the wait going on: a mistyped path must not look like a silent daemon
MISSING_FIFO = ("%s does not exist (yet): waiting for the daemon to make it (is framebus "
                "running, with a subscriber whose FIFO is this path? `framebus status` lists them)")
T = TypeVar("T")


@dataclass(slots=True)  # not frozen: built for every message, and frozen costs 7x (see wire)
class Frame:
    """One received frame: its header, its payload, and numpy views of the pixels."""

    header: FrameHeader
    payload: memoryview
    received_mono_ns: int
    segments: SegmentMaps | None = None  # shm: where the payload is mapped

    def intact(self) -> bool:
        """True while the payload is the frame the header names: always for FIFO frames; for
        shm frames, the slot's stamp still matches (the daemon keeps it so until the next
        read, so a False here means the hold rule was broken)."""
        return self.segments is None or self.segments.intact(self.header)

    @property
    def camera(self) -> str:
        """Name of the camera the frame came from."""
        return self.header.camera

    @property
    def seq(self) -> int:
        """Per-camera sequence number."""
        return self.header.seq

    @property
    def missed(self) -> int:
        """Frames of this camera this subscriber missed since its previous frame."""
        return self.header.missed

    @property
    def instance(self) -> int:
        """The daemon process that sent the frame (0 from a writer older than revision 1.2):
        seq and epoch are comparable only between frames of one instance."""
        return self.header.instance

    @property
    def latency_ns(self) -> int:
        """Publish (daemon, CLOCK_MONOTONIC) to fully read (here), same host only."""
        return self.received_mono_ns - self.header.publish_mono_ns

    @property
    def planes(self) -> tuple[np.ndarray, ...]:
        """One zero-copy view per plane: (h, w, 3) packed RGB, (h, w) luma/gray, (h/2, w/2, 2)
        interleaved NV12 chroma, (h/2, w/2) I420 chroma; a 1-D byte array for jpeg."""
        h = self.header
        if not h.format.is_raw:
            return (np.frombuffer(self.payload, dtype=np.uint8),)
        shapes = plane_shapes(h.format, h.width, h.height)
        return tuple(_plane_view(self.payload, p, s) for p, s in zip(h.planes, shapes, strict=True))

    @property
    def array(self) -> np.ndarray:
        """The frame as one zero-copy array: (h, w, 3) for bgr24/rgb24, (h, w) for gray, the
        encoded bytes for jpeg, and the OpenCV-style (h*3/2, w) layout for yuv420p/nv12 when the
        size is even and the planes are packed (otherwise use ``planes``)."""
        h = self.header
        if h.format in (PixelFormat.YUV420P, PixelFormat.NV12):
            packed, size = packed_layout(h.format, h.width, h.height)
            if h.width % 2 or h.height % 2 or h.planes != packed:
                raise ValueError(f"{h.format} {h.width}x{h.height} has no single-array view; "
                                 "use .planes")
            return np.ndarray((h.height * 3 // 2, h.width), np.uint8, self.payload[:size])
        return self.planes[0]


def _plane_view(payload: memoryview, plane: Plane, shape: PlaneShape) -> np.ndarray:
    width = shape.row_bytes // shape.channels
    if shape.channels == 1:
        dims: tuple[int, ...] = (shape.rows, width)
        strides: tuple[int, ...] = (plane.stride, 1)
    else:
        dims, strides = (shape.rows, width, shape.channels), (plane.stride, shape.channels, 1)
    return np.ndarray(dims, np.uint8, payload, plane.offset, strides)


RESTART = "restart"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What a stream says besides frames: a camera's state (a STATE message: ``kind`` is
    ``streaming``, ``reconnecting``, ``down``, ``idle`` or ``unknown(N)``, with the daemon's
    ``reason``), or ``restart``: the daemon writing this FIFO is a new process (``camera`` is
    empty), so every camera's seq and epoch start over."""

    kind: str
    camera: str
    reason: str
    epoch: int
    seq: int
    instance: int
    received_mono_ns: int


@dataclass
class SubscriberStats:
    """Counters a consumer can show: frames and bytes read, FIFO opens, truncated messages."""

    frames: int = 0
    bytes: int = 0
    missed: int = 0
    opens: int = 0
    truncated: int = 0
    stale: int = 0  # shm messages whose slot no longer held their frame: skipped
    replaced: int = 0  # reopens because the path came to name another FIFO (or vanished)
    restarts: int = 0  # a new daemon process began writing into the open FIFO (no EOF seen)
    states: int = 0  # STATE messages received
    last_seq: dict[str, int] = field(default_factory=dict)  # per camera, stale ones included


# What a read waits for, answered by the driver (Subscriber or framebus.aio.AsyncSubscriber):
# ``(fd, seconds)``: until ``fd`` is readable, at most ``seconds`` (None: no limit); the answer
# is True when it is. ``(-1, seconds)``: a plain pause of ``seconds``; the answer is ignored.
Wait = tuple[int, float | None]
ReadSteps = Generator[Wait, bool, Frame | None]
OpenSteps = Generator[Wait, bool, None]


class SubscriberCore:
    """What :class:`Subscriber` and :class:`framebus.aio.AsyncSubscriber` share: the FIFO, the
    message reader, the shm mappings, the statistics, and the whole reading logic.

    That logic is written once, as generators that never block: they open the FIFO without
    blocking, read with ``os.readv`` until a frame is whole, deliver shm payloads, handle EOF
    (reopen, truncated messages) and check that the path still names the held FIFO while no
    writer has come. Whenever they would have to wait they *yield* a :data:`Wait` instead and
    are resumed with its answer. Subscriber answers the waits with ``poll``/``time.sleep``,
    AsyncSubscriber with ``loop.add_reader``/``asyncio.sleep``, so both behave alike to the
    letter. No wait happens inside an ``except`` block, so an exception raised while waiting
    (KeyboardInterrupt, CancelledError, TimeoutError) carries no chained BlockingIOError.

    Every state a generator is suspended in is one a new read can start from, so a read
    abandoned at a wait (cancelled, interrupted) leaves the subscriber usable.
    """

    _may_block = False  # Subscriber: a read with no deadline may block in readv itself
    _told_missing = False  # MISSING_FIFO was logged for the current absence of the path

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        reopen: bool = False,
        max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.reopen = reopen
        self.on_event = on_event
        self.stats = SubscriberStats()
        self.states: dict[str, StreamEvent] = {}  # each camera's last STATE message
        self._max_payload_len = max_payload_len
        self._reader = self._new_reader()
        self._fd = -1
        self._blocking = False  # the descriptor's O_NONBLOCK is cleared
        self._poller = select.poll()
        self._eof = False
        self._writer_seen = False  # read() returns 0 on a FIFO no writer has opened yet
        self._instance: int | None = None  # the writer of the last message since the open
        self._segments = SegmentMaps(self.path.parent)  # replaced at open (realpath)

    def _new_reader(self) -> FrameReader:
        return FrameReader(max_payload_len=self._max_payload_len, reuse_buffer=True)

    def fileno(self) -> int:
        """The FIFO's descriptor (-1 before the first read)."""
        return self._fd

    def close(self) -> None:
        """Close the FIFO; the daemon sees the reader leave."""
        if self._fd >= 0:
            self._poller.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _deadline(self, timeout: float | None) -> float | None:
        """The monotonic deadline of a read given ``timeout`` (negative: the subscriber's)."""
        wait = self.timeout if timeout is not None and timeout < 0 else timeout
        return None if wait is None else time.monotonic() + wait

    def _ready_now(self) -> bool:
        """True if the FIFO is readable (or hung up) at this instant; never waits."""
        return self._fd >= 0 and bool(self._poller.poll(0))

    def _read_steps(self, deadline: float | None) -> ReadSteps:
        """The next whole frame; None at a clean EOF (``reopen=False``)."""
        if self._eof:
            return None
        if self._fd < 0:
            yield from self._open_steps(deadline)
        while True:
            message = self._reader.next_message()  # bytes an earlier read left over
            if message is None:
                if not self._writer_seen:
                    yield from self._wait_steps(deadline)  # silent until a writer attaches
                    self._writer_seen = True
                count = self._read_some(deadline is None)
                if count < 0:  # nothing there yet: wait outside any except block
                    yield from self._wait_steps(deadline)
                    continue
                if count == 0:
                    if not (yield from self._writer_left_steps(deadline)):
                        return None
                    continue
                self._reader.commit(count)
                self.stats.bytes += count
                message = self._reader.next_message()
                if message is None:
                    continue
            frame = self._take(message)
            if frame is not None:
                return frame

    def _take(self, message: Message) -> Frame | None:
        """A message read whole: the frame to deliver, or None (a STATE message, a stale shm
        frame), after noticing a restart of the writer (PROTOCOL.md section 8)."""
        header = message.header
        if header.instance != self._instance:
            if self._instance is not None:
                self._restarted(header.instance)
            self._instance = header.instance
        if isinstance(header, StateHeader):
            self.stats.states += 1
            event = StreamEvent(state_name(header.state), header.camera,
                                bytes(message.payload).decode(), header.epoch, header.seq,
                                header.instance, time.monotonic_ns())
            self.states[header.camera] = event
            self._emit(event)
            return None
        if header.shm is None:
            return self._deliver(header, message.payload, None)
        payload = self._segments.payload(header)
        if payload is not None:
            return self._deliver(header, payload, self._segments)
        self.stats.stale += 1  # received, not delivered: the next missed does not count it
        self.stats.last_seq[header.camera] = header.seq
        return None

    def _restarted(self, instance: int) -> None:
        """A new daemon process writes into the FIFO we still hold: everything known about
        the old one's cameras and segments is void."""
        self.stats.restarts += 1
        self.stats.last_seq.clear()
        self.states.clear()
        self._segments.forget()
        self._emit(StreamEvent(RESTART, "", "a new daemon process writes this FIFO", 0, 0,
                               instance, time.monotonic_ns()))

    def _emit(self, event: StreamEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _read_some(self, may_block: bool) -> int:
        """One ``readv`` into the reader's buffer: the byte count, 0 at EOF, -1 when the FIFO
        is empty. With no deadline, the blocking client blocks in the read itself: one system
        call per message instead of a poll and a read."""
        block = may_block and self._may_block
        if block != self._blocking:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL,
                        flags & ~os.O_NONBLOCK if block else flags | os.O_NONBLOCK)
            self._blocking = block
        try:
            return os.readv(self._fd, [self._reader.writable()])
        except BlockingIOError:
            return -1

    def _deliver(self, header: FrameHeader, payload: memoryview,
                 segments: SegmentMaps | None) -> Frame:
        self.stats.frames += 1
        self.stats.missed += header.missed
        self.stats.last_seq[header.camera] = header.seq
        return Frame(header, payload, time.monotonic_ns(), segments)

    def _writer_left_steps(self, deadline: float | None) -> Generator[Wait, bool, bool]:
        """Handle EOF; return True to keep reading (reopened), False for a clean end."""
        try:
            self._reader.close()
        except ProtocolError:
            if not self.reopen:
                self._eof = True
                raise
            self.stats.truncated += 1
        if not self.reopen:
            self._eof = True
            return False
        self._reader = self._new_reader()
        self.close()
        yield from self._open_steps(deadline)
        return True

    def _open_steps(self, deadline: float | None) -> OpenSteps:
        """Open the FIFO without blocking on a missing writer, pausing while it does not
        exist; TimeoutError if it has not appeared by ``deadline``."""
        while not self._try_open():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"FIFO {self.path} did not appear in time")
            if not self._told_missing:
                self._told_missing = True
                log.warning(MISSING_FIFO, self.path)
            yield -1, _APPEAR_POLL_S if remaining is None else min(_APPEAR_POLL_S, remaining)

    def _try_open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise FifoError(f"{self.path} is not a FIFO")
        self._fd = fd
        self._told_missing = False
        self._blocking = False
        self._writer_seen = False
        self._instance = None
        # segments live in the directory of the FIFO's entry (PROTOCOL.md section 12): resolve
        # a symlinked or relative path now; a reopen forgets the old daemon's mappings
        self._segments = SegmentMaps(Path(os.path.realpath(self.path)).parent)
        self._poller.register(fd, select.POLLIN)
        self.stats.opens += 1
        return True

    def _wait_steps(self, deadline: float | None) -> OpenSteps:
        """Wait until readable (a zero timeout still looks once). While no writer has come,
        wake every _REPLACED_CHECK_S to check that the path still names our FIFO, and
        reopen when it does not: a reader must not wait forever on a deleted inode."""
        while True:
            slice_s = None if self._writer_seen else _REPLACED_CHECK_S
            if deadline is not None:
                remaining = max(0.0, deadline - time.monotonic())
                slice_s = remaining if slice_s is None else min(slice_s, remaining)
            if (yield self._fd, slice_s):
                return
            if not self._writer_seen and self._replaced():
                self.stats.replaced += 1
                self.close()
                yield from self._open_steps(deadline)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no frame on {self.path} in time")

    def _replaced(self) -> bool:
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        held = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)


