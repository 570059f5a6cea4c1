"""Test helpers for the fan-out: consumer processes and an in-process daemon."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from camerakit import FAST
from prockit import LineProcess
from waiting import wait_for

from framebus.config import parse_config
from framebus.daemon import Daemon

READER = Path(__file__).resolve().parent / "reader_proc.py"


class ReaderProcess(LineProcess):
    """A real consumer process reading one FIFO; its per-frame JSON lines are collected."""

    def __init__(self, fifo: Path, *args: str) -> None:
        self.frames: list[dict[str, Any]] = []
        super().__init__([sys.executable, str(READER), str(fifo), *args])

    def parse(self, line: str) -> None:
        if line.startswith("{"):
            record = json.loads(line)
            if "seq" in record:
                self.frames.append(record)

    def wait_frames(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until at least ``count`` frames arrived."""
        wait_for(lambda: len(self.frames) >= count, timeout, f"{count} frames at a reader")
        return self.frames

    def finish(self, timeout: float = 30) -> int:
        """Wait for the process to exit (and its output to be collected)."""
        code = self.proc.wait(timeout)
        self.collected(timeout)
        return code


@contextmanager
def running_daemon(cameras: dict[str, dict[str, Any]], subscribers: dict[str, dict[str, Any]],
                   fifo_dir: Path, http: dict[str, Any] | None = None) -> Iterator[Daemon]:
    """A daemon in this process (so tests can read its counters), stopped at exit; HTTP only
    when ``http`` is given (use listen 127.0.0.1:0)."""
    fifo_dir.mkdir(parents=True, exist_ok=True)
    config = parse_config({
        "fifo_dir": str(fifo_dir),
        "cameras": {name: {**FAST, **spec} for name, spec in cameras.items()},
        "subscribers": subscribers,
        "http": http if http is not None else {"enabled": False},
    })
    daemon = Daemon(config, {name: None for name in cameras})
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
