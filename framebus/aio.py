"""asyncio consumer: read framebus frames on the running event loop, without threads.

::

    async with AsyncSubscriber("/run/framebus/det.fifo", reopen=True) as sub:
        async for frame in sub:
            process(frame.array)            # valid until the next read
        frame = await sub.read(timeout=1)   # TimeoutError when nothing came in time

:class:`AsyncSubscriber` is :class:`framebus.client.Subscriber` with its waits handed to the
event loop: the same non-blocking FIFO descriptor, the same :class:`~framebus.framing.FrameReader`
and shm mappings, the same :class:`~framebus.client.Frame` objects (a frame's ``array`` and
``payload`` are valid until the next read), the same statistics, and the same behaviour at
EOF (``reopen``), on a message cut short, and while no writer has come (every 0.5 s it checks
that the path still names the FIFO it holds, and reopens it if not). Both classes run one
piece of reading code (:class:`~framebus.client.SubscriberCore`); only the waiting differs:
``loop.add_reader`` on the descriptor instead of ``poll``, ``asyncio.sleep`` instead of
``time.sleep`` while the FIFO does not exist yet.

Timeouts raise ``TimeoutError`` (which is ``asyncio.TimeoutError``). Cancelling a pending
read (``asyncio.wait_for``, ``asyncio.timeout``, ``task.cancel()``) raises CancelledError in
it and leaves the subscriber usable: bytes already read stay buffered and the next read goes
on from them. One subscriber serves one read at a time; use one subscriber per FIFO and as
many as you like in one loop. Needs a loop with ``add_reader`` (the default selector loop on
Linux, uvloop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from types import TracebackType
from typing import TypeVar

from framebus.errors import FifoError
from framebus.reading import Frame, StreamEvent, SubscriberCore, SubscriberStats, Wait

__all__ = ["AsyncSubscriber", "Frame", "StreamEvent", "SubscriberStats"]

T = TypeVar("T")


class AsyncSubscriber(SubscriberCore):
    """Read frames from a framebus subscriber FIFO on the running asyncio loop.

    Arguments as :class:`framebus.client.Subscriber`: ``timeout`` bounds the wait for each
    frame (None: forever; 0: a frame already there, else TimeoutError at once), ``reopen``
    survives daemon restarts (a cut message is dropped and counted in
    ``stats.truncated``; without it iteration ends at a clean EOF and a cut message raises
    ``ProtocolError``), ``max_payload_len`` bounds a message, ``on_event`` gets each
    :class:`~framebus.reading.StreamEvent` (camera states, daemon restarts).
    """

    _waiting: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[bool],
                    asyncio.TimerHandle | None] | None = None
    _busy = False

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Frame:
        frame = await self.read()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def open(self, timeout: float | None = None) -> None:
        """Open the FIFO now (it is otherwise opened by the first read); never waits for a
        writer, waits up to ``timeout`` for the path to appear."""
        if self._fd < 0:
            await self._drive(self._open_steps(
                None if timeout is None else time.monotonic() + timeout))

    async def read(self, timeout: float | None = -1.0) -> Frame | None:
        """The next whole frame; None at a clean EOF (``reopen=False``).

        ``timeout`` defaults to the subscriber's; raises TimeoutError when it passes. The
        previous frame's ``array`` and ``payload`` are no longer valid once this is called.
        """
        return await self._drive(self._read_steps(self._deadline(timeout)))

    def close(self) -> None:
        """Close the FIFO; the daemon sees the reader leave. A read waiting in another task
        raises FifoError."""
        self._stop_waiting(FifoError(f"{self.path} was closed while a read waited"))
        super().close()

    async def _drive(self, steps: Generator[Wait, bool, T]) -> T:
        """Run ``steps`` to the end, answering each wait on the event loop."""
        if self._busy:
            steps.close()
            raise RuntimeError(f"another read of {self.path} is already in progress")
        self._busy = True
        try:
            wait = next(steps)
            while True:
                fd, seconds = wait
                if fd < 0:
                    await asyncio.sleep(seconds or 0.0)
                    ready = False
                elif seconds == 0:
                    ready = self._ready_now()
                else:
                    ready = await self._readable(fd, seconds)
                wait = steps.send(ready)
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            self._busy = False
            steps.close()

    async def _readable(self, fd: int, seconds: float | None) -> bool:
        """True once ``fd`` is readable, False when ``seconds`` (None: no limit) pass first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        loop.add_reader(fd, _settle, waiter, True)
        timer = None if seconds is None else loop.call_later(seconds, _settle, waiter, False)
        self._waiting = (loop, fd, waiter, timer)
        try:
            return await waiter
        finally:
            self._stop_waiting(None)

    def _stop_waiting(self, error: BaseException | None) -> None:
        """Unregister the pending wait (before its descriptor is closed: the number may be
        reused); fail it with ``error`` if it is still pending."""
        if self._waiting is None:
            return
        loop, fd, waiter, timer = self._waiting
        self._waiting = None
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
        if error is not None and not waiter.done():
            waiter.set_exception(error)


def _settle(waiter: asyncio.Future[bool], ready: bool) -> None:
    # add_reader fires again while the descriptor stays readable, until the reader resumes
    if not waiter.done():
        waiter.set_result(ready)
