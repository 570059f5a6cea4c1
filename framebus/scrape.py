"""/metrics off the event loop: one render at a time, on a thread of its own, shared.

Rendering walks every camera and subscriber; on the HTTP event loop it would hold up every
other request for as long as it takes, and scrapers in a loop would hold them up all the time
(with 300 cameras and 64 subscriptions of every camera, /healthz took ~1 s). So:

* the render runs on a dedicated thread (not the ``http.workers`` pool: a scrape never takes
  a snapshot's worker, nor is refused with 503 because they are busy);
* a scrape that arrives while a render runs gets that render's result, and so does one that
  arrives within as long again after it ended (at most ``max_age``): however many scrapers
  loop, the renderer is busy at most half the time, and the loop thread is free to serve.

What a scrape sees is at most two renders' time old (a few milliseconds for a small daemon),
so counters read right after a request still show it, as Prometheus expects of a scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class SharedRender:
    """Renders with ``render`` on its own thread; concurrent and back-to-back callers share."""

    def __init__(self, render: Callable[[], bytes], max_age: float = 1.0) -> None:
        self._render = render
        self.max_age = max_age
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="metrics")
        self._running: asyncio.Future[bytes] | None = None
        self._last: bytes | None = None
        self._fresh_until = 0.0  # monotonic: until then, _last is served as it is
        self.renders = 0  # how many renders ran (tests read it)

    async def get(self) -> bytes:
        """The newest render, fresh enough; called on the event loop thread only."""
        if self._last is not None and time.monotonic() < self._fresh_until:
            return self._last
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # shield: one caller's disconnect must not cancel the render the others wait for
        return await asyncio.shield(self._running)

    async def _run(self) -> bytes:
        began = time.monotonic()
        try:
            body = await asyncio.get_running_loop().run_in_executor(self._thread, self._timed)
        finally:
            self._running = None
        took = time.monotonic() - began
        self._last, self._fresh_until = body, time.monotonic() + min(took, self.max_age)
        return body

    def _timed(self) -> bytes:
        self.renders += 1
        return self._render()

    def close(self) -> None:
        """Stop the thread (a render under way finishes; nobody waits for it)."""
        self._thread.shutdown(wait=False, cancel_futures=True)
