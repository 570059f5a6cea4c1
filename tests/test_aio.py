"""framebus.aio.AsyncSubscriber against real FIFOs: fed by writer processes (fifo_writer.py),
by the test's own write end, and by the real daemon (``python -m framebus run``, a lavfi
camera) with FIFO and shm subscribers, all read in one event loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from faultkit import DaemonProcess, camera_config, write_daemon_config
from framegen import make_frame
from test_client_fifo import expect, fifo, start_writer

from framebus.aio import AsyncSubscriber
from framebus.client import Frame
from framebus.errors import FifoError, ProtocolError
from framebus.wire import PixelFormat, encode_message

T = TypeVar("T")
__all__ = ["fifo"]  # the fixture (a FIFO in tmp_path), shared with test_client_fifo

LAVFI = "lavfi:testsrc2=size=160x120:rate=25,realtime"
SUBSCRIBERS = {
    "a": {"camera": "cam", "format": "gray"},
    "b": {"camera": "cam", "format": "bgr24"},
    "s": {"camera": "cam", "format": "gray", "transport": "shm"},
    "t": {"camera": "cam", "format": "bgr24", "transport": "shm"},
}
SHAPES = {"gray": (120, 160), "bgr24": (120, 160, 3)}


async def until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """waiting.wait_for for coroutines: poll ``condition`` without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def increasing(seqs: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(seqs))


def run(coro: Coroutine[Any, Any, None], timeout: float = 120) -> None:
    """asyncio.run with an overall deadline."""
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro
    asyncio.run(bounded())


def start_daemon(tmp_path: Path, fifos: Path) -> DaemonProcess:
    fifos.mkdir(exist_ok=True)
    config = write_daemon_config(tmp_path / "framebus.yaml", fifos,
                                 {"cam": camera_config(LAVFI)}, SUBSCRIBERS,
                                 http={"enabled": False})
    return DaemonProcess(config)


def stop_daemon_nowait(daemon: DaemonProcess) -> None:
    daemon.proc.send_signal(signal.SIGTERM)  # the loop goes on reading while it drains


def check_daemon_frame(name: str, frame: Frame) -> None:
    """Right type, camera, shape, and for shm subscribers a read-only view of an intact slot."""
    assert isinstance(frame, Frame)
    assert frame.camera == "cam"
    spec = SUBSCRIBERS[name]
    assert frame.array.shape == SHAPES[spec["format"]]
    if spec.get("transport") == "shm":
        assert frame.header.shm is not None and frame.segments is not None
        assert not frame.array.flags.writeable
        assert frame.intact()
    else:
        assert frame.header.shm is None and frame.segments is None


def test_several_fifo_and_shm_subscribers_in_one_loop_without_threads(tmp_path: Path) -> None:
    fifos = tmp_path / "fifos"
    daemon = start_daemon(tmp_path, fifos)

    async def consume(name: str) -> tuple[AsyncSubscriber, list[int]]:
        seqs: list[int] = []
        async with AsyncSubscriber(fifos / f"{name}.fifo", timeout=60) as sub:
            async for frame in sub:  # waits for the FIFO to appear, then for the writer
                check_daemon_frame(name, frame)
                seqs.append(frame.seq)
                if len(seqs) == 20:
                    break
        return sub, seqs

    async def main() -> None:
        before = {thread.ident for thread in threading.enumerate()}
        count = threading.active_count()
        results = await asyncio.gather(*(consume(name) for name in SUBSCRIBERS))
        started = [t.name for t in threading.enumerate() if t.ident not in before]
        assert threading.active_count() == count and not started, started
        for sub, seqs in results:
            assert len(seqs) == 20
            assert increasing(seqs), seqs
            assert sub.stats.frames == 20 and sub.stats.truncated == 0
            assert sub.stats.last_seq == {"cam": seqs[-1]}
            assert sub.fileno() == -1  # closed by async with

    try:
        run(main())
    finally:
        code = daemon.stop()
    assert code == 0, daemon.lines[-5:]


