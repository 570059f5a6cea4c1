"""Reconnect policy as pure code: exponential growth, jitter, a cap, and a reset when healthy.

No clock and no randomness source of its own: callers pass the current time and a random
number generator, so tests drive it with plain numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Parameters of the reconnect delay (all in seconds)."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]
    reset_after: float = 30.0  # streaming this long without trouble forgets past failures
    auth_failure: float = 60.0  # floor of the delay after an authentication failure


@dataclass
class Backoff:
    """The state of one camera's reconnect schedule."""

    policy: BackoffPolicy
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    healthy_since: float | None = None

    def connected(self, now: float) -> None:
        """The camera started streaming at ``now``."""
        self.healthy_since = now

    def healthy(self, now: float) -> None:
        """Called while streaming: after ``reset_after`` seconds the failure count resets."""
        if self.healthy_since is not None and now - self.healthy_since >= self.policy.reset_after:
            self.failures = 0

    def next_delay(self, now: float, auth_failed: bool = False) -> float:
        """A failure happened at ``now``: how long to wait before the next attempt."""
        self.healthy(now)
        self.healthy_since = None
        p = self.policy
        base = min(p.maximum, p.initial * p.multiplier ** min(self.failures, 64))
        self.failures += 1
        delay = base * (1.0 + self.rng.uniform(-p.jitter, p.jitter))
        if auth_failed:
            delay = max(delay, p.auth_failure)
        return max(0.0, min(delay, max(p.maximum * (1.0 + p.jitter), p.auth_failure)))
