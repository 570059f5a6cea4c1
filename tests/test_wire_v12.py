"""Revision 1.2 through the sans-IO codec and reader: the instance in every header, STATE
messages (whole, byte by byte, with trailing bytes, each rule T1..T4), the segment-name rules,
jpeg never over shm, and the boundary read that takes a whole shm message in one call."""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path

import pytest
from framegen import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.errors import ProtocolError
from framebus.framing import BOUNDARY_READ, FrameReader
from framebus.shm import SegmentMaps
from framebus.wire import (
    HEADER_LEN,
    HEADER_SHM_LEN,
    HEADER_V1_LEN,
    PREFIX,
    PREFIX_LEN,
    STATE_REASON_MAX,
    FrameHeader,
    Message,
    PixelFormat,
    ShmLocation,
    StateHeader,
    StreamState,
    decode_header,
    decode_prefix,
    decode_state_reason,
    encode_header,
    encode_message,
    encode_state,
    state_name,
)

V12 = struct.Struct("<QB7x")


def drain(reader: FrameReader) -> list[Message]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


def state_message(state: int = StreamState.RECONNECTING, reason: str = "connection refused",
                  instance: int = 0x0123456789ABCDEF) -> bytes:
    return encode_state(StateHeader("cam", state, seq=42, epoch=1, capture_time_ns=7,
                                    publish_mono_ns=9, instance=instance), reason)


@settings(max_examples=150)
@given(state=st.integers(1, 255), reason=st.text(max_size=300),
       instance=st.integers(1, 2**64 - 1), cut=st.integers(0, 300))
def test_state_messages_round_trip_whole_byte_by_byte_and_with_trailing_bytes(
        state: int, reason: str, instance: int, cut: int) -> None:
    data = state_message(state, reason, instance)
    sent = reason.replace("\0", "").encode()[:STATE_REASON_MAX].decode(errors="ignore")
    frame_header, payload = make_frame(1, 3, PixelFormat.GRAY, 4, 2)
    frame = encode_message(frame_header, payload)
    whole = FrameReader()
    whole.feed(data + frame + data[:cut % len(data)])  # trailing bytes of a next message
    got = drain(whole)
    assert [type(m.header) for m in got] == [StateHeader, FrameHeader]
    header = got[0].header
    assert isinstance(header, StateHeader)
    assert (header.camera, header.state, header.seq, header.epoch, header.instance) == (
        "cam", state, 42, 1, instance)
    assert decode_state_reason(got[0].payload) == sent
    assert got[1].header == frame_header
    assert whole.at_boundary == (cut % len(data) == 0)
    slow = FrameReader()
    byte_got = []
    for byte in data:
        slow.feed(bytes([byte]))
        byte_got += drain(slow)
    assert len(byte_got) == 1 and byte_got[0].header == header and slow.at_boundary
    assert state_name(state) == (str(StreamState(state)) if state <= 4 else f"unknown({state})")


def rewrite(data: bytes, offset: int, fmt: str, *values: int,
            payload_len: int | None = None, header_len: int | None = None) -> bytes:
    """A STATE message with one field changed (offsets from the start of the header)."""
    out = bytearray(data)
    struct.pack_into(fmt, out, PREFIX_LEN + offset, *values)
    magic, version, old_header_len, old_payload_len = PREFIX.unpack_from(out)
    PREFIX.pack_into(out, 0, magic, version, header_len or old_header_len,
                     old_payload_len if payload_len is None else payload_len)
    return bytes(out)


@pytest.mark.parametrize(("data", "error"), [
    (rewrite(state_message(), 0, "<B", 0, header_len=HEADER_SHM_LEN),
     "state message needs header length >= 240, got 224"),
    (rewrite(state_message(), 122, "<H", 0x7), "state message with frame flags 0x3"),
    (rewrite(state_message(), 120, "<B", 1), "state message with a frame shape"),
    (rewrite(state_message(), 128, "<I", 640), "state message with a frame shape"),
    (rewrite(state_message(), 124, "<H", 1), "state message with a frame shape"),
    (rewrite(state_message(reason="x" * 300), 0, "<B", 0x63, payload_len=257),
     "state reason of 257 bytes over 256"),
    (rewrite(state_message(), 232, "<B", 0), "state message with state code 0"),
    (rewrite(state_message(), 0, "<64s", b""), "camera name is empty"),
])
def test_each_state_rule_rejects_with_the_spec_error(data: bytes, error: str) -> None:
    reader = FrameReader()
    reader.feed(data)
    with pytest.raises(ProtocolError, match=error):
        drain(reader)


def test_a_state_reason_that_is_not_utf8_is_refused_once_the_payload_is_in() -> None:
    data = state_message(reason="ab")
    reader = FrameReader()
    reader.feed(data[:-2] + b"\xff\xfe")
    with pytest.raises(ProtocolError, match="state reason is not valid UTF-8"):
        drain(reader)


def test_a_state_message_fails_a_1_1_reader_at_the_format_code() -> None:
    """What docs/PROTOCOL.md section 7 promises for old readers: rule H3, not garbage."""
    data = state_message()
    fields = struct.unpack_from("<64sQQQqIIqqBBHHHII8I", data, PREFIX_LEN)
    assert fields[9] == 0  # format 0: a 1.1 reader's H3 says "unknown pixel format code 0"


