"""The framebus wire protocol as a pure, sans-IO codec (see docs/PROTOCOL.md).

Nothing in this module touches a file descriptor, a thread or a clock: it turns headers into
bytes and bytes into messages, so it can be tested whole, byte by byte and with trailing garbage.

A message is::

    prefix  (16 bytes)   magic "FBUS", u16 version, u16 header_len, u64 payload_len
    header  (header_len) fixed little-endian fields; later minor revisions only append
                         fields (the version stays 1 and header_len grows)
    payload (payload_len)

Revision 1.1 appended four fields that locate the payload in a shared-memory segment instead
of the stream; such messages set ``Flags.SHM`` and carry ``payload_len == 0``, so a 1.0 reader
rejects them (rule H8) rather than reading garbage. Revision 1.2 makes every header 240 bytes:
the shm area (zero unless ``Flags.SHM``), then the writer's ``instance`` (a random number per
daemon process, so a reader sees a restart in the first message of the new daemon) and a
``state`` byte. A ``Flags.STATE`` message carries a camera's state (streaming, reconnecting,
down, idle) with its reason as the payload instead of a frame.

The incremental stream reader built on this codec is :class:`framebus.framing.FrameReader`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, Final

from framebus.errors import ProtocolError

# the pixel formats live in framebus.formats; re-exported here, where readers look for them
from framebus.formats import CaptureSource as CaptureSource
from framebus.formats import PixelFormat as PixelFormat
from framebus.formats import Plane as Plane
from framebus.formats import PlaneShape as PlaneShape
from framebus.formats import packed_layout as packed_layout
from framebus.formats import plane_shapes as plane_shapes

MAGIC: Final = b"FBUS"
VERSION: Final = 1

PREFIX: Final = struct.Struct("<4sHHQ")
# camera, seq, epoch, missed, pts, tb_num, tb_den, capture_ns, publish_mono_ns,
# format, capture_source, flags, plane_count, reserved, width, height, 4 x (offset, stride)
HEADER_V1: Final = struct.Struct("<64sQQQqIIqqBBHHHII8I")
PREFIX_LEN: Final = PREFIX.size  # 16
HEADER_V1_LEN: Final = HEADER_V1.size  # 168
# revision 1.1, appended: shm segment name, payload offset and length in it, slot token
SHM_FIELDS: Final = struct.Struct("<32sQQQ")
HEADER_SHM_LEN: Final = HEADER_V1_LEN + SHM_FIELDS.size  # 224
# revision 1.2: the writer's instance and, in STATE messages, the state code; 7 reserved bytes
V12_FIELDS: Final = struct.Struct("<QB7x")
HEADER_LEN: Final = HEADER_SHM_LEN + V12_FIELDS.size  # 240: every message a 1.2 writer sends
_INSTANCE: Final = struct.Struct("<Q")
_INSTANCE_END: Final = HEADER_SHM_LEN + _INSTANCE.size  # a header this long has one
SHM_NAME = re.compile(r"fbshm-[0-9]{1,10}-[0-9]{1,15}")  # at most 32 bytes: the field's size
SHM_NAME_LEN: Final = 32
STATE_REASON_MAX: Final = 256
_SHM_ZERO: Final = bytes(SHM_FIELDS.size)
SHM_ALIGN: Final = 64  # shm payloads start on a 64-byte boundary, after the slot's stamp

CAMERA_NAME_MAX: Final = 64
MAX_PLANES: Final = 4
NO_PTS: Final = -(2**63)
DEFAULT_MAX_HEADER_LEN: Final = 4096
DEFAULT_MAX_PAYLOAD_LEN: Final = 256 * 1024 * 1024
MAX_DIMENSION: Final = 32768


class Flags(IntFlag):
    """Per-message flag bits."""

    NONE = 0
    KEYFRAME = 1
    SHM = 2  # revision 1.1: the payload is in a shared-memory slot (``FrameHeader.shm``)
    STATE = 4  # revision 1.2: a camera's state, not a frame (``StateHeader``)


_KNOWN_FLAGS: Final = Flags.KEYFRAME | Flags.SHM


class StreamState(IntEnum):
    """What a STATE message says about its camera (unknown codes from later revisions are
    kept as plain ints)."""

    STREAMING = 1  # frames flow (the camera came back, or left idle)
    RECONNECTING = 2  # the daemon is (re)connecting: connecting, backing off, stalled
    DOWN = 3  # no frames expected without a change: auth failed, unsupported, stopped
    IDLE = 4  # connected, but no frame for a while; frames may resume in the same epoch

    def __str__(self) -> str:
        return self.name.lower()


def state_name(code: int) -> str:
    """``streaming``, ``reconnecting``, ``down``, ``idle``, or ``unknown(N)``."""
    try:
        return str(StreamState(code))
    except ValueError:
        return f"unknown({code})"


# The per-message classes below are plain (not frozen) slots dataclasses: a reader builds
# several of them for every message, and a frozen dataclass's __init__ costs ~7x as much (one
# object.__setattr__ per field). Treat them as read-only all the same.


@dataclass(slots=True)
class ShmLocation:
    """Where an shm message's payload lives: a segment file beside the FIFO, a byte range in
    it, and the token the slot's stamp must carry while the payload is the one meant."""

    segment: str
    offset: int
    length: int
    token: int


