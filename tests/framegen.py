"""Deterministic test frames: the same (seed, index) always gives the same header and payload."""

from __future__ import annotations

import random

from framebus.wire import (
    CaptureSource,
    Flags,
    FrameHeader,
    PixelFormat,
    Plane,
    packed_layout,
)


def make_frame(
    seed: int, index: int, fmt: PixelFormat, width: int, height: int, padding: int = 0
) -> tuple[FrameHeader, bytes]:
    """A frame whose payload bytes and header fields depend only on (seed, index).

    ``padding`` extra bytes per row exercise strides wider than the pixel data.
    """
    rng = random.Random(seed * 1_000_003 + index)
    if fmt is PixelFormat.JPEG:
        planes: tuple[Plane, ...] = (Plane(0, 0),)
        size = rng.randint(1, 4096)
    else:
        packed, _ = packed_layout(fmt, width, height)
        offset, grown = 0, []
        for plane, rows in zip(packed, _plane_rows(fmt, height), strict=True):
            stride = plane.stride + padding
            grown.append(Plane(offset, stride))
            offset += stride * rows
        planes, size = tuple(grown), offset
    header = FrameHeader(
        camera=f"cam-{seed % 7}",
        seq=index,
        format=fmt,
        width=width,
        height=height,
        planes=planes,
        epoch=rng.randint(0, 5),
        missed=rng.randint(0, 3),
        pts=None if index % 5 == 0 else rng.randint(-(2**40), 2**40),
        time_base=(1, 90000),
        capture_time_ns=rng.randint(0, 2**62),
        capture_source=CaptureSource(index % 2),
        publish_mono_ns=rng.randint(0, 2**62),
        flags=Flags.KEYFRAME if index % 3 == 0 else Flags.NONE,
    )
    return header, rng.randbytes(size)


def _plane_rows(fmt: PixelFormat, height: int) -> list[int]:
    chroma = (height + 1) // 2
    return {
        PixelFormat.BGR24: [height],
        PixelFormat.RGB24: [height],
        PixelFormat.GRAY: [height],
        PixelFormat.YUV420P: [height, chroma, chroma],
        PixelFormat.NV12: [height, chroma],
    }[fmt]
