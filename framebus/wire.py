"""The framebus wire protocol as a pure, sans-IO codec (see docs/PROTOCOL.md).

Nothing in this module touches a file descriptor, a thread or a clock: it turns headers into
bytes and bytes into messages, so it can be tested whole, byte by byte and with trailing garbage.

A message is::

    prefix  (16 bytes)   magic "FBUS", u16 version, u16 header_len, u64 payload_len
    header  (header_len) fixed little-endian fields; later minor revisions only append
                         fields (the version stays 1 and header_len grows)
    payload (payload_len)

Invariants of :class:`FrameReader`:

* It never allocates more than ``max_header_len`` + ``max_payload_len`` for one message, and it
  checks both lengths (and the plane layout) *before* allocating the payload buffer.
* It yields a message only when every byte of it has arrived: a reader never sees half a frame.
* Bytes after a message stay buffered for the next one; at EOF, a partial message is a
  :class:`ProtocolError` ("truncated"), never a short frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final, NamedTuple

from framebus.errors import ProtocolError

MAGIC: Final = b"FBUS"
VERSION: Final = 1

PREFIX: Final = struct.Struct("<4sHHQ")
# camera, seq, epoch, missed, pts, tb_num, tb_den, capture_ns, publish_mono_ns,
# format, capture_source, flags, plane_count, reserved, width, height, 4 x (offset, stride)
HEADER_V1: Final = struct.Struct("<64sQQQqIIqqBBHHHII8I")
PREFIX_LEN: Final = PREFIX.size  # 16
HEADER_V1_LEN: Final = HEADER_V1.size  # 168

CAMERA_NAME_MAX: Final = 64
MAX_PLANES: Final = 4
NO_PTS: Final = -(2**63)
DEFAULT_MAX_HEADER_LEN: Final = 4096
DEFAULT_MAX_PAYLOAD_LEN: Final = 256 * 1024 * 1024
MAX_DIMENSION: Final = 32768


class PixelFormat(IntEnum):
    """Payload formats. The numeric value is what travels on the wire."""

    BGR24 = 1
    RGB24 = 2
    GRAY = 3
    YUV420P = 4
    NV12 = 5
    JPEG = 6

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> PixelFormat:
        """Parse a lowercase format name such as ``"bgr24"``."""
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(str(f) for f in cls)
            raise ValueError(f"unknown pixel format {name!r} (expected one of {known})") from None

    @property
    def is_raw(self) -> bool:
        """True for uncompressed pixel data with a plane layout."""
        return self is not PixelFormat.JPEG


class CaptureSource(IntEnum):
    """Where ``capture_time_ns`` came from."""

    RECEIVE = 0  # the daemon's wall clock when the packet was received
    RTCP = 1  # the camera's own clock, from RTCP sender reports


class Flags(IntFlag):
    """Per-message flag bits."""

    NONE = 0
    KEYFRAME = 1


class Plane(NamedTuple):
    """Where one plane lives in the payload: byte offset and bytes per row."""

    offset: int
    stride: int


class PlaneShape(NamedTuple):
    """What a plane must hold: rows, bytes of pixel data per row, bytes per pixel."""

    rows: int
    row_bytes: int
    channels: int


def plane_shapes(fmt: PixelFormat, width: int, height: int) -> tuple[PlaneShape, ...]:
    """The planes a raw format needs at a given size (chroma sizes round up for odd sizes)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    if fmt in (PixelFormat.BGR24, PixelFormat.RGB24):
        return (PlaneShape(height, width * 3, 3),)
    if fmt is PixelFormat.GRAY:
        return (PlaneShape(height, width, 1),)
    if fmt is PixelFormat.YUV420P:
        return (PlaneShape(height, width, 1), PlaneShape(ch, cw, 1), PlaneShape(ch, cw, 1))
    if fmt is PixelFormat.NV12:
        return (PlaneShape(height, width, 1), PlaneShape(ch, cw * 2, 2))
    return ()


def packed_layout(fmt: PixelFormat, width: int, height: int) -> tuple[tuple[Plane, ...], int]:
    """Tightly packed planes (stride == row bytes, planes back to back) and the payload size."""
    planes: list[Plane] = []
    offset = 0
    for shape in plane_shapes(fmt, width, height):
        planes.append(Plane(offset, shape.row_bytes))
        offset += shape.row_bytes * shape.rows
    return tuple(planes), offset


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """Everything the header of one message says about its frame."""

    camera: str
    seq: int
    format: PixelFormat
    width: int
    height: int
    planes: tuple[Plane, ...]
    epoch: int = 0
    missed: int = 0
    pts: int | None = None
    time_base: tuple[int, int] = (1, 90000)
    capture_time_ns: int = 0
    capture_source: CaptureSource = CaptureSource.RECEIVE
    publish_mono_ns: int = 0
    flags: Flags = Flags.NONE

    @property
    def keyframe(self) -> bool:
        """True when the frame was decoded from a keyframe."""
        return bool(self.flags & Flags.KEYFRAME)