def test_reopen_after_the_daemon_stops_and_a_new_one_starts(tmp_path: Path) -> None:
    fifos = tmp_path / "fifos"
    first = start_daemon(tmp_path, fifos)
    second: DaemonProcess | None = None
    names = ("a", "s")
    got: dict[str, list[tuple[int, Frame]]] = {name: [] for name in names}  # (opens, frame)
    subs = {name: AsyncSubscriber(fifos / f"{name}.fifo", reopen=True, timeout=60)
            for name in names}

    async def consume(name: str) -> None:
        sub = subs[name]
        async for frame in sub:
            check_daemon_frame(name, frame)
            got[name].append((sub.stats.opens, frame))

    def after_restart(name: str) -> int:
        return sum(opens > 1 for opens, _ in got[name])

    async def main() -> None:
        nonlocal second
        readers = [asyncio.create_task(consume(name)) for name in names]
        await until(lambda: all(len(got[n]) >= 5 for n in names), 60, "frames of daemon 1")
        stop_daemon_nowait(first)
        await until(lambda: first.proc.poll() is not None, 30, "daemon 1 to exit")
        assert first.proc.returncode == 0, first.lines[-5:]
        second = start_daemon(tmp_path, fifos)
        await until(lambda: all(after_restart(n) >= 5 for n in names), 60, "frames of daemon 2")
        for reader in readers:  # a pending read, cancelled
            reader.cancel()
        done = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in done), done

    try:
        run(main())
        for name in names:
            stats = subs[name].stats
            assert stats.opens >= 2 and stats.truncated == 0
            before = [frame.seq for opens, frame in got[name] if opens == 1]
            after = [frame.seq for opens, frame in got[name] if opens > 1]
            assert increasing(before) and increasing(after), (before, after)
        assert second is not None
        shm_after = [f for o, f in got["s"] if o > 1]
        assert all(f.header.shm is not None and f.header.shm.segment.startswith(
            f"fbshm-{second.pid}-") for f in shm_after)  # the new daemon's segment
    finally:
        for sub in subs.values():
            sub.close()
        first.stop()
        if second is not None:
            second.stop()


def test_every_format_arrives_as_the_sync_client_gets_it(fifo: Path) -> None:
    writer = start_writer(fifo, seed=31, start=0, count=60)

    async def main() -> None:
        frames = 0
        async with AsyncSubscriber(fifo, timeout=20) as sub:
            async for frame in sub:
                expect(frame, 31, frames)  # header, payload bytes, every plane view
                frames += 1
            assert await sub.read() is None  # stays at EOF
        assert frames == 60 and sub.stats.frames == 60

    run(main())
    assert writer.wait(timeout=20) == 0


def test_reopen_drops_the_cut_frame_and_without_reopen_it_raises(tmp_path: Path) -> None:
    survive, strict = tmp_path / "survive.fifo", tmp_path / "strict.fifo"
    os.mkfifo(survive)
    os.mkfifo(strict)
    writers = [start_writer(survive, 32, 0, 3, die=True)]

    async def main() -> None:
        async with AsyncSubscriber(survive, timeout=20, reopen=True) as sub:
            for index in range(3):
                frame = await sub.read()
                assert frame is not None
                expect(frame, 32, index)
            writers.append(start_writer(survive, 32, 10, 3))
            for index in range(10, 13):
                frame = await sub.read()
                assert frame is not None
                expect(frame, 32, index)
        assert sub.stats.truncated == 1 and sub.stats.frames == 6 and sub.stats.opens == 2
        writers.append(start_writer(strict, 33, 0, 2, die=True))
        async with AsyncSubscriber(strict, timeout=20) as sub:
            seqs = []
            with pytest.raises(ProtocolError, match="truncated"):
                async for frame in sub:
                    seqs.append(frame.seq)
            assert seqs == [0, 1]

    run(main())
    assert [w.wait(timeout=20) for w in writers] == [3, 0, 3]


