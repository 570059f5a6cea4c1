"""asyncio remote consumer: frames of a camera on another host, on the running event loop.

::

    async with AsyncRemoteSubscriber("lobby", connect=["tcp/10.0.0.5:7447"]) as sub:
        async for frame in sub:
            process(frame.array)
        frame = await sub.read(timeout=1)   # TimeoutError when nothing came in time

The same ring of one, ``max_age`` and ``missed`` as :class:`framebus.remote.RemoteSubscriber`
(one :class:`~framebus.remote.consumer.RemoteCore` under both); zenoh's callback thread hands
each wake-up to the loop with ``call_soon_threadsafe``, so the loop never blocks on zenoh.
Cancelling a read leaves the subscriber usable.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

from framebus.reading import Frame
from framebus.remote.consumer import RemoteCore, _Ring

__all__ = ["AsyncRemoteSubscriber"]


class AsyncRemoteSubscriber(RemoteCore):
    """:class:`~framebus.remote.RemoteSubscriber` for asyncio; create it inside a running
    loop (the zenoh session opens synchronously, in a few milliseconds)."""

    def __init__(self, camera: str, **kwargs: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        super().__init__(camera, **kwargs)

    def _make_ring(self) -> _Ring:
        return _Ring(wake=self._wake)

    def _wake(self) -> None:
        # zenoh's thread: an event loop closed meanwhile has no one left to wake
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def __aenter__(self) -> AsyncRemoteSubscriber:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> AsyncRemoteSubscriber:
        return self

    async def __anext__(self) -> Frame:
        frame = await self.read()
        if frame is None:
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        """Undeclare the subscription; a pending read returns None."""
        super().close()
        self._arrived.set()

    async def read(self, timeout: float | None = -1.0) -> Frame | None:
        """The newest frame not older than ``max_age``; None once closed."""
        deadline = self._deadline(timeout)
        ring = self._ring
        while True:
            with ring.cond:
                taken = ring.take()
                closed = ring.closed
                if taken is None:
                    self._arrived.clear()  # under the lock: a put after this sets it again
            if taken is not None:
                frame = self._accept(*taken)
                if frame is not None:
                    return frame
                continue
            if closed:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no frame from {self.selector} within the timeout")
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                raise TimeoutError(f"no frame from {self.selector} within the timeout") from None
