"""The per-subscriber send state, driven with plain integers and bytes (no FIFOs, no clock)."""

from __future__ import annotations

import functools

from framegen import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.outbox import RATE_LIMIT, SLOW_READER, Outbox, Outgoing, RateLimiter
from framebus.wire import FrameReader, PixelFormat, encode_header


def encode(seq: int, missed: int) -> list[memoryview]:
    header, payload = make_frame(1, seq, PixelFormat.GRAY, 37, 5)
    return [memoryview(encode_header(header, len(payload), missed)), memoryview(payload)]


def outgoing(seq: int) -> Outgoing[int]:
    return Outgoing(seq, seq, functools.partial(encode, seq))


ops = st.lists(st.one_of(
    st.tuples(st.just("offer"), st.integers(0, 3)),        # how many frames are published
    st.tuples(st.just("write"), st.integers(1, 400)),      # how many bytes the pipe takes
    st.tuples(st.just("gone"), st.just(0)),
), max_size=120)


@settings(max_examples=300)
@given(ops=ops, max_fps=st.sampled_from([None, 10.0]))
def test_accounting_is_exact_and_the_byte_stream_is_never_torn(
    ops: list[tuple[str, int]], max_fps: float | None
) -> None:
    outbox: Outbox[int] = Outbox(max_fps)
    reader, seq, now = FrameReader(), 0, 0
    received: list[tuple[int, int]] = []
    for op, value in ops:
        if op == "offer":
            for _ in range(value):
                seq += 1
                now += 40_000_000  # 25 fps
                outbox.offer(outgoing(seq), now)
        elif op == "write":
            chunks = outbox.chunks()
            data = b"".join(bytes(c) for c in chunks)[:value]
            reader.feed(data)
            outbox.wrote(len(data))
            while (message := reader.next_message()) is not None:
                received.append((message.header.seq, message.header.missed))
        else:
            if not reader.at_boundary:
                reader = FrameReader()  # the old reader's partial message dies with it
            outbox.reader_gone()
            received.append((-1, -1))  # a new reader session starts here
        stats = outbox.stats
        assert stats.offered == stats.sent + sum(stats.dropped.values()) + outbox.in_flight
        assert outbox.in_flight <= 2
        assert len(outbox.held()) == outbox.in_flight
    previous = None
    for got_seq, missed in received:  # within a session, seq gaps are exactly the drops
        if got_seq == -1:
            previous = None
            continue
        if previous is not None:
            assert got_seq == previous + 1 + missed
        previous = got_seq


def test_newest_wins_and_a_begun_message_is_finished_first() -> None:
    outbox: Outbox[int] = Outbox()
    outbox.offer(outgoing(1), 0)
    first = b"".join(bytes(c) for c in outbox.chunks())
    outbox.wrote(10)  # frame 1 is now in flight, partly written
    for seq in (2, 3, 4):
        outbox.offer(outgoing(seq), 0)
    rest = b"".join(bytes(c) for c in outbox.chunks())
    assert rest == first[10:]  # the in-flight message continues, whatever arrived since
    assert outbox.wrote(len(rest))
    assert outbox.stats.dropped[SLOW_READER] == 2  # 2 and 3 replaced in the pending slot
    reader = FrameReader()
    reader.feed(b"".join(bytes(c) for c in outbox.chunks()))
    message = reader.next_message()
    assert message is not None and (message.header.seq, message.header.missed) == (4, 2)


def test_empty_outbox_wants_no_epollout() -> None:
    outbox: Outbox[int] = Outbox()
    assert not outbox.has_bytes and outbox.chunks() == []
    outbox.offer(outgoing(1), 0)
    assert outbox.has_bytes
    chunks = outbox.chunks()
    assert outbox.wrote(sum(len(c) for c in chunks))
    assert not outbox.has_bytes and outbox.last_completed == 1


def test_rate_limiter_admits_max_fps_from_a_faster_source() -> None:
    limiter = RateLimiter(10.0)
    frame_ns = 40_000_000  # a 25 fps camera for 60 s
    admitted = sum(limiter.admit(i * frame_ns) for i in range(25 * 60))
    assert 599 <= admitted <= 601


def test_rate_limiter_catches_up_after_a_pause_without_a_burst() -> None:
    limiter = RateLimiter(5.0)
    assert limiter.admit(0)
    assert limiter.admit(10_000_000_000)  # 10 s silence, then frames every 10 ms
    burst = sum(limiter.admit(10_000_000_000 + i * 10_000_000) for i in range(1, 20))
    assert burst == 0  # no catch-up burst within the next 200 ms


def test_rate_limited_frames_count_as_drops() -> None:
    outbox: Outbox[int] = Outbox(max_fps=1.0)
    for seq in range(1, 11):
        outbox.offer(outgoing(seq), seq * 100_000_000)  # 10 frames in 1 s
    assert outbox.stats.dropped[RATE_LIMIT] == 9