def test_every_header_carries_the_instance_and_older_headers_read_as_zero() -> None:
    header, payload = make_frame(2, 5, PixelFormat.BGR24, 6, 4)
    header = dataclasses.replace(header, instance=99)
    data = encode_message(header, payload)
    header_len, payload_len = decode_prefix(data[:PREFIX_LEN])
    assert header_len == HEADER_LEN == 240
    assert V12.unpack_from(data, PREFIX_LEN + HEADER_SHM_LEN) == (99, 0)
    assert decode_header(data[PREFIX_LEN : PREFIX_LEN + HEADER_LEN], payload_len).instance == 99
    for short in (HEADER_V1_LEN, HEADER_SHM_LEN, HEADER_SHM_LEN + 7):  # 1.0, 1.1, torn field
        assert decode_header(data[PREFIX_LEN : PREFIX_LEN + short], payload_len).instance == 0


def shm_message(segment: bytes = b"fbshm-4242-1", fmt: PixelFormat = PixelFormat.GRAY,
                offset: int = 4160) -> bytes:
    header, payload = make_frame(3, 1, fmt, 2, 2)
    location = ShmLocation("fbshm-1-1", offset, len(payload), 7)
    data = bytearray(encode_header(dataclasses.replace(header, shm=location), 0))
    data[PREFIX_LEN + HEADER_V1_LEN : PREFIX_LEN + HEADER_V1_LEN + 32] = segment.ljust(32, b"\0")
    return bytes(data)


def test_the_segment_name_ends_at_the_first_nul_and_fits_32_bytes() -> None:
    reader = FrameReader()
    reader.feed(shm_message(b"fbshm-4242-1\0garbage after the NUL"[:32]))
    header = drain(reader)[0].header
    assert isinstance(header, FrameHeader) and header.shm is not None
    assert header.shm.segment == "fbshm-4242-1"
    longest = b"fbshm-" + b"9" * 10 + b"-" + b"9" * 15  # 32 bytes, no NUL
    reader.feed(shm_message(longest))
    header = drain(reader)[0].header
    assert isinstance(header, FrameHeader) and header.shm is not None
    assert header.shm.segment == longest.decode()
    with pytest.raises(ValueError, match="bad shm segment name"):
        encode_header(dataclasses.replace(header, shm=dataclasses.replace(
            header.shm, segment="fbshm-1-" + "1" * 16)), 0)


def test_jpeg_is_never_an_shm_payload() -> None:
    header, _payload = make_frame(3, 1, PixelFormat.JPEG, 2, 2)
    data = bytearray(shm_message())
    data[PREFIX_LEN + 120] = int(PixelFormat.JPEG)
    struct.pack_into("<II", data, PREFIX_LEN + 136, 0, 0)
    struct.pack_into("<H", data, PREFIX_LEN + 124, 1)
    reader = FrameReader()
    reader.feed(bytes(data))
    with pytest.raises(ProtocolError, match="jpeg is not sent over shm"):
        drain(reader)
    assert header.format is PixelFormat.JPEG


def test_a_boundary_read_takes_a_whole_shm_message_and_keeps_surplus_for_fifo() -> None:
    reader = FrameReader(reuse_buffer=True)
    data = shm_message()
    target = reader.writable()
    assert len(target) == BOUNDARY_READ  # R1: ask for plenty at a boundary
    target[: len(data)] = data
    reader.commit(len(data))
    assert isinstance(reader.next_message(), Message) and reader.at_boundary  # one call
    header, payload = make_frame(5, 1, PixelFormat.GRAY, 64, 64)  # 4096 payload bytes
    frame = encode_message(header, payload)
    small = state_message()
    stream = frame + small
    target = reader.writable()
    target[:] = stream[:BOUNDARY_READ]
    reader.commit(BOUNDARY_READ)
    assert reader.next_message() is None  # the frame's payload is not all there yet
    rest = reader.writable()  # R2: inside a message, exactly the rest of it, never more
    assert len(rest) == len(frame) - BOUNDARY_READ
    rest[:] = stream[BOUNDARY_READ : len(frame)]
    reader.commit(len(rest))
    message = reader.next_message()
    assert message is not None and bytes(message.payload) == payload
    target = reader.writable()
    target[: len(small) + 3] = small + frame[:3]  # a message and the start of the next
    reader.commit(len(small) + 3)
    assert isinstance(drain(reader)[0].header, StateHeader) and not reader.at_boundary


def test_a_hostile_shm_offset_cannot_wrap_around_the_segment(tmp_path: Path) -> None:
    path = tmp_path / "fbshm-1-1"
    with path.open("wb") as f:
        f.write(b"FBSM" + struct.pack("<IQQQI", 1, 4096, 1, 4096, 1) + bytes(8192 - 36))
    maps = SegmentMaps(tmp_path)
    header, _ = make_frame(3, 1, PixelFormat.GRAY, 2, 2)
    for offset, length in ((2**64 - 64, 128), (4160, 8192), (8192 - 64, 128)):
        hostile = dataclasses.replace(header, shm=ShmLocation("fbshm-1-1", offset, length, 7))
        with pytest.raises(ProtocolError, match="past the end of segment"):
            maps.payload(hostile)
    assert mmap.PAGESIZE > 0
