"""Consumer library: read framebus frames from a subscriber FIFO as numpy views.

FIFO semantics this module relies on (Linux):

* ``open(O_RDONLY | O_NONBLOCK)`` succeeds at once, writer or not, so opening never hangs;
* ``poll`` on such a descriptor stays silent until a writer attaches and writes (POLLIN) or
  attaches and leaves (POLLHUP), so waiting for a daemon that is not there yet costs no CPU;
* after the writer leaves, ``read`` returns 0 (EOF) and POLLHUP stays raised on that open file,
  so to wait for the next writer (daemon restart) the reader closes and reopens the FIFO.

Payloads are read with ``os.readv`` straight into a buffer the reader reuses, and ``Frame.array``
is a numpy view of that buffer: no copy is made, and the view is valid only until the next frame
is read. Call ``frame.array.copy()`` to keep one.

shm subscribers (``transport: shm``) get the same ``Frame``: the message names a slot in a
shared-memory segment beside the FIFO, which is mapped read-only once and reused for every frame
in it, and ``frame.array`` is a read-only view into the mapping. The daemon does not rewrite that
slot until this reader begins reading its next message, which is why it, too, is valid only
until the next read; ``frame.intact()`` re-checks the slot's stamp.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from framebus.apiclient import post_json
from framebus.errors import FifoError, ProtocolError
from framebus.shm import SegmentMaps
from framebus.wire import (
    DEFAULT_MAX_PAYLOAD_LEN,
    FrameHeader,
    FrameReader,
    PixelFormat,
    Plane,
    PlaneShape,
    packed_layout,
    plane_shapes,
)

_APPEAR_POLL_S = 0.05  # how often to look for a FIFO that does not exist yet
# While no writer has attached, how often to check that the path still names the FIFO we
# hold open (a restarted daemon may have made a new one there: PROTOCOL.md section 10).
_REPLACED_CHECK_S = 0.5


@dataclass(frozen=True, slots=True)
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
    last_seq: dict[str, int] = field(default_factory=dict)


class Subscriber:
    """Read frames from a framebus subscriber FIFO.

    ``timeout`` bounds the wait for each frame (``TimeoutError`` when it passes; None waits
    forever, without spinning). With ``reopen=True`` the subscriber survives daemon restarts:
    at EOF it reopens the FIFO and waits for the next writer; a message cut short by a dying
    writer is dropped (counted in ``stats.truncated``), never delivered. With ``reopen=False``
    iteration ends at a clean EOF and a cut message raises ``ProtocolError``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        reopen: bool = False,
        max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.reopen = reopen
        self.stats = SubscriberStats()
        self._max_payload_len = max_payload_len
        self._reader = self._new_reader()
        self._fd = -1
        self._poller = select.poll()
        self._eof = False
        self._writer_seen = False  # read() returns 0 on a FIFO no writer has opened yet
        self._segments = SegmentMaps(self.path.parent)  # shm segments live beside the FIFO

    def _new_reader(self) -> FrameReader:
        return FrameReader(max_payload_len=self._max_payload_len, reuse_buffer=True)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def open(self, timeout: float | None = None) -> None:
        """Open the FIFO now (it is otherwise opened by the first read); never blocks on a
        missing writer, waits up to ``timeout`` for the path to appear."""
        if self._fd < 0:
            self._open(None if timeout is None else time.monotonic() + timeout)

    def fileno(self) -> int:
        """The FIFO's descriptor (-1 before the first read)."""
        return self._fd

    def close(self) -> None:
        """Close the FIFO; the daemon sees the reader leave."""
        if self._fd >= 0:
            self._poller.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1

    def read(self, timeout: float | None = -1.0) -> Frame | None:
        """The next whole frame; None at a clean EOF (``reopen=False``).

        ``timeout`` defaults to the subscriber's; raises TimeoutError when it passes.
        """
        wait = self.timeout if timeout is not None and timeout < 0 else timeout
        deadline = None if wait is None else time.monotonic() + wait
        if self._eof:
            return None
        if self._fd < 0:
            self._open(deadline)
        while True:
            if not self._writer_seen:
                self._wait_readable(deadline)  # silent until a writer attaches
                self._writer_seen = True
            target = self._reader.writable()
            try:
                count = os.readv(self._fd, [target])
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            if count == 0:
                if not self._writer_left(deadline):
                    return None
                continue
            self._reader.commit(count)
            self.stats.bytes += count
            message = self._reader.next_message()
            if message is None:
                continue
            if message.header.shm is None:
                return self._deliver(message.header, message.payload, None)
            payload = self._segments.payload(message.header)
            if payload is not None:
                return self._deliver(message.header, payload, self._segments)
            self.stats.stale += 1

    def _deliver(self, header: FrameHeader, payload: memoryview,
                 segments: SegmentMaps | None) -> Frame:
        self.stats.frames += 1
        self.stats.missed += header.missed
        self.stats.last_seq[header.camera] = header.seq
        return Frame(header, payload, time.monotonic_ns(), segments)

    def _writer_left(self, deadline: float | None) -> bool:
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
        self._segments = SegmentMaps(self.path.parent)  # a new daemon's segments, new names
        self.close()
        self._open(deadline)
        return True

    def _open(self, deadline: float | None) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"FIFO {self.path} did not appear in time") from None
                time.sleep(_APPEAR_POLL_S)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise FifoError(f"{self.path} is not a FIFO")
        self._fd = fd
        self._writer_seen = False
        self._poller.register(fd, select.POLLIN)
        self.stats.opens += 1

    def _wait_readable(self, deadline: float | None) -> None:
        """Poll until readable (a zero timeout still polls once). While no writer has come,
        wake every _REPLACED_CHECK_S to check that the path still names our FIFO, and
        reopen when it does not: a reader must not wait forever on a deleted inode."""
        while True:
            slice_s = None if self._writer_seen else _REPLACED_CHECK_S
            if deadline is not None:
                remaining = max(0.0, deadline - time.monotonic())
                slice_s = remaining if slice_s is None else min(slice_s, remaining)
            if self._poller.poll(-1 if slice_s is None else int(slice_s * 1000) + (slice_s > 0)):
                return
            if not self._writer_seen and self._replaced():
                self.stats.replaced += 1
                self.close()
                self._open(deadline)
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


