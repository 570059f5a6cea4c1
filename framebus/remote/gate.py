"""Bounded answering of zenoh queries: the bridge's queryables (newest frame, status) hand each
query to a shared thread pool, with at most ``limit`` waiting per queryable; more are refused
at once, so a flood of queries costs neither threads nor memory."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueryGate:
    """One queryable's share of the pool."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int, busy: str) -> None:
        self._pool, self._limit, self._busy = pool, limit, busy
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, query: Any, answer: Callable[[Any], None]) -> bool:
        """Run ``answer(query)`` in the pool, then finish the query (``drop``: its final
        reply). False when refused as busy (the caller got ``reply_err``)."""
        with self._lock:
            if self._pending >= self._limit:
                query.reply_err(self._busy)
                return False
            self._pending += 1
        try:
            self._pool.submit(self._run, query, answer)
        except RuntimeError:  # the pool is shutting down: the bridge is stopping
            self._done()
        return True

    def _run(self, query: Any, answer: Callable[[Any], None]) -> None:
        try:
            answer(query)
        finally:
            self._done()
            query.drop()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