@dataclass(frozen=True, slots=True)
class Message:
    """One whole message. ``payload`` may be a view into a reused buffer (see FrameReader)."""

    header: FrameHeader
    payload: memoryview


def encode_header(header: FrameHeader, payload_len: int, missed: int | None = None) -> bytes:
    """Prefix plus header bytes for a message whose payload is ``payload_len`` bytes.

    ``missed`` overrides ``header.missed``: the fan-out loop encodes one header per subscriber
    from a shared frame header without building a new dataclass.
    """
    name = header.camera.encode()
    if not 0 < len(name) <= CAMERA_NAME_MAX or b"\0" in name:
        raise ValueError(f"camera name must be 1..{CAMERA_NAME_MAX} UTF-8 bytes without NUL: "
                         f"{header.camera!r}")
    if len(header.planes) > MAX_PLANES:
        raise ValueError(f"at most {MAX_PLANES} planes, got {len(header.planes)}")
    if not (0 < header.width <= MAX_DIMENSION and 0 < header.height <= MAX_DIMENSION):
        raise ValueError(f"frame size {header.width}x{header.height} outside 1..{MAX_DIMENSION}")
    try:  # never send what every reader would reject: it would end the stream for all of them
        _check_layout(header.format, header.width, header.height, header.planes, payload_len)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    plane_words = [v for plane in header.planes for v in plane]
    plane_words += [0] * (2 * MAX_PLANES - len(plane_words))
    body = HEADER_V1.pack(
        name,
        header.seq,
        header.epoch,
        header.missed if missed is None else missed,
        NO_PTS if header.pts is None else header.pts,
        header.time_base[0],
        header.time_base[1],
        header.capture_time_ns,
        header.publish_mono_ns,
        header.format,
        header.capture_source,
        header.flags,
        len(header.planes),
        0,
        header.width,
        header.height,
        *plane_words,
    )
    return PREFIX.pack(MAGIC, VERSION, len(body), payload_len) + body


def encode_message(header: FrameHeader, payload: bytes | memoryview) -> bytes:
    """A whole message as one bytes object (convenient for tests; the daemon uses writev)."""
    return encode_header(header, len(payload)) + bytes(payload)


def decode_prefix(
    data: bytes | bytearray | memoryview,
    max_header_len: int = DEFAULT_MAX_HEADER_LEN,
    max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
) -> tuple[int, int]:
    """Validate a 16-byte prefix; return ``(header_len, payload_len)``."""
    magic, version, header_len, payload_len = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not at a message")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this reader speaks 1)")
    if header_len < HEADER_V1_LEN:
        raise ProtocolError(f"header length {header_len} is shorter than v1's {HEADER_V1_LEN}")
    if header_len > max_header_len:
        raise ProtocolError(f"header length {header_len} over the limit of {max_header_len}")
    if payload_len > max_payload_len:
        raise ProtocolError(f"payload length {payload_len} over the limit of {max_payload_len}")
    return header_len, payload_len


def decode_header(data: bytes | bytearray | memoryview, payload_len: int) -> FrameHeader:
    """Parse and validate a header (fields past v1's are ignored, as the spec requires)."""
    fields = HEADER_V1.unpack_from(data)
    (raw_name, seq, epoch, missed, pts, tb_num, tb_den, capture_ns, publish_ns,
     fmt_code, source_code, flags, plane_count, _reserved, width, height) = fields[:16]
    words = fields[16:]
    try:
        camera = bytes(raw_name).rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise ProtocolError("camera name is not valid UTF-8") from None
    if not camera:
        raise ProtocolError("camera name is empty")
    try:
        fmt = PixelFormat(fmt_code)
    except ValueError:
        raise ProtocolError(f"unknown pixel format code {fmt_code}") from None
    try:
        source = CaptureSource(source_code)
    except ValueError:
        raise ProtocolError(f"unknown capture time source {source_code}") from None
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise ProtocolError(f"frame size {width}x{height} outside 1..{MAX_DIMENSION}")
    if plane_count > MAX_PLANES:
        raise ProtocolError(f"plane count {plane_count} over {MAX_PLANES}")
    planes = tuple(Plane(words[2 * i], words[2 * i + 1]) for i in range(plane_count))
    _check_layout(fmt, width, height, planes, payload_len)
    return FrameHeader(
        camera=camera, seq=seq, format=fmt, width=width, height=height, planes=planes,
        epoch=epoch, missed=missed, pts=None if pts == NO_PTS else pts,
        time_base=(tb_num, tb_den), capture_time_ns=capture_ns, capture_source=source,
        publish_mono_ns=publish_ns, flags=Flags(flags & Flags.KEYFRAME),
    )