def test_timeouts_raise_timeout_error_and_leave_the_loop_running(fifo: Path) -> None:
    async def main() -> None:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        async with AsyncSubscriber(fifo) as sub:
            started = time.monotonic()
            with pytest.raises(TimeoutError):  # no writer: the replaced-path checks go on
                await sub.read(timeout=1.2)
            assert time.monotonic() - started >= 1.2
            assert ticks >= 5  # the loop ran other tasks while the read waited
            assert sub.stats.replaced == 0
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):  # the same class
                await sub.read(timeout=0)
            assert time.monotonic() - started < 0.5
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the reader holds it open
            try:
                os.write(writer, encode_message(*make_frame(34, 0, PixelFormat.GRAY, 16, 8)))
                frame = await sub.read(timeout=0)  # already there: returned, not timed out
                assert frame is not None and frame.seq == 0
                with pytest.raises(TimeoutError):  # writer attached, nothing there: at once
                    await sub.read(timeout=0)
                with pytest.raises(TimeoutError):
                    await sub.read(timeout=0.2)
            finally:
                os.close(writer)
        ticker.cancel()

    run(main())


def test_a_cancelled_read_leaves_the_subscriber_usable(fifo: Path) -> None:
    header, payload = make_frame(35, 0, PixelFormat.BGR24, 64, 48, padding=3)
    first = encode_message(header, payload)
    second = encode_message(*make_frame(35, 1, PixelFormat.GRAY, 31, 9))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with AsyncSubscriber(fifo, timeout=20) as sub:
            with pytest.raises(TimeoutError):  # cancelled while no writer has come
                await asyncio.wait_for(sub.read(), 0.3)
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(writer, first[:5000])  # half a frame
                pending = asyncio.create_task(sub.read())
                await until(lambda: sub.stats.bytes == 5000, 20, "the reader to take the half")
                assert not pending.done()
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
                assert not loop.remove_reader(sub.fileno())  # nothing left registered
                os.write(writer, first[5000:] + second)
                frame = await sub.read()  # goes on from the half already read
                assert frame is not None
                assert frame.header == header and bytes(frame.payload) == payload
                assert np.array_equal(frame.array, np.ndarray((48, 64, 3), np.uint8, payload,
                                                              0, (64 * 3 + 3, 3, 1)))
                frame = await sub.read()
                assert frame is not None and frame.seq == 1
            finally:
                os.close(writer)
            assert await sub.read() is None  # clean EOF
        assert sub.stats.frames == 2 and sub.stats.truncated == 0

    run(main())


def test_one_read_at_a_time_and_close_ends_a_waiting_read(fifo: Path) -> None:
    async def main() -> None:
        sub = AsyncSubscriber(fifo)
        await sub.open()
        pending = asyncio.create_task(sub.read())
        await until(lambda: sub._waiting is not None, 20, "the read to wait")
        with pytest.raises(RuntimeError, match="already in progress"):
            await sub.read(timeout=0)
        sub.close()
        with pytest.raises(FifoError, match="closed while a read waited"):
            await pending
        assert sub.fileno() == -1

    run(main())


def test_a_replaced_fifo_is_reopened_while_no_writer_has_come(fifo: Path) -> None:
    async def main() -> None:
        async with AsyncSubscriber(fifo, timeout=30) as sub:
            await sub.open()
            held = os.fstat(sub.fileno()).st_ino
            pending = asyncio.create_task(sub.read())
            fifo.unlink()  # what a restart that deleted the directory does
            os.mkfifo(fifo)
            # the writer's open blocks until someone opens the *new* FIFO: only a reopen
            # lets this frame through
            writer = start_writer(fifo, seed=36, start=0, count=1)
            frame = await pending
            assert frame is not None
            expect(frame, 36, 0)
            assert sub.stats.replaced == 1 and sub.stats.opens == 2
            assert os.fstat(sub.fileno()).st_ino != held
            await until(lambda: writer.poll() is not None, 20, "the writer to exit")
            assert writer.returncode == 0

    run(main())
