"""Deterministic, cached generation of small pre-encoded test clips (PyAV + numpy only).

The clips are raw Annex-B elementary streams (``.h264`` / ``.h265``): no container, just NAL
units separated by start codes. That is the simplest thing for a server to loop: every clip
starts with an IDR picture preceded by its parameter sets, so jumping from the last access unit
back to the first one is a valid bitstream, and a client joining at any GOP boundary finds
in-band parameter sets (they are repeated before every IDR).

Encoder settings are chosen to be cheap and predictable: x264/x265 ``ultrafast`` preset,
``zerolatency`` tune, no B-frames (so decode order == presentation order), a fixed GOP of
``gop`` frames with scene-cut detection off and closed GOPs (IDR pictures, also for x265), an
access unit delimiter before each picture, and single-threaded encoding so that the same
parameters give the same bytes on any machine.

The picture is a diagonal luma/chroma gradient that moves every frame plus a row of
black/white cells in the top-left corner encoding the frame index in binary
(:func:`read_counter` reads it back from a decoded luma plane).

Files are named after every parameter that shapes them (plus :data:`FORMAT_VERSION`), written
to a temporary file and renamed into place, so :func:`ensure_clip` is idempotent and safe to
call from concurrent test processes: an existing file with the right name is reused as is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "COUNTER_BITS",
    "FORMAT_VERSION",
    "Codec",
    "counter_cell_size",
    "ensure_clip",
    "ensure_size_change_clip",
    "make_picture",
    "read_counter",
]

Codec = Literal["h264", "h265"]

#: Bump when the picture or the encoder settings change, so stale cached files are not reused.
FORMAT_VERSION: Final = 1

#: Number of binary cells drawn in the top-left corner (frame index modulo 2**COUNTER_BITS).
COUNTER_BITS: Final = 16

_ENCODERS: Final[dict[str, str]] = {"h264": "libx264", "h265": "libx265"}
_EXTENSIONS: Final[dict[str, str]] = {"h264": "h264", "h265": "h265"}
_BLACK: Final = 16
_WHITE: Final = 235

U8Array = npt.NDArray[np.uint8]


def counter_cell_size(width: int) -> int:
    """Return the side (in pixels, even) of one counter cell for a picture ``width`` wide.

    The :data:`COUNTER_BITS` cells always fit in the left half of the first rows.
    """
    return max(2, (width // (2 * COUNTER_BITS)) // 2 * 2)


def _check_params(codec: str, width: int, height: int, fps: int, seconds: float, gop: int) -> None:
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, not {codec!r}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 16, not {width}x{height}")
    if fps <= 0 or fps > 240:
        raise ValueError(f"fps must be in 1..240, not {fps}")
    if not 0 < seconds <= 600:
        raise ValueError(f"seconds must be in (0, 600], not {seconds}")
    if gop <= 0:
        raise ValueError(f"gop must be positive, not {gop}")


def _frame_count(fps: int, seconds: float) -> int:
    return max(1, round(fps * seconds))


def make_picture(index: int, width: int, height: int) -> U8Array:
    """Return frame ``index`` of the test pattern as a ``yuv420p`` array of shape (h*3/2, w).

    Luma is a diagonal gradient shifted by 3 per frame; chroma gradients drift too; the top-left
    cells hold ``index`` in binary (most significant bit first, white = 1).
    """
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    luma = ((xs + ys + 3 * index) % 220 + _BLACK).astype(np.uint8)

    cell = counter_cell_size(width)
    bits = index % (1 << COUNTER_BITS)
    for bit in range(COUNTER_BITS):
        value = _WHITE if bits & (1 << (COUNTER_BITS - 1 - bit)) else _BLACK
        luma[0:cell, bit * cell : (bit + 1) * cell] = value

    cw, ch = width // 2, height // 2
    cys = np.arange(ch, dtype=np.int32)[:, None]
    cxs = np.arange(cw, dtype=np.int32)[None, :]
    u = np.broadcast_to((cxs * 2 + 2 * index) % 200 + 28, (ch, cw)).astype(np.uint8)
    v = np.broadcast_to((cys * 2 + 5 * index) % 200 + 28, (ch, cw)).astype(np.uint8)

    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = luma
    chroma = out[height:].reshape(-1)
    chroma[: cw * ch] = u.reshape(-1)
    chroma[cw * ch :] = v.reshape(-1)
    return out


def read_counter(luma: npt.NDArray[Any]) -> int:
    """Read the frame index (modulo 2**:data:`COUNTER_BITS`) back from a decoded luma plane.

    ``luma`` is a 2-D array (height, width) such as ``frame.to_ndarray(format="gray")``.
    """
    width = int(luma.shape[1])
    cell = counter_cell_size(width)
    row = cell // 2
    value = 0
    for bit in range(COUNTER_BITS):
        sample = int(luma[row, bit * cell + cell // 2])
        value = (value << 1) | (1 if sample >= (_BLACK + _WHITE) // 2 else 0)
    return value


def _encoder_options(codec: str, gop: int) -> dict[str, str]:
    if codec == "h264":
        params = (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:aud=1"
            ":threads=1:sliced-threads=0:log-level=error"
        )
        return {"preset": "ultrafast", "tune": "zerolatency", "x264-params": params}
    params = (
        f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:repeat-headers=1"
        ":aud=1:pools=1:frame-threads=1:wpp=0:log-level=error"
    )
    return {"preset": "ultrafast", "tune": "zerolatency", "x265-params": params}


def _encode_segment(
    codec: str, width: int, height: int, fps: int, frames: int, gop: int, first_index: int
) -> Iterator[bytes]:
    """Encode ``frames`` pictures starting at ``first_index``; yield Annex-B access units."""
    ctx = av.CodecContext.create(_ENCODERS[codec], "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.gop_size = gop
    ctx.max_b_frames = 0
    ctx.thread_count = 1
    ctx.options = _encoder_options(codec, gop)
    ctx.open()
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(
            make_picture(first_index + i, width, height), format="yuv420p"
        )
        frame.pts = i
        for packet in ctx.encode(frame):
            yield bytes(packet)
    for packet in ctx.encode(None):
        yield bytes(packet)


def _write_atomically(path: Path, chunks: Iterator[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _millis(seconds: float) -> int:
    return round(seconds * 1000)


def ensure_clip(
    cache_dir: Path, codec: Codec, width: int, height: int, fps: int, seconds: float, gop: int
) -> Path:
    """Return the path of an Annex-B clip with these parameters, encoding it if missing.

    The clip has ``round(fps * seconds)`` frames (at least one); its first frame is an IDR
    and every ``gop``-th frame after it too.
    """
    _check_params(codec, width, height, fps, seconds, gop)
    name = (
        f"{codec}_{width}x{height}_{fps}fps_{_millis(seconds)}ms_gop{gop}"
        f"_v{FORMAT_VERSION}.{_EXTENSIONS[codec]}"
    )
    path = Path(cache_dir) / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    frames = _frame_count(fps, seconds)
    _write_atomically(path, _encode_segment(codec, width, height, fps, frames, gop, 0))
    return path


def ensure_size_change_clip(
    cache_dir: Path,
    codec: Codec,
    sizes: Sequence[tuple[int, int]] = ((320, 240), (480, 360)),
    fps: int = 25,
    seconds_each: float = 1.0,
    gop: int = 25,
) -> Path:
    """Return the path of a clip whose resolution changes between segments, encoding if missing.

    Each ``(width, height)`` in ``sizes`` gets ``round(fps * seconds_each)`` frames from its own
    encoder; the segments are concatenated, so every size change happens at an IDR picture
    preceded by the new parameter sets (what a camera does when its resolution is reconfigured).
    The frame counter keeps counting across segments.
    """
    if len(sizes) < 2:
        raise ValueError("sizes needs at least two (width, height) pairs")
    for width, height in sizes:
        _check_params(codec, width, height, fps, seconds_each, gop)
    size_part = "-".join(f"{w}x{h}" for w, h in sizes)
    name = (
        f"{codec}_sizechange_{size_part}_{fps}fps_{_millis(seconds_each)}ms_gop{gop}"
        f"_v{FORMAT_VERSION}.{_EXTENSIONS[codec]}"
    )
    path = Path(cache_dir) / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    frames = _frame_count(fps, seconds_each)

    def chunks() -> Iterator[bytes]:
        for n, (width, height) in enumerate(sizes):
            yield from _encode_segment(codec, width, height, fps, frames, gop, n * frames)

    _write_atomically(path, chunks())
    return path
