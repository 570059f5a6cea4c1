"""Consumers on a FIFO that does not exist say so, once, and keep waiting (issue 21): the
Subscriber and the AsyncSubscriber log a warning naming the path, ``framebus watch``/``dump``
print it with where the daemon's fifo_dir is; the frame still arrives once the FIFO does."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from test_client_fifo import expect, start_writer
from waiting import wait_for

from framebus.aio import AsyncSubscriber
from framebus.client import Frame, Subscriber


def told(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "framebus.client" and f"{path} does not exist" in r.getMessage()]


def test_the_subscriber_says_once_that_its_fifo_does_not_exist_then_reads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="framebus.client")
    fifo = tmp_path / "typo.fifo"
    frames: list[Frame | None] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with Subscriber(fifo, timeout=30) as sub:
                frames.append(sub.read())
                if frames[0] is not None:
                    expect(frames[0], 31, 0)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    wait_for(lambda: told(caplog, fifo), 10, "the missing FIFO to be told")
    os.mkfifo(fifo)
    writer = start_writer(fifo, seed=31, start=0, count=1)
    reader.join(timeout=30)
    assert not reader.is_alive() and not errors and frames[0] is not None
    assert writer.wait(timeout=20) == 0
    [message] = told(caplog, fifo)  # once, however long it waited
    assert "waiting for the daemon to make it" in message


def test_a_zero_timeout_look_raises_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="framebus.client")
    with Subscriber(tmp_path / "absent.fifo") as sub, pytest.raises(TimeoutError):
        sub.open(timeout=0)
    assert not told(caplog, tmp_path / "absent.fifo")


def test_the_async_subscriber_says_so_too(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="framebus.client")
    fifo = tmp_path / "later.fifo"

    async def main() -> Frame | None:
        async with AsyncSubscriber(fifo, timeout=30) as sub:
            reading = asyncio.create_task(sub.read())
            deadline = time.monotonic() + 10
            while not told(caplog, fifo):
                assert time.monotonic() < deadline, "the missing FIFO was not told"
                await asyncio.sleep(0.01)
            os.mkfifo(fifo)
            writer = start_writer(fifo, seed=32, start=0, count=1)
            frame = await asyncio.wait_for(reading, 30)
            assert writer.wait(timeout=20) == 0
            return frame

    frame = asyncio.run(main())
    assert frame is not None
    expect(frame, 32, 0)
    assert len(told(caplog, fifo)) == 1


def line_with(stream: IO[str], text: str, seconds: float) -> str:
    """The first line of ``stream`` holding ``text``, within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([stream], [], [], left)[0]:
            line = stream.readline()
            if text in line:
                return line
            assert line, "the stream ended"
    raise AssertionError(f"no line with {text!r} within {seconds}s")


@pytest.mark.parametrize("command", ["watch", "dump"])
def test_the_cli_names_the_missing_fifo_and_where_fifo_dir_is(
        tmp_path: Path, command: str) -> None:
    fifo_dir = tmp_path / "fifos"
    config = tmp_path / "framebus.yaml"
    config.write_text(f"fifo_dir: {fifo_dir}\ncameras: {{}}\n")
    fifo = tmp_path / "elsewhere.fifo"
    args = (["watch", str(fifo), "--count", "1", "-c", str(config)] if command == "watch" else
            ["dump", str(fifo), "--out", str(tmp_path / "out"), "--timeout", "30"])
    with subprocess.Popen([sys.executable, "-m", "framebus", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            line = line_with(proc.stderr, "does not exist", 20)
            assert line.startswith(f"framebus: {fifo} does not exist (yet)"), line
            if command == "watch":
                assert f"fifo_dir {fifo_dir} (from {config})" in line, line
            else:
                assert "fifo_dir /run/framebus (the default; -c CONFIG" in line, line
            os.mkfifo(fifo)
            writer = start_writer(fifo, seed=33, start=0, count=1, specs="gray:32x16")
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert "does not exist" not in err  # said once
            assert writer.wait(timeout=20) == 0
        finally:
            proc.kill()
