"""Pixel formats and plane layouts of the framebus wire protocol (docs/PROTOCOL.md section 5).

Pure definitions shared by the codec (``framebus.wire``, which re-exports them), the store and
the client.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class PixelFormat(IntEnum):
    """Payload formats. The numeric value is what travels on the wire."""

    BGR24 = 1
    RGB24 = 2
    GRAY = 3
    YUV420P = 4
    NV12 = 5
    JPEG = 6

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> PixelFormat:
        """Parse a lowercase format name such as ``"bgr24"``."""
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(str(f) for f in cls)
            raise ValueError(f"unknown pixel format {name!r} (expected one of {known})") from None

    @property
    def is_raw(self) -> bool:
        """True for uncompressed pixel data with a plane layout."""
        return self is not PixelFormat.JPEG


class CaptureSource(IntEnum):
    """Where ``capture_time_ns`` came from."""

    RECEIVE = 0  # the daemon's wall clock when the packet was received
    RTCP = 1  # the camera's own clock, from RTCP sender reports


class Plane(NamedTuple):
    """Where one plane lives in the payload: byte offset and bytes per row."""

    offset: int
    stride: int


class PlaneShape(NamedTuple):
    """What a plane must hold: rows, bytes of pixel data per row, bytes per pixel."""

    rows: int
    row_bytes: int
    channels: int


def plane_shapes(fmt: PixelFormat, width: int, height: int) -> tuple[PlaneShape, ...]:
    """The planes a raw format needs at a given size (chroma sizes round up for odd sizes)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    if fmt in (PixelFormat.BGR24, PixelFormat.RGB24):
        return (PlaneShape(height, width * 3, 3),)
    if fmt is PixelFormat.GRAY:
        return (PlaneShape(height, width, 1),)
    if fmt is PixelFormat.YUV420P:
        return (PlaneShape(height, width, 1), PlaneShape(ch, cw, 1), PlaneShape(ch, cw, 1))
    if fmt is PixelFormat.NV12:
        return (PlaneShape(height, width, 1), PlaneShape(ch, cw * 2, 2))
    return ()


def packed_layout(fmt: PixelFormat, width: int, height: int) -> tuple[tuple[Plane, ...], int]:
    """Tightly packed planes (stride == row bytes, planes back to back) and the payload size."""
    planes: list[Plane] = []
    offset = 0
    for shape in plane_shapes(fmt, width, height):
        planes.append(Plane(offset, shape.row_bytes))
        offset += shape.row_bytes * shape.rows
    return tuple(planes), offset
