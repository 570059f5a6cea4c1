"""Waiting on conditions with deadlines: tests never sleep a fixed time and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.02) -> T:
    """Return the first truthy value of ``condition()``; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def timed(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` holds (for reporting detection and recovery times)."""
    start = time.monotonic()
    wait_for(condition, timeout, what)
    return time.monotonic() - start