@dataclass(slots=True)
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
    shm: ShmLocation | None = None  # set: the payload is in shared memory (flag SHM)
    instance: int = 0  # the writing daemon process (1.2); 0 from an older writer

    @property
    def keyframe(self) -> bool:
        """True when the frame was decoded from a keyframe."""
        return bool(self.flags & Flags.KEYFRAME)


@dataclass(frozen=True, slots=True)
class StateHeader:
    """A STATE message's header: ``state`` of ``camera`` (its reason is the payload, see
    ``decode_state_reason``). ``seq`` repeats the camera's newest frame's seq (0: none yet)
    and takes no part in seq/missed arithmetic; ``epoch`` is the camera's current epoch."""

    camera: str
    state: int  # a StreamState value, or a code of a later revision
    seq: int = 0
    epoch: int = 0
    capture_time_ns: int = 0  # wall clock when the camera entered the state
    publish_mono_ns: int = 0
    instance: int = 0


@dataclass(slots=True)
class Message:
    """One whole message. ``payload`` may be a view into a reused buffer (see FrameReader);
    for a STATE message it is the reason, UTF-8."""

    header: FrameHeader | StateHeader
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
    shm = header.shm
    if shm is not None and payload_len:
        raise ValueError("an shm message carries no payload in the stream")
    try:  # never send what every reader would reject: it would end the stream for all of them
        _check_layout(header.format, header.width, header.height, header.planes,
                      payload_len if shm is None else shm.length)
        if shm is not None:
            _check_shm(shm)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    flags = header.flags | Flags.SHM if shm is not None else header.flags & ~Flags.SHM
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
        flags,
        len(header.planes),
        0,
        header.width,
        header.height,
        *plane_words,
    )
    body += _SHM_ZERO if shm is None else SHM_FIELDS.pack(shm.segment.encode(), shm.offset,
                                                             shm.length, shm.token)
    body += V12_FIELDS.pack(header.instance, 0)
    return PREFIX.pack(MAGIC, VERSION, len(body), payload_len) + body



def encode_state(header: StateHeader, reason: str) -> bytes:
    """A whole STATE message: ``header`` and ``reason`` (cut to 256 UTF-8 bytes at a character
    boundary; NUL bytes removed)."""
    name = header.camera.encode()
    if not 0 < len(name) <= CAMERA_NAME_MAX or b"\0" in name:
        raise ValueError(f"camera name must be 1..{CAMERA_NAME_MAX} UTF-8 bytes without NUL: "
                         f"{header.camera!r}")
    if not 0 < header.state <= 255:
        raise ValueError(f"state code {header.state} outside 1..255")
    text = reason.replace("\0", "").encode()[:STATE_REASON_MAX].decode(errors="ignore").encode()
    body = HEADER_V1.pack(name, header.seq, header.epoch, 0, NO_PTS, 0, 0,
                          header.capture_time_ns, header.publish_mono_ns, 0, 0, Flags.STATE, 0,
                          0, 0, 0, *[0] * (2 * MAX_PLANES))
    body += _SHM_ZERO + V12_FIELDS.pack(header.instance, header.state)
    return PREFIX.pack(MAGIC, VERSION, len(body), len(text)) + body + text


def decode_state_reason(payload: bytes | bytearray | memoryview) -> str:
    """A STATE message's reason (rule T4: valid UTF-8)."""
    try:
        return bytes(payload).decode()
    except UnicodeDecodeError:
        raise ProtocolError("state reason is not valid UTF-8") from None


# where ``missed`` sits in an encoded message: after the prefix, camera, seq and epoch
_MISSED_AT: Final = PREFIX_LEN + 64 + 8 + 8
_MISSED: Final = struct.Struct("<Q")


class EncodedHeader:
    """A message's prefix and header, encoded and validated once for every subscriber of a
    frame's rendition: only ``missed`` differs between them, patched into a copy."""

    __slots__ = ("data", "header")

    def __init__(self, header: FrameHeader, payload_len: int) -> None:
        self.header = header
        self.data = encode_header(header, payload_len, 0)

    def with_missed(self, missed: int) -> bytes | bytearray:
        """The bytes to send to a subscriber that missed ``missed`` frames before this one."""
        if not missed:
            return self.data  # the common case: shared, no copy
        patched = bytearray(self.data)
        _MISSED.pack_into(patched, _MISSED_AT, missed)
        return patched


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


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a header's shape fields decode to, once they have passed validation."""

    camera: str
    format: PixelFormat
    source: CaptureSource
    flags: Flags
    planes: tuple[Plane, ...]
    segment: str  # shm segment name, "" for a FIFO message


