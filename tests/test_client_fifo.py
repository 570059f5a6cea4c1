"""The consumer client against real FIFOs fed by separate writer processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fifo_writer import parse_specs
from framegen import make_frame
from waiting import wait_for

from framebus.client import Frame, Subscriber
from framebus.errors import FifoError, ProtocolError
from framebus.wire import PixelFormat, encode_message, plane_shapes

WRITER = Path(__file__).resolve().parent / "fifo_writer.py"
SPECS = "bgr24:64x48,rgb24:33x17:3,gray:31x9,yuv420p:15x11:2,nv12:640x360,jpeg:1x1,bgr24:1280x720"


def start_writer(
    fifo: Path, seed: int, start: int, count: int, specs: str = SPECS, die: bool = False
) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(WRITER), str(fifo), str(seed), str(start), str(count), specs]
    return subprocess.Popen([*args, "--die-mid-frame"] if die else args)


def expect(frame: Frame, seed: int, index: int, specs: str = SPECS) -> None:
    fmt, width, height, padding = parse_specs(specs)[index % len(parse_specs(specs))]
    header, payload = make_frame(seed, index, fmt, width, height, padding)
    assert frame.header == header
    assert bytes(frame.payload) == payload
    check_views(frame)


def check_views(frame: Frame) -> None:
    """Every plane view has the right shape and shows the payload bytes where they live."""
    h = frame.header
    payload = np.frombuffer(frame.payload, np.uint8)
    if h.format is PixelFormat.JPEG:
        assert frame.array.shape == (len(payload),)
        return
    for plane, layout, shape in zip(frame.planes, h.planes, plane_shapes(h.format, h.width,
                                                                         h.height), strict=True):
        assert plane.shape[0] == shape.rows and plane.shape[1] * shape.channels == shape.row_bytes
        last = layout.offset + (shape.rows - 1) * layout.stride
        assert plane.reshape(shape.rows, -1)[-1].tobytes() == payload[
            last : last + shape.row_bytes].tobytes()
    if h.format in (PixelFormat.BGR24, PixelFormat.RGB24):
        assert frame.array.shape == (h.height, h.width, 3)
    elif h.format is PixelFormat.GRAY:
        assert frame.array.shape == (h.height, h.width)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "sub.fifo"
    os.mkfifo(path)
    return path


def test_reassembles_every_frame_from_partial_writes(fifo: Path) -> None:
    writer = start_writer(fifo, seed=11, start=0, count=150)
    with Subscriber(fifo, timeout=20) as sub:
        frames = 0
        for frame in sub:
            expect(frame, 11, frames)
            frames += 1
    assert writer.wait(timeout=20) == 0
    assert frames == 150
    assert sub.stats.frames == 150 and sub.stats.truncated == 0


def test_writer_dying_mid_frame_raises_truncation_not_half_a_frame(fifo: Path) -> None:
    writer = start_writer(fifo, seed=12, start=0, count=4, die=True)
    got = []
    with Subscriber(fifo, timeout=20) as sub, pytest.raises(ProtocolError, match="truncated"):
        for frame in sub:
            expect(frame, 12, len(got))
            got.append(frame.seq)
    assert got == [0, 1, 2, 3]
    assert writer.wait(timeout=20) == 3


def test_reopen_survives_a_writer_restart_and_drops_the_cut_frame(fifo: Path) -> None:
    first = start_writer(fifo, seed=13, start=0, count=3, die=True)
    with Subscriber(fifo, timeout=20, reopen=True) as sub:
        for index in range(3):
            frame = sub.read()
            assert frame is not None
            expect(frame, 13, index)
        assert first.wait(timeout=20) == 3
        second = start_writer(fifo, seed=13, start=10, count=3)
        for index in range(10, 13):
            frame = sub.read()
            assert frame is not None
            expect(frame, 13, index)
        assert second.wait(timeout=20) == 0
    assert sub.stats.truncated == 1
    assert sub.stats.frames == 6


def test_waiting_for_an_absent_daemon_times_out_without_spinning(fifo: Path) -> None:
    with Subscriber(fifo) as sub:
        cpu_before, wall_before = time.thread_time(), time.monotonic()
        with pytest.raises(TimeoutError):
            sub.read(timeout=1.0)
        waited = time.monotonic() - wall_before
        cpu = time.thread_time() - cpu_before
    assert waited >= 1.0
    assert cpu < 0.2 * waited  # a busy loop would burn the whole second


def test_waits_for_the_fifo_to_appear_then_for_the_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "late.fifo"
    result: list[Frame | None] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with Subscriber(fifo, timeout=20) as sub:
                frame = sub.read()
                assert frame is not None
                expect(frame, 14, 0)
                result.append(frame)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    os.mkfifo(fifo)
    writer = start_writer(fifo, seed=14, start=0, count=1)
    reader.join(timeout=30)
    assert not reader.is_alive() and not errors
    assert len(result) == 1
    assert writer.wait(timeout=20) == 0


def test_clean_eof_ends_iteration(fifo: Path) -> None:
    writer = start_writer(fifo, seed=15, start=0, count=2, specs="gray:4x4")
    with Subscriber(fifo, timeout=20) as sub:
        assert [f.seq for f in sub] == [0, 1]
        assert sub.read() is None
    writer.wait(timeout=20)


def test_refuses_a_path_that_is_not_a_fifo(tmp_path: Path) -> None:
    regular = tmp_path / "plain"
    regular.write_bytes(b"do not touch")
    with Subscriber(regular, timeout=5) as sub, pytest.raises(FifoError, match="not a FIFO"):
        sub.read()
    assert regular.read_bytes() == b"do not touch"


def test_yuv_array_view_is_the_opencv_i420_layout() -> None:
    header, payload = make_frame(1, 1, PixelFormat.YUV420P, 8, 6)
    frame = Frame(header, memoryview(bytearray(payload)), 0)
    assert frame.array.shape == (9, 8)
    assert frame.array.tobytes() == payload
    odd_header, odd_payload = make_frame(1, 1, PixelFormat.NV12, 7, 5)
    with pytest.raises(ValueError, match=r"use \.planes"):
        _ = Frame(odd_header, memoryview(odd_payload), 0).array


def test_zero_timeout_returns_a_frame_already_there_else_times_out_at_once(fifo: Path) -> None:
    with Subscriber(fifo) as sub:
        sub.open()
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # no writer yet
            sub.read(timeout=0)
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader holds it: no wait
        try:
            for index in range(2):
                header, payload = make_frame(16, index, PixelFormat.GRAY, 31, 9)
                os.write(writer, encode_message(header, payload))
                frame = sub.read(timeout=0)
                assert frame is not None and frame.header == header
                assert bytes(frame.payload) == payload
                with pytest.raises(TimeoutError) as caught:  # writer there, nothing to read
                    sub.read(timeout=0)
                assert caught.value.__context__ is None  # not raised while handling EAGAIN
        finally:
            os.close(writer)
        assert time.monotonic() - started < 2.0  # every zero-timeout read returned at once
    assert sub.stats.frames == 2


# A consumer loop as users write it; it prints each seq, and waits in poll for the next frame.
CONSUMER_LOOP = """
import sys
from framebus.client import Subscriber
with Subscriber(sys.argv[1], reopen=True) as sub:
    for frame in sub:
        print(frame.seq, flush=True)
