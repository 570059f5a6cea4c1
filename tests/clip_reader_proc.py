"""A consumer process for the RTSP test server's cameras: reads one FIFO (FIFO or shm, one
camera or several) and checks every pixel of every frame against the clip its camera serves.

    python clip_reader_proc.py FIFO --clip CAMERA=PATH [--clip ...] [--max-seconds S]

Each clip (framebus.testsrc: a moving gradient with the frame index in binary cells) is decoded
here with the same PyAV the daemon decodes with. H.264 decoding is bit-exact, so each frame a
camera sends is exactly one of these pictures, in the subscriber's rendition (made here with
``framebus.rendition.render``, the daemon's own conversion): the one whose index its counter
cells carry (read as ``testsrc.media.read_counter`` does, where the cells are in a scaled
rendition). A torn frame, one whose slot was rewritten, or
one that names another camera's segment cannot match.

Everything ``checked_reader.py`` checks is checked too (its ``Checker`` and ``stream``: per
camera seq/missed continuity, protocol errors, splices), and it prints what that prints: one
JSON line per frame, ``{"opened"}`` lines, and a summary line when its stdin is closed, with
these keys added:

* ``bad`` — frames whose pixels differ from the clip's picture (``bad_planes`` says which);
* ``counter_errors`` — within one open and epoch, two consecutive frames of a camera whose
  clip index did not advance by the seq difference (modulo the clip's length): the payload is
  not the frame the header says;
* ``by_camera`` — frames per camera; ``not_intact`` — shm frames whose slot changed while
  they were checked (the hold rule broken).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
from checked_reader import Checker, stream, watch_stdin

from framebus.client import Frame
from framebus.formats import plane_shapes
from framebus.rendition import Rendition, render
from framebus.testsrc.media import COUNTER_BITS, counter_cell_size, read_counter
from framebus.wire import PixelFormat

LUMA_FIRST = (PixelFormat.GRAY, PixelFormat.YUV420P, PixelFormat.NV12)
MIDDLE_GRAY = (16 + 235) // 2  # between the counter's black and white cells


def scaled_counter(luma: np.ndarray, native_width: int, native_height: int) -> int:
    """``read_counter`` for a luma plane scaled from ``native_width`` x ``native_height``:
    each cell sampled at its centre where scaling moved it."""
    height, width = luma.shape[:2]
    cell = counter_cell_size(native_width)
    row = int(cell / 2 * height / native_height)
    value = 0
    for bit in range(COUNTER_BITS):
        column = int((bit * cell + cell / 2) * width / native_width)
        value = (value << 1) | (int(luma[row, column]) >= MIDDLE_GRAY)
    return value


def decode_clip(path: Path) -> dict[int, av.VideoFrame]:
    """Every picture of an Annex-B clip, by the index its counter cells carry."""
    pictures: dict[int, av.VideoFrame] = {}
    with av.open(str(path)) as container:
        for picture in container.decode(video=0):
            pictures[read_counter(picture.to_ndarray(format="gray"))] = picture
    return pictures


class ClipChecker(Checker):
    """checked_reader's Checker plus the pixel and counter checks against the clips."""

    def __init__(self, clips: dict[str, Path]) -> None:
        super().__init__()
        self.pictures = {camera: decode_clip(path) for camera, path in clips.items()}
        self.bad = 0
        self.bad_planes: Counter[str] = Counter()
        self.counter_errors = 0
        self.not_intact = 0
        self.by_camera: Counter[str] = Counter()
        self._expected: dict[tuple[str, int, PixelFormat, int, int], list[np.ndarray]] = {}
        self._index: dict[str, tuple[int, int, int]] = {}  # camera -> (epoch, seq, clip index)

    def new_open(self) -> None:
        """A reopen (or a skipped stale frame): continuity starts over."""
        super().new_open()
        self._index.clear()

    def frame(self, frame: Frame, open_index: int) -> None:
        """Check the pixels and the clip index, then everything Checker checks."""
        h = frame.header
        pictures = self.pictures[h.camera]
        if h.format not in LUMA_FIRST:
            raise SystemExit(f"clip_reader_proc reads luma-first formats, not {h.format}")
        native = next(iter(pictures.values()))
        index = scaled_counter(frame.planes[0], native.width, native.height)
        expected = self._expected_planes(h.camera, index, h.format, h.width, h.height)
        if expected is None:
            self.bad += 1
            self.bad_planes["no such picture"] += 1
            self._error(f"{h.camera}: seq {h.seq} carries clip index {index}, not in the clip")
        else:
            wrong = [i for i, (got, want) in enumerate(zip(frame.planes, expected, strict=True))
                     if not np.array_equal(got.reshape(want.shape), want)]
            if wrong:
                self.bad += 1
                self.bad_planes.update(f"plane {i}" for i in wrong)
                self._error(f"{h.camera}: seq {h.seq} (clip index {index}) differs in planes "
                            f"{wrong}")
        self.not_intact += not frame.intact()
        previous = self._index.get(h.camera)
        if previous is not None and previous[0] == h.epoch:
            advanced = (index - previous[2]) % len(pictures)
            if advanced != (h.seq - previous[1]) % len(pictures):
                self.counter_errors += 1
                self._error(f"{h.camera}: clip index {previous[2]} -> {index} for seq "
                            f"{previous[1]} -> {h.seq}")
        self._index[h.camera] = (h.epoch, h.seq, index)
        self.by_camera[h.camera] += 1
        super().frame(frame, open_index)

    def _expected_planes(self, camera: str, index: int, fmt: PixelFormat, width: int,
                         height: int) -> list[np.ndarray] | None:
        key = (camera, index, fmt, width, height)
        found = self._expected.get(key)
        if found is None:
            picture = self.pictures[camera].get(index)
            if picture is None:
                return None
            payload, _ = render(picture, Rendition(fmt, width, height))
            found = []
            for buffer, plane, shape in zip(payload.buffers, payload.planes,
                                            plane_shapes(fmt, width, height), strict=True):
                rows = np.frombuffer(buffer, np.uint8)[: shape.rows * plane.stride]
                found.append(rows.reshape(shape.rows, plane.stride)[:, : shape.row_bytes])
            self._expected[key] = found
        return found

    def summary(self) -> str:
        """Checker's summary plus the clip checks."""
        result = json.loads(super().summary())
        result.update(bad=self.bad, bad_planes=dict(self.bad_planes),
                      counter_errors=self.counter_errors, not_intact=self.not_intact,
                      by_camera=dict(self.by_camera))
        return json.dumps(result)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("fifo")
    parser.add_argument("--clip", action="append", default=[], metavar="CAMERA=PATH")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    clips = {camera: Path(path) for camera, path in (c.split("=", 1) for c in args.clip)}
    checker = ClipChecker(clips)  # decode first: the daemon may write as soon as we open
    stop = threading.Event()
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    stream(args.fifo, checker, stop, time.monotonic() + args.max_seconds)
    print(checker.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