# shape key -> its validated decoding; owned by one reader (see framebus.framing.FrameReader)
ShapeCache = dict[tuple[object, ...], _Shape]
SHAPES_KEPT: Final = 64  # a few per camera (keyframe or not) of a multi-camera stream
_SHM_BIT: Final = int(Flags.SHM)
_STATE_BIT: Final = int(Flags.STATE)


def decode_header(data: bytes | bytearray | memoryview, payload_len: int,
                  max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
                  shapes: ShapeCache | None = None) -> FrameHeader | StateHeader:
    """Parse and validate a header of ``len(data)`` bytes: a frame's (``FrameHeader``) or, with
    ``Flags.STATE``, a camera state's (``StateHeader``). Fields past revision 1.2's are
    ignored, as the spec requires; the shm fields are read only when the SHM flag is set.

    With ``shapes``, a header whose shape fields (everything but seq, epoch, missed, times and
    the shm offset and token) equal those of one validated before is decoded from that
    result; only the per-message rules run again. Any failure takes the full validation, so
    errors are the same with or without the cache.
    """
    fields = HEADER_V1.unpack_from(data)
    instance = _INSTANCE.unpack_from(data, HEADER_SHM_LEN)[0] if len(
        data) >= _INSTANCE_END else 0
    if fields[11] & _STATE_BIT:
        return _state_header(fields, data, payload_len)
    if shapes is not None:
        shm_fields = None
        if fields[11] & _SHM_BIT and len(data) >= HEADER_SHM_LEN:
            shm_fields = SHM_FIELDS.unpack_from(data, HEADER_V1_LEN)
        key = (fields[0], fields[9:], payload_len, max_payload_len,
               None if shm_fields is None else (shm_fields[0], shm_fields[2]))
        shape = shapes.get(key)
        if shape is not None and (shm_fields is None or _offset_and_token_valid(shm_fields)):
            shm = None if shm_fields is None else ShmLocation(shape.segment, *shm_fields[1:])
            return _header(fields, shape, shm, instance)
        shape, shm = _validate(fields, data, payload_len, max_payload_len)
        if len(shapes) >= SHAPES_KEPT:
            shapes.clear()
        shapes[key] = shape
        return _header(fields, shape, shm, instance)
    return _header(fields, *_validate(fields, data, payload_len, max_payload_len), instance)


# An shm message of a 1.2 writer, the stream's most frequent message, unpacked in one call:
# prefix, the 1.0 header, the shm fields and the instance (the state byte is 0 in frames).
_SHM_MESSAGE: Final = struct.Struct("<4sHHQ" + HEADER_V1.format[1:] + SHM_FIELDS.format[1:]
                                    + "Q")
SHM_MESSAGE_LEN: Final = PREFIX_LEN + HEADER_LEN  # 256


def decode_shm_message(data: bytes | bytearray | memoryview, max_payload_len: int,
                       shapes: ShapeCache) -> FrameHeader | None:
    """The fast path for a whole 256-byte message at the start of ``data``: the header of an
    shm frame whose shape was validated before (``shapes``, as ``decode_header`` fills it),
    after the per-message checks; None for anything else (take ``decode_prefix`` and
    ``decode_header``, which apply every rule and give the spec's errors)."""
    f = _SHM_MESSAGE.unpack_from(data)
    if (f[0] != MAGIC or f[1] != VERSION or f[2] != HEADER_LEN or f[3]
            or f[15] & (_SHM_BIT | _STATE_BIT) != _SHM_BIT):
        return None
    shape = shapes.get((f[4], f[13:28], 0, max_payload_len, (f[28], f[30])))
    offset, length, token = f[29], f[30], f[31]
    if shape is None or offset < SHM_ALIGN or offset % SHM_ALIGN or not token:
        return None
    pts = f[8]
    return FrameHeader(shape.camera, f[5], shape.format, f[18], f[19], shape.planes, f[6], f[7],
                       None if pts == NO_PTS else pts, (f[9], f[10]), f[11], shape.source,
                       f[12], shape.flags, ShmLocation(shape.segment, offset, length, token),
                       f[32])


def _offset_and_token_valid(shm_fields: tuple[bytes, int, int, int]) -> bool:
    """The rules of ``_check_shm`` that differ per message (the rest are the shape's)."""
    offset, token = shm_fields[1], shm_fields[3]
    return offset >= SHM_ALIGN and not offset % SHM_ALIGN and token != 0


