"""Test helpers for the shm transport: frames whose every pixel encodes their seq, a publisher
that feeds them to a real store and fan-out loop, and pattern-checking reader processes (for
those frames, and for the RTSP test server's clips)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from faultkit import CheckedReader
from waiting import wait_for

from framebus.fanout import FanoutLoop
from framebus.store import LatestFrameStore, StoredFrame
from framebus.wire import CaptureSource

SHM_READER = Path(__file__).resolve().parent / "shm_reader_proc.py"
CLIP_READER = Path(__file__).resolve().parent / "clip_reader_proc.py"


def pattern(seq: int, width: int, height: int) -> np.ndarray:
    """bgr24 pixels that depend on (x, y, channel, seq): a torn or stale frame cannot match."""
    y, x, c = np.ogrid[:height, :width, :3]
    return ((x + 3 * y + 85 * c + 7 * seq) % 256).astype(np.uint8)


class PatternPublisher:
    """Publishes pattern frames of one camera into the store from a thread, as a decoder
    thread does; ``size`` may be changed while it runs (a resolution change)."""

    def __init__(self, store: LatestFrameStore, camera: str = "cam",
                 size: tuple[int, int] = (160, 120), period_s: float = 0.002) -> None:
        self.store, self.camera, self.size, self.period_s = store, camera, size, period_s
        self.seq = 0
        self.epoch = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pattern", daemon=True)

    def __enter__(self) -> PatternPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def resize(self, size: tuple[int, int]) -> None:
        """Switch to another frame size (with a new epoch, as a camera would)."""
        self.size = size
        self.epoch += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            width, height = self.size
            frame = av.VideoFrame.from_ndarray(pattern(self.seq, width, height), format="bgr24")
            self.store.publish(StoredFrame(
                camera=self.camera, seq=self.seq, epoch=self.epoch, frame=frame, pts=self.seq,
                time_base=(1, 90000), capture_time_ns=time.time_ns(),
                capture_source=CaptureSource.RECEIVE, keyframe=True))
            self._stop.wait(self.period_s)


@contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "96k") mounted at ``where`` for the block (needs root:
    the test is skipped where it cannot mount), unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30,
                       check=False)


@contextmanager
def running_loop() -> Iterator[tuple[LatestFrameStore, FanoutLoop]]:
    """A real store and fan-out loop, stopped (segments unlinked) at exit."""
    store = LatestFrameStore()
    loop = FanoutLoop(store, open_retry_s=0.05)
    loop.start()
    try:
        yield store, loop
    finally:
        loop.stop(drain_s=0.5)


class PatternReader:
    """A consumer process (shm_reader_proc.py) that checks every pixel of every frame against
    its seq; its JSON lines are collected."""

    def __init__(self, fifo: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SHM_READER), str(fifo), *args],
                                     stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.append(json.loads(line))

    @property
    def progress(self) -> dict[str, Any]:
        """The newest progress record (frames, bad, stale, last seq, size)."""
        return self.records[-1] if self.records else {"frames": 0}

    def wait_frames(self, count: int, timeout: float = 60) -> dict[str, Any]:
        """Wait until the reader has checked at least ``count`` frames."""
        def enough() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the reader exited: {self.records[-2:]}")
            return int(self.progress["frames"]) >= count
        wait_for(enough, timeout, f"{count} checked frames")
        return self.progress

    def stop(self, timeout: float = 30) -> dict[str, Any]:
        """Close its stdin (it ends cleanly) and return its summary."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout)
        self._thread.join(timeout)
        return self.progress


class ClipReader(CheckedReader):
    """A consumer process (clip_reader_proc.py) that checks every pixel of every frame of the
    RTSP test server's cameras against their clips, plus checked_reader's stream checks."""

    SCRIPT = CLIP_READER

    def __init__(self, fifo: Path, clips: dict[str, Path], max_seconds: float = 600) -> None:
        super().__init__(fifo, *[f"--clip={camera}={path}" for camera, path in clips.items()],
                         max_seconds=max_seconds)

    def count(self, camera: str, since: int = 0) -> int:
        """Frames of ``camera`` received, from the ``since``-th frame on."""
        return sum(f["camera"] == camera for f in self.frames[since:])

    def wait_for_cameras(self, per_camera: dict[str, int], timeout: float = 60) -> None:
        """Wait until at least so many frames of each camera arrived."""
        def enough() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the reader of {self.fifo.name} exited: {self.lines[-3:]}")
            return all(self.count(c) >= n for c, n in per_camera.items())
        wait_for(enough, timeout, f"{per_camera} frames at the reader of {self.fifo.name}")
