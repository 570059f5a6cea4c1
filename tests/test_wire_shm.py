"""Revision 1.1's shm messages through the sans-IO codec: round trips, byte by byte, with
trailing bytes, each validation rule S1..S6, and what a 1.0 reader makes of them."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from framegen import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.errors import ProtocolError
from framebus.framing import FrameReader
from framebus.wire import (
    HEADER_LEN,
    HEADER_SHM_LEN,
    HEADER_V1_LEN,
    PREFIX,
    PREFIX_LEN,
    Flags,
    FrameHeader,
    PixelFormat,
    ShapeCache,
    ShmLocation,
    decode_header,
    encode_header,
)

RAW = [f for f in PixelFormat if f.is_raw]


def shm_header(fmt: PixelFormat = PixelFormat.BGR24, width: int = 7, height: int = 5,
               padding: int = 0, index: int = 1) -> FrameHeader:
    header, payload = make_frame(3, index, fmt, width, height, padding)
    location = ShmLocation(f"fbshm-{1000 + index}-{index}", 4096 + 64, len(payload), index)
    return dataclasses.replace(header, shm=location)


def drain(reader: FrameReader) -> list[FrameHeader]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message.header)
    return out


@settings(max_examples=200)
@given(fmt=st.sampled_from(RAW), width=st.integers(1, 40), height=st.integers(1, 40),
       padding=st.integers(0, 5), index=st.integers(1, 10**6))
def test_round_trip_whole_and_byte_by_byte(fmt: PixelFormat, width: int, height: int,
                                           padding: int, index: int) -> None:
    header = shm_header(fmt, width, height, padding, index)
    data = encode_header(header, 0)
    assert len(data) == PREFIX_LEN + HEADER_LEN  # 256: one read takes a whole shm message
    whole = FrameReader()
    whole.feed(data + data[:5])  # trailing bytes of the next message stay buffered
    got = drain(whole)
    assert got == [dataclasses.replace(header, flags=header.flags | Flags.SHM)]
    assert not whole.at_boundary
    slow = FrameReader()
    for byte in data:
        slow.feed(bytes([byte]))
        got += drain(slow)
    assert got[1] == got[0] and slow.at_boundary


def test_fifo_messages_have_a_zero_shm_area_and_no_shm_flag() -> None:
    header, payload = make_frame(3, 1, PixelFormat.GRAY, 4, 4)
    data = encode_header(dataclasses.replace(header, flags=header.flags | Flags.SHM), 16)
    assert PREFIX.unpack_from(data)[2] == HEADER_LEN  # 1.2: every header is 240 bytes
    assert data[PREFIX_LEN + HEADER_V1_LEN : PREFIX_LEN + HEADER_SHM_LEN] == bytes(56)
    reader = FrameReader()
    reader.feed(data + payload)
    assert drain(reader)[0].shm is None


def test_a_1_0_reader_rejects_an_shm_message_instead_of_reading_garbage() -> None:
    """A 1.0 reader ignores the flag bit and the appended fields: what it then sees is a raw
    frame with payload_len 0, which rule H8 rejects."""
    data = bytearray(encode_header(shm_header(), 0))
    flags_at = PREFIX_LEN + 122
    struct.pack_into("<H", data, flags_at, struct.unpack_from("<H", data, flags_at)[0] & ~2)
    reader = FrameReader()
    reader.feed(bytes(data))
    with pytest.raises(ProtocolError, match=r"plane 0 ends at byte .* past payload 0"):
        drain(reader)


def rewrite(offset: int, fmt: str, value: int | bytes, header_len: int | None = None,
            payload_len: int = 0) -> bytes:
    data = bytearray(encode_header(shm_header(), 0))
    struct.pack_into(fmt, data, PREFIX_LEN + offset, value)
    magic, version, length, _ = PREFIX.unpack_from(data)
    if header_len is not None:
        data = data[: PREFIX_LEN + header_len]
        length = header_len
    struct.pack_into("<4sHHQ", data, 0, magic, version, length, payload_len)
    return bytes(data) + bytes(payload_len)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (rewrite(0, "<B", 0x63, header_len=HEADER_V1_LEN), "S1: needs header length >= 224"),
        (rewrite(0, "<B", 0x63, payload_len=4), "S2: must have payload length 0, got 4"),
        (rewrite(208, "<Q", 2**40), "S3: shm payload length .* over the limit"),
        (rewrite(168, "32s", b"../etc/passwd"), "S4: bad shm segment name '../etc/passwd'"),
        (rewrite(168, "32s", b"fbshm-1/2-3"), "S4: bad shm segment name"),
        (rewrite(168, "32s", b"\xff\xfe"), "S4: bad shm segment name"),
        (rewrite(200, "<Q", 100), "S5: shm offset 100 is not a multiple of 64"),
        (rewrite(200, "<Q", 0), "S5: shm offset 0"),
        (rewrite(216, "<Q", 0), "S6: zero length or zero token"),
        (rewrite(208, "<Q", 3), "H8: plane 0 ends at byte .* past payload 3"),
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after-a-valid-one"])
def test_each_shm_rule_raises_its_protocol_error(data: bytes, reason: str, warm: bool) -> None:
    """Also after a valid message of the same shape: the reader's shape cache never lets a
    broken message through."""
    reader = FrameReader()
    if warm:
        reader.feed(encode_header(shm_header(), 0))
        assert len(drain(reader)) == 1
    reader.feed(data)
    with pytest.raises(ProtocolError, match=reason.split(": ", 1)[1]):
        drain(reader)


def _outcome(data: bytes, shapes: ShapeCache | None) -> FrameHeader | str:
    header_len, payload_len = PREFIX.unpack_from(data)[2:4]
    try:
        return decode_header(data[PREFIX_LEN : PREFIX_LEN + header_len], payload_len,
                             shapes=shapes)
    except ProtocolError as exc:
        return str(exc)


@settings(max_examples=300)
@given(edits=st.lists(st.tuples(st.integers(0, HEADER_SHM_LEN - 1), st.integers(0, 255),
                                st.booleans()), min_size=1, max_size=12))
def test_the_shape_cache_never_changes_a_result(edits: list[tuple[int, int, bool]]) -> None:
    """A stream of valid and corrupted headers (one byte changed anywhere, shm or FIFO),
    decoded with one shape cache throughout, gives exactly what decoding each alone gives:
    the same header or the same error."""
    shapes: ShapeCache = {}
    shm_data = encode_header(shm_header(), 0)
    fifo_header, payload = make_frame(3, 1, PixelFormat.BGR24, 7, 5)
    fifo_data = encode_header(fifo_header, len(payload))
    for at, value, shm in edits:
        base = shm_data if shm else fifo_data
        for data in (base, _set_byte(base, PREFIX_LEN + at, value)):
            assert _outcome(data, shapes) == _outcome(data, None)


def _set_byte(data: bytes, at: int, value: int) -> bytes:
    if at >= len(data):
        return data
    changed = bytearray(data)
    changed[at] = value
    return bytes(changed)


def test_encode_refuses_what_readers_would_reject() -> None:
    header = shm_header()
    with pytest.raises(ValueError, match="no payload in the stream"):
        encode_header(header, 5)
    assert header.shm is not None
    for bad in (dataclasses.replace(header.shm, segment="x/y"),
                dataclasses.replace(header.shm, offset=65),
                dataclasses.replace(header.shm, token=0),
                dataclasses.replace(header.shm, length=1)):
        with pytest.raises(ValueError):
            encode_header(dataclasses.replace(header, shm=bad), 0)