"""


def sleeping(pid: int) -> bool:
    """The process's main thread is blocked in a system call (poll, a futex: waiting)."""
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return stat_line.rsplit(")", 1)[1].split()[0] == "S"


@pytest.mark.parametrize("consumer", ["loop", "dump", "watch"])
def test_ctrl_c_while_waiting_for_a_frame_has_no_chained_traceback(
    fifo: Path, tmp_path: Path, consumer: str
) -> None:
    shows_frame = {"loop": lambda line: line == "0\n", "dump": lambda line: ".png" in line,
                   "watch": lambda line: line.startswith("cam-3 ")}[consumer]
    args = {"loop": ["-c", CONSUMER_LOOP, str(fifo)],
            "dump": ["-m", "framebus", "dump", str(fifo), "--out", str(tmp_path / "out"),
                     "--count", "5"],
            "watch": ["-m", "framebus", "watch", str(fifo)]}[consumer]
    # as from a terminal, whose shell leaves SIGINT at its default: a test run started in the
    # background (`make test &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so the consumer would rightly go on waiting
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    collector = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    collector.start()
    try:
        writer = wait_for(lambda: _open_writer(fifo), 30, "the consumer to open the FIFO") - 1
        try:  # one frame, then the writer stays: the reader waits in poll after EAGAIN
            os.write(writer, encode_message(*make_frame(17, 0, PixelFormat.GRAY, 16, 8)))
            wait_for(lambda: any(map(shows_frame, lines)), 30, "the consumer to show the frame")
            wait_for(lambda: sleeping(proc.pid), 30, "the consumer to wait again")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        finally:
            os.close(writer)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert "BlockingIOError" not in stderr and "During handling" not in stderr, stderr
    if consumer == "loop":  # the interpreter's own report of an uncaught KeyboardInterrupt
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr, stderr
    else:  # the CLI: exit status 130, not a word
        assert proc.returncode == 130 and stderr == "", stderr


def _open_writer(fifo: Path) -> int | None:
    try:  # + 1: a descriptor 0 must count as found
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) + 1
    except OSError:  # ENXIO: no reader yet
        return None
