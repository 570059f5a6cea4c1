"""The sans-IO codec: round trips, any chunking, trailing bytes, and hostile input."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from framegen import make_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framebus.errors import ProtocolError
from framebus.framing import FrameReader
from framebus.wire import (
    HEADER_LEN,
    HEADER_V1_LEN,
    MAGIC,
    PREFIX,
    PREFIX_LEN,
    EncodedHeader,
    FrameHeader,
    Message,
    PixelFormat,
    Plane,
    ShmLocation,
    encode_header,
    encode_message,
)

formats = st.sampled_from(list(PixelFormat))
sizes = st.integers(min_value=1, max_value=33)


def drain(reader: FrameReader) -> list[Message]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


def assert_same(message: Message, header: FrameHeader, payload: bytes) -> None:
    assert message.header == header
    assert bytes(message.payload) == payload


@settings(max_examples=300)
@given(fmt=formats, width=sizes, height=sizes, padding=st.integers(0, 5), seed=st.integers(0, 99))
def test_round_trip_fed_whole(
    fmt: PixelFormat, width: int, height: int, padding: int, seed: int
) -> None:
    header, payload = make_frame(seed, 1, fmt, width, height, padding)
    reader = FrameReader()
    reader.feed(encode_message(header, payload))
    [message] = drain(reader)
    assert_same(message, header, payload)
    assert reader.at_boundary
    reader.close()


@settings(max_examples=60)
@given(fmt=formats, width=sizes, height=sizes)
def test_round_trip_one_byte_at_a_time(fmt: PixelFormat, width: int, height: int) -> None:
    header, payload = make_frame(3, 2, fmt, width, height)
    data = encode_message(header, payload)
    reader = FrameReader()
    got: list[Message] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        got += drain(reader)
        assert len(got) == (1 if i == len(data) - 1 else 0)  # never early, never half
    assert_same(got[0], header, payload)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.tuples(formats, sizes, sizes, st.integers(0, 3)), min_size=1, max_size=6),
    chunks=st.lists(st.integers(1, 700), min_size=1, max_size=50),
    zero_copy=st.booleans(),
)
def test_stream_of_messages_in_random_chunks(
    frames: list[tuple[PixelFormat, int, int, int]], chunks: list[int], zero_copy: bool
) -> None:
    expected = [make_frame(5, i, *spec) for i, spec in enumerate(frames)]
    data = b"".join(encode_message(h, p) for h, p in expected)
    reader = FrameReader(reuse_buffer=zero_copy)
    got: list[tuple[FrameHeader, bytes]] = []
    pos, turn = 0, 0
    while pos < len(data):
        size = chunks[turn % len(chunks)]
        turn += 1
        if zero_copy:  # write into the reader's own buffer, as the client does with readv
            target = reader.writable()
            count = min(size, len(target), len(data) - pos)
            target[:count] = data[pos : pos + count]
            reader.commit(count)
        else:
            count = min(size, len(data) - pos)
            reader.feed(data[pos : pos + count])
        pos += count
        # copy each out before taking the next: with reuse_buffer the next message overwrites
        # the payload (a boundary read may bring several messages at once)
        while (message := reader.next_message()) is not None:
            got.append((message.header, bytes(message.payload)))
    assert got == expected
    reader.close()


@settings(max_examples=200)
@given(fmt=formats, width=sizes, height=sizes, missed=st.integers(0, 2**64 - 1),
       shm=st.booleans())
def test_an_encoded_header_patched_per_subscriber_equals_one_encoded_for_it(
    fmt: PixelFormat, width: int, height: int, missed: int, shm: bool
) -> None:
    """The fan-out loop encodes a frame's header once and patches ``missed`` per subscriber:
    byte for byte what encoding it for that subscriber would give, and the shared bytes stay
    untouched."""
    header, payload = make_frame(5, 9, fmt, width, height)
    if shm and fmt.is_raw:
        header = dataclasses.replace(header, shm=ShmLocation("fbshm-1-2", 128, len(payload), 7))
    payload_len = 0 if header.shm else len(payload)
    encoded = EncodedHeader(header, payload_len)
    shared = bytes(encoded.data)
    assert bytes(encoded.with_missed(missed)) == encode_header(header, payload_len, missed)
    assert encoded.data == shared == encode_header(header, payload_len, 0)
    reader = FrameReader()
    reader.feed(bytes(encoded.with_missed(missed)) + (b"" if header.shm else payload))
    [message] = drain(reader)
    assert message.header.missed == missed


@pytest.mark.parametrize("fmt", list(PixelFormat))
def test_trailing_partial_message_stays_buffered_then_truncates(fmt: PixelFormat) -> None:
    header, payload = make_frame(1, 1, fmt, 7, 5)
    whole = encode_message(header, payload)
    reader = FrameReader()
    reader.feed(whole + whole[:PREFIX_LEN + 3])
    [message] = drain(reader)
    assert_same(message, header, payload)
    assert not reader.at_boundary
    with pytest.raises(ProtocolError, match="truncated message at EOF: header has 3 of"):
        reader.close()


def test_truncated_inside_payload_names_the_stage() -> None:
    header, payload = make_frame(1, 1, PixelFormat.BGR24, 4, 4)
    reader = FrameReader()
    reader.feed(encode_message(header, payload)[:-1])
    assert drain(reader) == []
    with pytest.raises(ProtocolError, match=f"payload has {len(payload) - 1} of {len(payload)}"):
        reader.close()


def test_appended_header_fields_are_skipped_by_a_v1_reader() -> None:
    header, payload = make_frame(2, 9, PixelFormat.GRAY, 3, 3)
    encoded = encode_header(header, len(payload))
    extra = b"future-field-bytes"
    magic, version, header_len, payload_len = PREFIX.unpack_from(encoded)
    grown = PREFIX.pack(magic, version, header_len + len(extra), payload_len)
    reader = FrameReader()
    reader.feed(grown + encoded[PREFIX_LEN:] + extra + payload)
    [message] = drain(reader)
    assert_same(message, header, payload)


def valid_message() -> bytes:
    header, payload = make_frame(4, 4, PixelFormat.YUV420P, 5, 3)
    return encode_message(header, payload)


def rewrite_prefix(**fields: int | bytes) -> bytes:
    data = valid_message()
    magic, version, header_len, payload_len = PREFIX.unpack_from(data)
    values = {"magic": magic, "version": version, "header_len": header_len,
              "payload_len": payload_len, **fields}
    return PREFIX.pack(*values.values()) + data[PREFIX_LEN:]


def rewrite_header(offset: int, fmt: str, value: int | bytes) -> bytes:
    data = bytearray(valid_message())
    struct.pack_into(fmt, data, PREFIX_LEN + offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (rewrite_prefix(magic=b"RIFF"), "bad magic"),
        (rewrite_prefix(version=2), "unsupported protocol version 2"),
        (rewrite_prefix(header_len=HEADER_V1_LEN - 1), "shorter than v1"),
        (rewrite_prefix(header_len=5000), "header length 5000 over the limit"),
        (rewrite_prefix(payload_len=2**63), "payload length .* over the limit"),
        (rewrite_prefix(payload_len=3), "plane 0 ends at byte"),
        (rewrite_header(0, "64s", b"\xff\xfe"), "not valid UTF-8"),
        (rewrite_header(0, "64s", b""), "camera name is empty"),
        (rewrite_header(120, "<B", 77), "unknown pixel format code 77"),
        (rewrite_header(121, "<B", 9), "unknown capture time source 9"),
        (rewrite_header(124, "<H", 9), "plane count 9 over"),
        (rewrite_header(124, "<H", 2), "needs 3 planes, header has 2"),
        (rewrite_header(128, "<I", 0), "frame size 0x3"),
        (rewrite_header(140, "<I", 1), "stride 1 < row size 5"),
    ],
)
def test_bad_input_raises_a_specific_protocol_error(data: bytes, reason: str) -> None:
    reader = FrameReader()
    reader.feed(data)
    with pytest.raises(ProtocolError, match=reason):
        drain(reader)


def test_huge_declared_payload_is_refused_before_any_allocation() -> None:
    reader = FrameReader(max_payload_len=1024)
    reader.feed(rewrite_prefix(payload_len=1025))
    with pytest.raises(ProtocolError, match="over the limit of 1024"):
        drain(reader)
    assert len(reader._payload) == 0  # nothing was allocated for it


@settings(max_examples=500)
@given(data=st.binary(max_size=400), at=st.integers(0, 400), noise=st.binary(min_size=1))
def test_mutated_and_random_input_only_raises_protocol_error(
    data: bytes, at: int, noise: bytes
) -> None:
    base = valid_message()
    mutated = base[:at] + noise + base[at + len(noise):]
    for stream in (data, mutated, MAGIC + data):
        reader = FrameReader(max_payload_len=1 << 20)
        try:
            reader.feed(stream)
            drain(reader)
            reader.close()
        except ProtocolError:
            pass


def test_encode_refuses_names_the_wire_cannot_carry() -> None:
    header, payload = make_frame(1, 1, PixelFormat.GRAY, 2, 2)
    for bad in ("", "x" * 65):
        with pytest.raises(ValueError, match="camera name"):
            encode_header(FrameHeader(bad, 1, PixelFormat.GRAY, 2, 2, (Plane(0, 2),)), 4)
    assert len(encode_message(header, payload)) == PREFIX_LEN + HEADER_LEN + len(payload)
