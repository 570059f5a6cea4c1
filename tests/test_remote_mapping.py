"""The pure mapping of PROTOCOL.md messages onto zenoh samples (framebus.remote.mapping):
keys, attachments that are FIFO messages fed whole and byte by byte, refusals of anything
that is not a framebus sample, and what a remote reader missed by seq."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from framegen import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.errors import ProtocolError
from framebus.framing import FrameReader
from framebus.remote.mapping import (
    MAX_ATTACHMENT,
    MissCounter,
    data_key,
    decode_sample,
    frame_attachment,
    selector,
    split_key,
    state_sample,
)
from framebus.wire import (
    HEADER_LEN,
    PREFIX,
    PREFIX_LEN,
    Flags,
    FrameHeader,
    Message,
    PixelFormat,
    ShmLocation,
    StateHeader,
    StreamState,
    encode_header,
    encode_state,
)

SIZES = [(1, 1), (7, 5), (33, 17)]


def drain(reader: FrameReader) -> list[Message]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


def frame(fmt: PixelFormat = PixelFormat.GRAY, seq: int = 3, instance: int = 0xC0FFEE,
          padding: int = 0, width: int = 7, height: int = 5) -> tuple[FrameHeader, bytes]:
    header, payload = make_frame(11, seq, fmt, width, height, padding)
    return dataclasses.replace(header, instance=instance), payload


# -- keys ------------------------------------------------------------------------------------


def test_data_key_selector_and_split_key() -> None:
    assert data_key("camhost1", "lobby", "nv12-1280x720") == "framebus/camhost1/lobby/nv12-1280x720"
    assert selector("lobby") == "framebus/*/lobby/*"
    assert selector("lobby", host="camhost1") == "framebus/camhost1/lobby/*"
    assert selector("lobby", rendition="preview") == "framebus/*/lobby/preview"
    assert split_key(data_key("h.1", "cam_2", "jpeg-w640")) == ("h.1", "cam_2", "jpeg-w640")


@pytest.mark.parametrize("key", [
    "", "framebus", "framebus/h/cam", "framebus/h/cam/r/extra", "other/h/cam/r",
    "FRAMEBUS/h/cam/r", "framebus//cam/r", "framebus/h//r", "framebus/h/cam/", "/framebus/h/c/r",
    "framebus/*/cam/r", "framebus/h/**/r", "framebus/h/cam/$*", "framebus/h/cam/r?x=1",
    "framebus/h/cam\n/r", "framebus/h/cam/r\n", "framebus/h/-cam/r", "framebus/h/c am/r",
    "framebus/" + "h" * 65 + "/cam/r", "framebus/h/cam/" + "r" * 100_000,
], ids=lambda key: repr(key[:40]))
def test_split_key_refuses_what_is_not_a_data_key(key: str) -> None:
    with pytest.raises(ProtocolError, match="not a framebus data key") as info:
        split_key(key)
    assert len(str(info.value)) < 300  # a hostile key is not echoed whole


# -- frames: round trips -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(PixelFormat))
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_frame_sample_round_trip_for_each_format(fmt: PixelFormat, width: int,
                                                 height: int) -> None:
    for padding in (0, 3):
        header, payload = frame(fmt, width=width, height=height, padding=padding)
        attachment = frame_attachment(header, len(payload), missed=7)
        assert len(attachment) == PREFIX_LEN + HEADER_LEN  # a 1.2 writer's header exactly
        message = decode_sample(attachment, memoryview(payload))
        assert message.header == dataclasses.replace(header, missed=7)
        assert bytes(message.payload) == payload


def test_frame_attachment_clears_the_shm_area() -> None:
    header, payload = frame(PixelFormat.NV12, width=8, height=4)
    shm_header = dataclasses.replace(header, flags=Flags.KEYFRAME | Flags.SHM,
                                     shm=ShmLocation("fbshm-12-3", 128, len(payload), 99))
    attachment = frame_attachment(shm_header, len(payload), 0)
    decoded = decode_sample(attachment, memoryview(payload)).header
    assert isinstance(decoded, FrameHeader)
    assert decoded.shm is None and decoded.flags == Flags.KEYFRAME
    assert attachment == encode_header(dataclasses.replace(header, flags=Flags.KEYFRAME),
                                       len(payload), 0)


@pytest.mark.parametrize("fmt", list(PixelFormat))
def test_attachment_plus_payload_is_a_fifo_message(fmt: PixelFormat) -> None:
    header, payload = frame(fmt, seq=9, padding=2)
    attachment = frame_attachment(header, len(payload), missed=2)
    state_att, state_payload = state_sample(
        StateHeader("cam-4", StreamState.IDLE, 9, 1, 5, 6, 0xC0FFEE), "no frame for 5s")
    stream = attachment + payload + state_att + state_payload + attachment + payload
    expected = [dataclasses.replace(header, missed=2),
                StateHeader("cam-4", StreamState.IDLE, 9, 1, 5, 6, 0xC0FFEE),
                dataclasses.replace(header, missed=2)]
    whole = FrameReader()
    whole.feed(stream)
    assert [m.header for m in drain(whole)] == expected
    whole.close()
    byte_by_byte = FrameReader()
    got: list[Message] = []
    for index in range(len(stream)):
        byte_by_byte.feed(stream[index:index + 1])
        got += [dataclasses.replace(m, payload=memoryview(bytes(m.payload)))
                for m in drain(byte_by_byte)]
    assert [m.header for m in got] == expected
    assert [bytes(m.payload) for m in got] == [payload, b"no frame for 5s", payload]
    byte_by_byte.close()
    trailing = FrameReader()  # a message followed by the start of the next one
    trailing.feed(attachment + payload + attachment[:20])
    [message] = drain(trailing)
    assert bytes(message.payload) == payload and not trailing.at_boundary
    with pytest.raises(ProtocolError, match="truncated"):
        trailing.close()


# -- refusals ------------------------------------------------------------------------------


def _with_prefix(attachment: bytes, header_len: int | None = None,
                 payload_len: int | None = None) -> bytes:
    magic, version, old_header_len, old_payload_len = PREFIX.unpack_from(attachment)
    return PREFIX.pack(magic, version, old_header_len if header_len is None else header_len,
                       old_payload_len if payload_len is None else payload_len) + attachment[16:]


def test_decode_sample_refusals() -> None:
    header, payload = frame(PixelFormat.BGR24)
    att = frame_attachment(header, len(payload), 0)
    view = memoryview(payload)
    cases: list[tuple[bytes, memoryview, str]] = [
        (b"", view, "no framebus prefix"),
        (att[:PREFIX_LEN - 1], view, "no framebus prefix"),
        (att[:PREFIX_LEN], view, "header_len says"),
        (att[:200], view, "header_len says"),
        (att + b"\0", view, "header_len says"),
        (att + bytes(MAX_ATTACHMENT), view, "over"),
        (_with_prefix(att, header_len=232), view, "header_len says"),
        (_with_prefix(att, header_len=5000), view, "over"),
        (att, view[:-1], "payload_len says"),
        (att, memoryview(payload + b"x"), "payload_len says"),
        (_with_prefix(att, payload_len=len(payload) - 1), view[:-1], "past payload"),
        (b"GARBAGE!" * 32, view, "bad magic"),
        (att.replace(b"FBUS", b"FBUZ", 1), view, "bad magic"),
    ]
    for attachment, body, why in cases:
        with pytest.raises(ProtocolError, match=why):
            decode_sample(attachment, body)
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_sample(att, view, max_payload_len=len(payload) - 1)


def test_an_shm_message_cannot_cross_hosts() -> None:
    header, payload = frame(PixelFormat.GRAY)
    shm = ShmLocation("fbshm-1-2", 64, len(payload), 7)
    attachment = encode_header(dataclasses.replace(header, shm=shm), 0)
    with pytest.raises(ProtocolError, match="shm message cannot cross hosts"):
        decode_sample(attachment, memoryview(b""))
    with pytest.raises(ProtocolError):  # its pixels sent along do not make it a frame
        decode_sample(attachment, memoryview(payload))


def test_a_state_with_a_reason_that_is_not_utf8_is_refused() -> None:
    att, _ = state_sample(StateHeader("cam", StreamState.DOWN, instance=1), "xx")
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_sample(att, memoryview(b"\xff\xfe"))


def _decodes_or_refuses(attachment: bytes, payload: bytes) -> None:
    try:
        message = decode_sample(attachment, memoryview(payload))
    except ProtocolError:
        return
    assert isinstance(message.header, FrameHeader | StateHeader)


@settings(max_examples=400, deadline=None)
@given(attachment=st.binary(max_size=600), payload=st.binary(max_size=64))
def test_random_bytes_only_ever_raise_protocol_error(attachment: bytes, payload: bytes) -> None:
    _decodes_or_refuses(attachment, payload)


def _valid(fmt: PixelFormat) -> bytes:
    header, payload = frame(fmt)
    return frame_attachment(header, len(payload), 0)


VALID = [_valid(fmt) for fmt in PixelFormat]


@settings(max_examples=600, deadline=None)
@given(which=st.integers(0, len(PixelFormat) - 1),
       edits=st.lists(st.tuples(st.integers(0, PREFIX_LEN + HEADER_LEN - 1), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.integers(0, 40), payload=st.binary(max_size=700))
def test_corrupted_attachments_only_ever_raise_protocol_error(
        which: int, edits: list[tuple[int, int]], cut: int, payload: bytes) -> None:
    attachment = bytearray(VALID[which])
    for at, value in edits:
        attachment[at] = value
    _decodes_or_refuses(bytes(attachment), payload)
    _decodes_or_refuses(bytes(attachment[:len(attachment) - cut]), payload)


# -- STATE samples -------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "camera lost: read timeout", "Kamera ☃ weg",
                                    "x" * 300, "a\0b"])
def test_state_sample_round_trip(reason: str) -> None:
    header = StateHeader("lobby", StreamState.RECONNECTING, 41, 3, 1_700_000_000, 55, 0xABC)
    attachment, payload = state_sample(header, reason)
    assert attachment + payload == encode_state(header, reason)
    assert len(attachment) == PREFIX_LEN + HEADER_LEN and len(payload) <= 256
    message = decode_sample(attachment, memoryview(payload))
    assert message.header == header
    assert bytes(message.payload).decode() == reason.replace("\0", "")[:256]


# -- MissCounter ---------------------------------------------------------------------------


def _h(seq: int, camera: str = "lobby", instance: int = 1) -> FrameHeader:
    header, _ = frame(PixelFormat.GRAY)
    return dataclasses.replace(header, camera=camera, seq=seq, instance=instance)


def test_miss_counter_gaps_duplicates_old_frames_and_restarts() -> None:
    counter = MissCounter()
    assert counter.take(_h(100)) == 0  # the first frame: nothing to compare with
    assert counter.take(_h(101)) == 0
    assert counter.take(_h(105)) == 3
    assert counter.take(_h(105)) is None  # a duplicate
    assert counter.take(_h(102)) is None  # an old frame from a slower route
    assert counter.take(_h(106)) == 0  # still counted from 105, not from the skipped ones
    assert counter.take(_h(1, instance=2)) == 0  # a new daemon: seq starts over
    assert counter.take(_h(2, instance=2)) == 0
    assert counter.take(_h(5, instance=2)) == 2
    assert counter.take(_h(7, camera="hall")) == 0  # per camera
    assert counter.take(_h(9, camera="hall")) == 1
    assert counter.take(_h(6, instance=2)) == 0
    assert counter.last == {"lobby": (2, 6), "hall": (1, 9)}


def test_header_fields_survive_the_attachment() -> None:
    header, payload = frame(PixelFormat.YUV420P, seq=2**63 - 1, instance=2**64 - 1)
    header = dataclasses.replace(header, epoch=2**64 - 1, pts=-(2**63) + 1,
                                 time_base=(1001, 30000), capture_time_ns=2**63 - 1)
    att = frame_attachment(header, len(payload), 2**64 - 1)
    decoded = decode_sample(att, memoryview(payload)).header
    assert decoded == dataclasses.replace(header, missed=2**64 - 1)
    assert struct.unpack_from("<Q", att, PREFIX_LEN + 224)[0] == 2**64 - 1  # instance
