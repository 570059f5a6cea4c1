"""The per-subscriber send state, driven with plain integers and bytes (no FIFOs, no clock)."""

from __future__ import annotations

import functools

from framegen import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.framing import FrameReader
from framebus.outbox import RATE_LIMIT, SLOW_READER, Outbox, Outgoing, RateLimiter
from framebus.wire import PixelFormat, encode_header


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


def on(stream: str, seq: int) -> Outgoing[int]:
    return Outgoing(seq, seq, lambda missed: [memoryview(f"{stream}{seq}/{missed};".encode())],
                    stream)


def drain_one(outbox: Outbox[int]) -> str:
    chunks = outbox.chunks()
    text = b"".join(bytes(c) for c in chunks).decode()
    assert outbox.wrote(sum(len(c) for c in chunks))
    return text


def test_streams_are_served_in_turn_and_a_fast_one_never_starves_a_slow_one() -> None:
    outbox: Outbox[int] = Outbox()
    outbox.offer(on("fast", 1), 0)
    outbox.offer(on("slow", 1), 0)
    for seq in range(2, 6):  # the fast camera keeps replacing its own pending frame ...
        outbox.offer(on("fast", seq), 0)
    # ... in place: it was first in line, then the slow one gets its turn
    assert [drain_one(outbox) for _ in range(2)] == ["fast5/0;", "slow1/0;"]
    outbox.offer(on("fast", 6), 0)
    outbox.offer(on("slow", 3), 0)  # slow seq 2 came and went for another subscriber
    assert [drain_one(outbox) for _ in range(2)] == ["fast6/0;", "slow3/1;"]  # missed per camera
    assert outbox.stream_stats["fast"].dropped[SLOW_READER] == 4  # fast 1..4, replaced
    assert outbox.stream_stats["slow"].dropped == {}
    assert (outbox.stream_stats["fast"].sent, outbox.stream_stats["slow"].sent) == (2, 2)
    assert outbox.stats.sent == 4 and outbox.stats.offered == 8


@settings(max_examples=200)
@given(ops=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "write", "gone"]),
                              st.integers(1, 3)), max_size=80))
def test_per_stream_accounting_is_exact_and_holds_at_most_one_per_stream(
        ops: list[tuple[str, int]]) -> None:
    outbox: Outbox[int] = Outbox()
    seqs = {"a": 0, "b": 0, "c": 0}
    for op, count in ops:
        if op == "write":
            for _ in range(count):
                if outbox.chunks():
                    drain_one(outbox)
        elif op == "gone":
            outbox.reader_gone()
        else:
            for _ in range(count):
                seqs[op] += 1
                outbox.offer(on(op, seqs[op]), 0)
        assert outbox.in_flight <= 1 + len(seqs)
        pending = {o: 0 for o in seqs}
        for token_stream in outbox._pending:
            pending[token_stream] += 1
        for stream, stats in outbox.stream_stats.items():
            assert stats.offered == stats.sent + sum(stats.dropped.values()) + pending[stream]
    total = outbox.stats
    assert total.offered == total.sent + sum(total.dropped.values()) + outbox.in_flight


def test_state_messages_go_first_newest_per_stream_and_are_not_frames() -> None:
    released: list[str] = []
    outbox: Outbox[str] = Outbox(release=released.append)

    def state(stream: str, text: str) -> Outgoing[str]:
        return Outgoing(0, text, lambda _missed, t=text: [memoryview(t.encode())], stream)

    outbox.offer(Outgoing(1, "f1", lambda m: [memoryview(b"frame")], "a"), 0)
    outbox.offer_state(state("a", "down"))
    outbox.offer_state(state("a", "reconnecting"))  # replaces the waiting one
    outbox.offer_state(state("b", "idle"))
    assert released == ["down"]
    sent = []
    while outbox.has_bytes:
        chunks = outbox.chunks()
        sent.append(b"".join(bytes(c) for c in chunks))
        assert outbox.wrote(sum(len(c) for c in chunks))
    assert sent == [b"reconnecting", b"idle", b"frame"]  # states before the waiting frame
    stats = outbox.stats
    assert (stats.offered, stats.sent) == (1, 1) and not stats.dropped  # frames only
    outbox.offer_state(state("a", "down"))
    chunks = outbox.chunks()
    outbox.wrote(1)  # begun, then the reader leaves mid-message
    outbox.reader_gone()
    assert not outbox.stats.dropped  # a lost STATE message is no dropped frame