class FrameRequestError(Exception):
    """The daemon refused or failed a frame request (``status`` and ``error`` say why)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


def request_frame(
    camera: str,
    *,
    url: str = "http://127.0.0.1:8470",
    unix_socket: str | None = None,
    fifo_dir: str | os.PathLike[str] | None = None,
    format: str = "bgr24",
    width: int | None = None,
    height: int | None = None,
    quality: int = 85,
    token: str | None = None,
    timeout: float = 5.0,
) -> Frame:
    """The newest frame of ``camera``, now, through a private FIFO.

    Makes a FIFO in ``fifo_dir`` (default ``$FRAMEBUS_FIFO_DIR`` or ``/run/framebus``; it must
    be one of the daemon's allowed directories), opens it for reading without blocking, asks
    the daemon over HTTP to write the newest frame into it, reads that one message, and
    removes the FIFO. Raises FrameRequestError with the daemon's reason on refusal.
    """
    directory = Path(fifo_dir or os.environ.get("FRAMEBUS_FIFO_DIR", "/run/framebus"))
    path = directory / f"request-{os.getpid()}-{secrets.token_hex(6)}.fifo"
    os.mkfifo(path, 0o620)
    os.chmod(path, 0o620)  # the daemon (group) may write, only we read: whatever the umask
    try:
        # The daemon bounds its side by ``timeout`` (the wait for a first frame, then the
        # write); the reader waits as long as the POST may, so a refusal arrives as the
        # daemon's reason (the asker ends the read with EOF), not as a bare TimeoutError.
        with Subscriber(path, timeout=timeout + 5.0) as sub:
            sub.open()
            body: dict[str, object] = {"fifo": str(path), "format": format, "quality": quality,
                                       "timeout": timeout}
            if width:
                body["width"] = width
            if height:
                body["height"] = height
            answer: list[tuple[int, dict[str, object]]] = []
            failure: list[BaseException] = []

            def ask() -> None:  # the frame may exceed the pipe: read it while the POST waits
                try:
                    answer.append(post_json(url, unix_socket,
                                            f"/v1/cameras/{camera}/snapshot-to-fifo",
                                            body, token, timeout + 5.0))
                except BaseException as exc:  # re-raised in the caller's thread
                    failure.append(exc)
                if failure or answer[0][0] != 200:  # no frame will come: end the reader's wait
                    with contextlib.suppress(OSError):  # the reader may have given up already
                        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

            asker = threading.Thread(target=ask, name="request-frame", daemon=True)
            asker.start()
            frame = sub.read()
            asker.join(timeout + 10.0)
            if failure:
                raise failure[0]
            if not answer:
                raise TimeoutError(f"no answer from the daemon within {timeout + 10.0:g}s")
            status, reply = answer[0]
            if status != 200:
                raise FrameRequestError(status, str(reply.get("error", "")),
                                        str(reply.get("detail", "")))
            if frame is None:
                raise FrameRequestError(status, "no_frame", "the daemon closed without a frame")
            return frame
    finally:
        path.unlink(missing_ok=True)
