"""A bound on the log lines clients can cause: token buckets on the request-handling loggers.

Why: a log line is cheap for a client to cause and dear for the host (journald's rate limit
drops the daemon's other lines with them, disks fill, alerts drown). Lines caused by
requests (a connection that failed, an endpoint's bug, a live view that cannot encode, the
asyncio loop's own complaints about a socket) pass through ``REQUEST_LINES``: each kind of
line (logger and message template) has a bucket of ``burst`` lines refilled at ``rate`` a
second, and all of them share one of ``total_burst``, ``total_rate``. A suppressed line is
counted; at most every ``report_s`` one line says how many were suppressed and which. So
whatever clients do, these loggers write at most ``total_rate`` lines a second (after a
first burst of ``total_burst``) plus one report per ``report_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("framebus.logs")

MAX_KINDS = 64  # kinds of line tracked one by one; more share one bucket (formatted messages)


class _Bucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class LogRateLimit(logging.Filter):
    """A logger filter (add it to each logger it bounds; see the module docstring)."""

    def __init__(self, rate: float = 5.0, burst: float = 20, total_rate: float = 20.0,
                 total_burst: float = 50, report_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.rate, self.burst, self.report_s, self.clock = rate, burst, report_s, clock
        self.total_rate, self.total_burst = total_rate, total_burst
        self._total = _Bucket(total_rate, total_burst, clock())
        self._kinds: dict[tuple[str, str], _Bucket] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._reported_at = clock()
        self._lock = threading.Lock()  # loggers are called from any thread

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the line through if its kind's bucket and the shared one have a token."""
        kind = (record.name, record.msg if isinstance(record.msg, str) else "?")
        with self._lock:
            now = self.clock()
            bucket = self._kinds.get(kind)
            if bucket is None:
                if len(self._kinds) >= MAX_KINDS:
                    kind = ("*", "other lines")
                bucket = self._kinds.setdefault(kind, _Bucket(self.rate, self.burst, now))
            passed = bucket.take(now) and self._total.take(now)
            if not passed:
                self._suppressed[kind] += 1
            due = self._suppressed and now - self._reported_at >= self.report_s
        if due:
            self.report()
        return passed

    def report(self) -> None:
        """Log how many lines were suppressed since the last report, if any (the daemon calls
        this every ``report_s`` too, so the count of a flood that ended is not lost)."""
        with self._lock:
            now = self.clock()
            suppressed, self._suppressed = self._suppressed, Counter()
            since, self._reported_at = self._reported_at, now
        if suppressed:
            kinds = "; ".join(f"{count} x {name}: {template!r}"
                              for (name, template), count in suppressed.most_common(3))
            more = len(suppressed) - 3
            log.warning("log rate limit: suppressed %d similar lines in the last %.0f s (%s%s)",
                        sum(suppressed.values()), now - since, kinds,
                        f"; {more} more kinds" if more > 0 else "")

    @property
    def suppressed(self) -> int:
        """Lines suppressed and not yet reported."""
        with self._lock:
            return sum(self._suppressed.values())


# the request-handling loggers; their modules call bound() at import
REQUEST_LINES = LogRateLimit()


def bound(*names: str) -> None:
    """Put the loggers ``names`` under ``REQUEST_LINES`` (once each)."""
    for name in names:
        logger = logging.getLogger(name)
        if REQUEST_LINES not in logger.filters:
            logger.addFilter(REQUEST_LINES)