def _header(fields: tuple[Any, ...], shape: _Shape, shm: ShmLocation | None,
            instance: int) -> FrameHeader:
    """A header from its validated shape and the fields that differ per message."""
    seq, epoch, missed, pts, tb_num, tb_den, capture_ns, publish_ns = fields[1:9]
    return FrameHeader(
        camera=shape.camera, seq=seq, format=shape.format, width=fields[14], height=fields[15],
        planes=shape.planes, epoch=epoch, missed=missed, pts=None if pts == NO_PTS else pts,
        time_base=(tb_num, tb_den), capture_time_ns=capture_ns, capture_source=shape.source,
        publish_mono_ns=publish_ns, flags=shape.flags, shm=shm, instance=instance,
    )


def _camera_name(raw_name: bytes) -> str:
    """Rules H1, H2."""
    try:
        camera = bytes(raw_name).rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise ProtocolError("camera name is not valid UTF-8") from None
    if not camera:
        raise ProtocolError("camera name is empty")
    return camera


def _state_header(fields: tuple[Any, ...], data: bytes | bytearray | memoryview,
                  payload_len: int) -> StateHeader:
    """Rules H1, H2 and T1..T4 of a STATE message (T4's UTF-8 check waits for the payload)."""
    camera = _camera_name(fields[0])
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"state message needs header length >= {HEADER_LEN}, "
                            f"got {len(data)}")
    frame_flags = fields[11] & (_SHM_BIT | Flags.KEYFRAME)
    if frame_flags:
        raise ProtocolError(f"state message with frame flags {frame_flags:#x}")
    fmt_code, _source, _flags, plane_count, _reserved, width, height = fields[9:16]
    if fmt_code or width or height or plane_count:
        raise ProtocolError("state message with a frame shape")
    if payload_len > STATE_REASON_MAX:
        raise ProtocolError(f"state reason of {payload_len} bytes over {STATE_REASON_MAX}")
    instance, state = V12_FIELDS.unpack_from(data, HEADER_SHM_LEN)
    if state == 0:
        raise ProtocolError("state message with state code 0")
    return StateHeader(camera, state, fields[1], fields[2], fields[7], fields[8], instance)


def _validate(fields: tuple[Any, ...], data: bytes | bytearray | memoryview,
              payload_len: int, max_payload_len: int) -> tuple[_Shape, ShmLocation | None]:
    """The full validation, every rule of PROTOCOL.md for the header: its shape and, for an
    shm message, where the payload is."""
    fmt_code, source_code, flags, plane_count, _reserved, width, height = fields[9:16]
    words = fields[16:]
    camera = _camera_name(fields[0])
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
    shm = None
    if flags & _SHM_BIT:
        shm = _decode_shm(data, payload_len, max_payload_len)
        if not fmt.is_raw:
            raise ProtocolError("jpeg is not sent over shm")
    _check_layout(fmt, width, height, planes, payload_len if shm is None else shm.length)
    shape = _Shape(camera, fmt, source, Flags(flags & _KNOWN_FLAGS), planes,
                   "" if shm is None else shm.segment)
    return shape, shm


def _decode_shm(data: bytes | bytearray | memoryview, payload_len: int,
                max_payload_len: int) -> ShmLocation:
    """Rules S1..S3 of PROTOCOL.md section 12 (the layout check H8 follows with the length)."""
    if len(data) < HEADER_SHM_LEN:
        raise ProtocolError(f"shm message needs header length >= {HEADER_SHM_LEN}, "
                            f"got {len(data)}")
    if payload_len:
        raise ProtocolError(f"shm message must have payload length 0, got {payload_len}")
    raw_name, offset, length, token = SHM_FIELDS.unpack_from(data, HEADER_V1_LEN)
    try:  # the name ends at the first NUL (1.2); what follows is ignored
        name = bytes(raw_name).split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        name = "?"
    shm = ShmLocation(name, offset, length, token)
    if length > max_payload_len:
        raise ProtocolError(f"shm payload length {length} over the limit of {max_payload_len}")
    _check_shm(shm)
    return shm


def _check_shm(shm: ShmLocation) -> None:
    if not SHM_NAME.fullmatch(shm.segment):
        raise ProtocolError(f"bad shm segment name {shm.segment!r}")
    if shm.offset < SHM_ALIGN or shm.offset % SHM_ALIGN:
        raise ProtocolError(f"shm offset {shm.offset} is not a multiple of {SHM_ALIGN} "
                            f"from {SHM_ALIGN}")
    if shm.length == 0 or shm.token == 0:
        raise ProtocolError("shm message with zero length or zero token")


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
