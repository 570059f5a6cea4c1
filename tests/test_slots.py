"""shm slot bookkeeping, driven with integers only (no segments, no pipes, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