def _check_layout(
    fmt: PixelFormat, width: int, height: int, planes: tuple[Plane, ...], payload_len: int
) -> None:
    """Every plane of a raw format must fit inside the payload, rows no wider than the stride."""
    shapes = plane_shapes(fmt, width, height)
    if not fmt.is_raw:
        if len(planes) != 1 or planes[0].offset != 0 or payload_len == 0:
            raise ProtocolError("jpeg message must have one plane at offset 0 and a payload")
        return
    if len(planes) != len(shapes):
        raise ProtocolError(f"{fmt} needs {len(shapes)} planes, header has {len(planes)}")
    for index, (plane, shape) in enumerate(zip(planes, shapes, strict=True)):
        if plane.stride < shape.row_bytes:
            raise ProtocolError(
                f"plane {index}: stride {plane.stride} < row size {shape.row_bytes}"
            )
        end = plane.offset + plane.stride * (shape.rows - 1) + shape.row_bytes
        if end > payload_len:
            raise ProtocolError(f"plane {index} ends at byte {end}, past payload {payload_len}")


class _Stage(IntEnum):
    PREFIX = 0
    HEADER = 1
    PAYLOAD = 2


class FrameReader:
    """Incremental reader: give it bytes in any chunking, take whole messages out.

    Two ways in, one state machine:

    * ``feed(data)`` then ``next_message()`` until it returns None (h11 style);
    * zero copy: write straight into ``writable()`` (e.g. with ``os.readv``), then
      ``commit(n)`` and ``next_message()``.

    With ``reuse_buffer=True`` every payload is a view into one buffer that the next message
    overwrites (the buffer is replaced, not resized, when a larger message arrives, so older
    views stay valid memory); otherwise each message gets a buffer of its own.
    """

    def __init__(
        self,
        max_header_len: int = DEFAULT_MAX_HEADER_LEN,
        max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
        reuse_buffer: bool = False,
    ) -> None:
        self.max_header_len = max_header_len
        self.max_payload_len = max_payload_len
        self.reuse_buffer = reuse_buffer
        self._pending = bytearray()  # fed but not yet consumed
        self._stage = _Stage.PREFIX
        self._prefix = bytearray(PREFIX_LEN)
        self._header_buf = bytearray(max_header_len)
        self._payload = bytearray()
        self._filled = 0  # bytes of the current stage received so far
        self._need = PREFIX_LEN  # bytes the current stage needs in total
        self._payload_len = 0
        self._header: FrameHeader | None = None
        self._ready: Message | None = None

    @property
    def at_boundary(self) -> bool:
        """True when no partial message is buffered."""
        return self._stage is _Stage.PREFIX and self._filled == 0 and not self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes; parse them with ``next_message()``."""
        self._pending += data

    def writable(self) -> memoryview:
        """Where the next bytes go: exactly the rest of the current stage (zero-copy input)."""
        if self._pending or self._ready is not None:
            raise RuntimeError("drain next_message() before writing into writable()")
        return self._target()

    def commit(self, count: int) -> None:
        """Record that ``count`` bytes were written into ``writable()``."""
        if not 0 <= count <= self._need - self._filled:
            raise ValueError(f"commit({count}) exceeds the {self._need - self._filled} bytes asked")
        self._filled += count
        if self._filled == self._need:
            self._advance()

    def next_message(self) -> Message | None:
        """The next whole message, or None when more bytes are needed."""
        while self._ready is None and self._pending:
            target = self._target()
            count = min(len(target), len(self._pending))
            target[:count] = self._pending[:count]
            del self._pending[:count]
            self.commit(count)
        message, self._ready = self._ready, None
        return message

    def close(self) -> None:
        """Declare EOF (after draining ``next_message()``): a partial message is an error."""
        if self._ready is not None:
            raise RuntimeError("drain next_message() before close()")
        if not self.at_boundary:
            raise ProtocolError(
                f"truncated message at EOF: {self._stage.name.lower()} has "
                f"{self._filled + len(self._pending)} of {self._need} bytes"
            )

    def _target(self) -> memoryview:
        if self._stage is _Stage.PREFIX:
            return memoryview(self._prefix)[self._filled : PREFIX_LEN]
        if self._stage is _Stage.HEADER:
            return memoryview(self._header_buf)[self._filled : self._need]
        return memoryview(self._payload)[self._filled : self._need]

    def _advance(self) -> None:
        if self._stage is _Stage.PREFIX:
            header_len, self._payload_len = decode_prefix(
                self._prefix, self.max_header_len, self.max_payload_len
            )
            self._stage, self._filled, self._need = _Stage.HEADER, 0, header_len
        elif self._stage is _Stage.HEADER:
            self._header = decode_header(
                memoryview(self._header_buf)[: self._need], self._payload_len
            )
            if not self.reuse_buffer or len(self._payload) < self._payload_len:
                self._payload = bytearray(self._payload_len)  # validated above: bounded
            self._stage, self._filled, self._need = _Stage.PAYLOAD, 0, self._payload_len
            if self._payload_len == 0:
                self._advance()
        else:
            assert self._header is not None
            payload = memoryview(self._payload)[: self._payload_len]
            self._ready = Message(self._header, payload)
            self._stage, self._filled, self._need = _Stage.PREFIX, 0, PREFIX_LEN
            self._header = None
