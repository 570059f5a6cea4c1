"""Console consumers: ``framebus watch`` (live per-camera statistics) and ``framebus dump``."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from framebus.client import Frame, Subscriber
from framebus.imaging import ImageKind, encode_image, to_video_frame
from framebus.wire import PixelFormat


@dataclass
class CameraWindow:
    """What one camera did during the current one-second window."""

    frames: int = 0
    missed: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    size: str = "-"
    fmt: str = "-"

    def add(self, frame: Frame) -> None:
        """Count one frame into the window."""
        self.frames += 1
        self.missed += frame.missed
        self.latencies_ns.append(frame.latency_ns)
        self.size = f"{frame.header.width}x{frame.header.height}"
        self.fmt = str(frame.header.format)

    def line(self, camera: str, seconds: float) -> str:
        """One human-readable status line for the window."""
        lat = sorted(self.latencies_ns)
        if lat:
            latency = (f"latency p50 {lat[len(lat) // 2] / 1e6:6.2f} ms "
                       f"max {lat[-1] / 1e6:6.2f} ms")
        else:
            latency = "latency -"
        return (f"{camera:<16} {self.frames / seconds:6.1f} fps  {self.size:>9} {self.fmt:<7} "
                f"{latency}  missed {self.missed}")


def watch(path: Path, duration: float | None, count: int | None, out: TextIO) -> int:
    """Print one line per second per camera until ``duration`` or ``count`` is reached."""
    started = time.monotonic()
    window_start = started
    windows: dict[str, CameraWindow] = {}
    seen = 0
    with Subscriber(path, reopen=True) as sub:
        while True:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            if count is not None and seen >= count:
                break
            if now - window_start >= 1.0:
                _report(windows, now - window_start, path, out)
                windows, window_start = {}, now
            try:
                frame = sub.read(timeout=max(0.01, window_start + 1.0 - now))
            except TimeoutError:
                continue
            assert frame is not None  # reopen=True never ends at EOF
            windows.setdefault(frame.camera, CameraWindow()).add(frame)
            seen += 1
        if windows:
            _report(windows, time.monotonic() - window_start, path, out)
    return 0


def _report(windows: dict[str, CameraWindow], seconds: float, path: Path, out: TextIO) -> None:
    if not windows:
        print(f"waiting for frames on {path}", file=out, flush=True)
    for camera in sorted(windows):
        print(windows[camera].line(camera, seconds), file=out, flush=True)


def dump(path: Path, out_dir: Path, count: int, kind: ImageKind, timeout: float | None) -> int:
    """Save ``count`` frames as image files named ``<camera>-<seq>.<ext>``; print each path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "png" if kind == "png" else "jpg"
    with Subscriber(path, timeout=timeout, reopen=True) as sub:
        for _ in range(count):
            frame = sub.read()
            assert frame is not None
            target = out_dir / f"{frame.camera}-{frame.seq:08d}.{ext}"
            if frame.header.format is PixelFormat.JPEG and kind == "jpeg":
                data = bytes(frame.payload)  # already a JPEG: keep it bit-exact
            else:
                data = encode_image(to_video_frame(frame.header, frame.payload), kind)
            target.write_bytes(data)
            print(target, file=sys.stdout, flush=True)
    return 0
