"""The reconnect policy, driven with plain numbers (no clock, seeded randomness)."""

from __future__ import annotations

import random

from framebus.backoff import Backoff, BackoffPolicy

POLICY = BackoffPolicy(initial=0.5, maximum=8.0, multiplier=2.0, jitter=0.0, reset_after=30.0,
                       auth_failure=60.0)


def test_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(POLICY)
    delays = [backoff.next_delay(now=float(i)) for i in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_jitter_stays_within_its_band_and_never_hits_zero() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=4.0, jitter=0.25)
    backoff = Backoff(policy, random.Random(7))
    for attempt in range(200):
        base = min(4.0, 2.0 ** attempt)
        delay = backoff.next_delay(now=0.0)
        assert base * 0.75 <= delay <= base * 1.25


def test_resets_after_a_healthy_period_but_not_before() -> None:
    backoff = Backoff(POLICY)
    for i in range(5):
        backoff.next_delay(now=float(i))
    backoff.connected(now=100.0)
    assert backoff.next_delay(now=110.0) == 8.0  # 10 s healthy: not enough to forget
    backoff.connected(now=200.0)
    backoff.healthy(now=231.0)
    assert backoff.next_delay(now=232.0) == 0.5


def test_authentication_failure_waits_longer() -> None:
    backoff = Backoff(POLICY)
    assert backoff.next_delay(now=0.0, auth_failed=True) == 60.0
    assert backoff.next_delay(now=1.0) == 1.0
