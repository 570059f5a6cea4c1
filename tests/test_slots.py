"""shm slot bookkeeping, driven with integers only (no segments, no pipes, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from framebus.outbox import Outbox, Outgoing
from framebus.slots import HoldLedger, SlotPool, SlotRef, capacity

MSG = 240  # an shm message: 16 + 224 bytes


def test_claim_takes_the_lowest_free_slot_with_a_fresh_token() -> None:
    pool = SlotPool(3)
    a, b = pool.claim(), pool.claim()
    assert a is not None and b is not None
    assert (a.slot, b.slot) == (0, 1) and a.token != b.token
    pool.unpin(a)
    again = pool.claim()
    assert again is not None and again.slot == 0 and again.token not in (a.token, b.token)


def test_a_full_pool_claims_nothing() -> None:
    pool = SlotPool(2)
    assert pool.claim() and pool.claim()
    assert pool.claim() is None


def test_pin_of_a_rewritten_slot_fails() -> None:
    pool = SlotPool(1)
    first = pool.claim()
    assert first is not None
    pool.unpin(first)
    second = pool.claim()
    assert second is not None and second.slot == first.slot
    assert not pool.pin(first)  # the old frame is gone: never pin the new one by mistake
    assert pool.pin(second)


def test_pin_of_a_released_slot_fails_and_unpin_twice_is_an_error() -> None:
    pool = SlotPool(1)
    ref = pool.claim()
    assert ref is not None
    pool.unpin(ref)
    assert not pool.pin(ref)
    with pytest.raises(RuntimeError):
        pool.unpin(ref)


def test_ledger_releases_a_message_once_the_reader_begins_the_next() -> None:
    ledger: HoldLedger[str] = HoldLedger()
    ledger.wrote(MSG, "a")
    assert ledger.consumed(MSG) == []  # nothing read yet
    assert not ledger.may_send(MSG)  # at most one unread message
    assert ledger.may_send(MSG - 1)  # the reader began "a"
    ledger.wrote(MSG, "b")
    assert ledger.consumed(MSG) == []  # "a" read whole: still held until "b" is begun
    assert ledger.consumed(MSG - 1) == ["a"]
    assert ledger.items() == ["b"]
    assert ledger.may_send(MSG - 1) and not ledger.may_send(MSG)


def test_ledger_clear_releases_everything_and_restarts_the_stream() -> None:
    ledger: HoldLedger[str] = HoldLedger()
    ledger.wrote(MSG, "a")
    ledger.wrote(MSG, "b")
    assert ledger.clear() == ["a", "b"]
    assert ledger.written == 0 and len(ledger) == 0 and ledger.may_send(0)


def test_ledger_refuses_impossible_fionread() -> None:
    ledger: HoldLedger[str] = HoldLedger()
    ledger.wrote(MSG, "a")
    with pytest.raises(ValueError):
        ledger.consumed(MSG + 1)


ops = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 2)),  # which subscribers are offered
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(1, 300)),  # who reads how much
    st.tuples(st.just("gone"), st.integers(0, 2), st.just(0)),
).map(lambda t: t if len(t) == 3 else (*t, 0)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_random_runs_never_reuse_a_held_slot_nor_exceed_the_bound(
    ops: list[tuple[str, int, int]],
) -> None:
    """A model of the loop: the store pins the newest frame, each subscriber has a pending
    slot, a ledger and a reader that consumes bytes. Whatever happens, no slot a reader may
    still hold is ever claimed for a new write, and pins stay within capacity()."""
    subscribers = 3
    pool = SlotPool(capacity(subscribers))
    latest: SlotRef | None = None
    pending: list[SlotRef | None] = [None] * subscribers
    ledgers: list[HoldLedger[SlotRef]] = [HoldLedger() for _ in range(subscribers)]
    read = [0] * subscribers  # bytes each reader consumed
    content: dict[int, int] = {}  # slot -> token written there last

    def flush(i: int) -> None:
        ledger = ledgers[i]
        unread = ledger.written - read[i]
        for ref in ledger.consumed(unread):
            pool.unpin(ref)
        if pending[i] is not None and ledger.may_send(unread):
            ledger.wrote(MSG, pending[i])
            pending[i] = None

    for op, who, amount in ops:
        if op == "publish":
            ref = pool.claim()
            assert ref is not None, "capacity() must always leave a free slot"
            for i, ledger in enumerate(ledgers):  # nothing a reader may hold is rewritten
                held = ledger.items()
                assert all(h.slot != ref.slot for h in held), (i, held, ref)
            content[ref.slot] = ref.token
            if latest is not None:
                pool.unpin(latest)
            latest = ref
            for i in range(who + 1):  # offer to some subscribers (newest wins)
                if pool.pin(ref):
                    if pending[i] is not None:
                        pool.unpin(pending[i])  # type: ignore[arg-type]
                    pending[i] = ref
                flush(i)
        elif op == "read":
            ledger = ledgers[who]
            read[who] = min(ledger.written, read[who] + amount)
            flush(who)
            begun = [h for h in ledger.items()]
            for h in begun:  # whatever the reader still holds is intact
                assert content[h.slot] == h.token
        else:  # the reader closed its end
            for ref in ledgers[who].clear():
                pool.unpin(ref)
            read[who] = 0
        assert pool.references() <= capacity(subscribers)
        for i, ledger in enumerate(ledgers):
            assert len(ledger) + (pending[i] is not None) <= 3


# -- a multi-camera shm subscriber: one pipe, one ledger, one segment per camera ---------------

CAMERAS = ("a", "b", "c", "d")
# subscriber -> its cameras: "d" has one subscriber (its segment has capacity(1) = 5 slots,
# every one of them needed), the others two
READS = ((0, 1, 2), (0, 1), (2, 3))
# the worst case of camera "d": held, unread, pending, the store's newer newest, and a write
WORST = [("publish", 3, 0), ("offer", 3, 0), ("read", 2, 1), ("publish", 3, 0),
         ("offer", 3, 0), ("publish", 3, 0), ("offer", 3, 0), ("publish", 3, 0),
         ("publish", 3, 0)]

camera_ops = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(range(len(CAMERAS))), st.just(0)),
    st.tuples(st.just("offer"), st.sampled_from(range(len(CAMERAS))), st.just(0)),
    st.tuples(st.just("read"), st.sampled_from(range(len(READS))), st.integers(1, 600)),
    st.tuples(st.just("gone"), st.sampled_from(range(len(READS))), st.just(0)),
), max_size=250)


@settings(max_examples=300, deadline=None)
@given(ops=camera_ops)
@example(ops=WORST)
def test_multi_camera_subscribers_pin_at_most_3_slots_in_each_cameras_segment(
    ops: list[tuple[str, int, int]],
) -> None:
    """The loop's shm path with several cameras in one pipe, as fanout.py runs it: the real
    Outbox (one pending frame per camera, newest wins), the real HoldLedger (one unread
    message per pipe) and one SlotPool per camera sized ``capacity(n)`` for that camera's n
    subscribers. A decoder publishes (``publish``: claim, write, replace the store's newest)
    apart from the loop offering the newest frame (``offer``), so the store may be ahead of
    what subscribers have pending, as in the daemon. Whatever the order of frames, offers and
    reads, each subscriber pins at most 3 slots in each camera's pool, a write always finds a
    free slot, and no slot a reader may still hold is rewritten."""
    pools = [SlotPool(capacity(sum(c in cams for cams in READS))) for c in range(len(CAMERAS))]
    latest: list[SlotRef | None] = [None] * len(CAMERAS)
    content: dict[tuple[int, int], int] = {}  # (camera, slot) -> token written there last
    seqs = [0] * len(CAMERAS)
    offered = [[0] * len(CAMERAS) for _ in READS]  # the loop's last_offered

    def unpin(token: tuple[int, SlotRef]) -> None:  # (camera, its write)
        pools[token[0]].unpin(token[1])

    outboxes: list[Outbox[tuple[int, SlotRef]]] = [Outbox(release=unpin) for _ in READS]
    ledgers: list[HoldLedger[tuple[int, SlotRef]]] = [HoldLedger() for _ in READS]
    read = [0] * len(READS)

    def flush(i: int) -> None:  # FanoutLoop._flush, with a pipe that takes whole messages
        outbox, ledger = outboxes[i], ledgers[i]
        while True:
            unread = ledger.written - read[i]
            for token in ledger.consumed(unread):
                unpin(token)
            if not ledger.may_send(unread):
                return
            start = ledger.written
            chunks = outbox.chunks()
            if not chunks:
                return
            count = sum(len(chunk) for chunk in chunks)
            ledger.advance(count)
            assert outbox.wrote(count) and outbox.last_completed is not None
            ledger.record(start, outbox.last_completed)

    def pins(i: int, camera: int) -> int:
        held = [*ledgers[i].items(), *outboxes[i].held()]
        return sum(token[0] == camera for token in held)

    for op, who, amount in ops:
        if op == "publish":
            camera = who
            ref = pools[camera].claim()
            assert ref is not None, "capacity() must always leave a free slot"
            for ledger in ledgers:  # nothing a reader may hold is rewritten
                assert all(r.slot != ref.slot for c, r in ledger.items() if c == camera)
            content[(camera, ref.slot)] = ref.token
            previous, latest[camera] = latest[camera], ref
            if previous is not None:
                pools[camera].unpin(previous)
            seqs[camera] += 1
        elif op == "offer":  # FanoutLoop._publish: the store's newest, to each subscriber
            camera, ref = who, latest[who]
            for i, cams in enumerate(READS):
                if (ref is None or camera not in cams or offered[i][camera] >= seqs[camera]
                        or not pools[camera].pin(ref)):
                    continue
                offered[i][camera] = seqs[camera]
                message = memoryview(bytes(MSG))
                outboxes[i].offer(Outgoing(seqs[camera], (camera, ref),
                                           lambda _missed, m=message: [m], CAMERAS[camera]), 0)
                flush(i)
        elif op == "read":
            read[who] = min(ledgers[who].written, read[who] + amount)
            flush(who)
            for camera, held in ledgers[who].items():  # what the reader holds is intact
                assert content[(camera, held.slot)] == held.token
        else:  # the reader closed its end: everything it held goes, the outbox forgets
            for token in ledgers[who].clear():
                unpin(token)
            outboxes[who].reader_gone()
            read[who] = 0
            offered[who] = [0] * len(CAMERAS)
        for i, cams in enumerate(READS):
            assert len(ledgers[i]) <= 2  # held + unread, for the whole pipe
            for camera in cams:
                assert pins(i, camera) <= 3, (i, camera)
        for camera, pool in enumerate(pools):  # the subscribers' pins, the store's newest
            assert pool.references() == (latest[camera] is not None) + sum(
                pins(i, camera) for i in range(len(READS)))
