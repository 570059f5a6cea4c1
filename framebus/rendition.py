"""The rendition vocabulary: what a consumer asks for (``Rendition``), what a frame becomes for
it (``Payload``), and the one function that makes one from the other (``render``).

This module is the bottom of the frame path: the store, the shm exporter, the segments and the
fan-out loop all speak it, and it speaks none of them (it imports only PyAV, ``imaging`` and
``formats``). tests/test_layers.py keeps it that way, so the store, the exporter and the
segments depend on each other in one direction only: store -> exporter -> shm -> rendition.

Invariants:

* A ``Payload`` is zero-copy: its buffers are views of PyAV's plane buffers, and its plane
  offsets and strides describe PyAV's own line padding, so no packing copy is ever made.
* A ``Rendition`` never asks for more pixels than the frame has (``size_for`` scales down,
  never up), so a request cannot make the daemon convert into gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import av

from framebus.formats import PixelFormat, Plane
from framebus.imaging import convert, encode_image

AV_FORMAT = {
    PixelFormat.BGR24: "bgr24",
    PixelFormat.RGB24: "rgb24",
    PixelFormat.GRAY: "gray",
    PixelFormat.YUV420P: "yuv420p",
    PixelFormat.NV12: "nv12",
}


DEFAULT_QUALITY = 85

ON_DEMAND_KEPT = 4  # renditions nobody subscribed to that one frame keeps (store.payload)


@dataclass(frozen=True, slots=True)
class Rendition:
    """A (format, size) a consumer wants. A missing side keeps the aspect ratio; none: native."""

    format: PixelFormat
    width: int | None = None
    height: int | None = None
    quality: int = DEFAULT_QUALITY  # jpeg only

    def __post_init__(self) -> None:
        if self.format is not PixelFormat.JPEG and self.quality != DEFAULT_QUALITY:
            # raw frames have no quality: gray at "quality 50" is the same rendition as gray
            object.__setattr__(self, "quality", DEFAULT_QUALITY)

    def size_for(self, native_width: int, native_height: int) -> tuple[int, int]:
        """The output size for a frame of the given native size: never larger than it (a
        request cannot make the daemon upscale into gigabytes), the asked aspect kept."""
        if self.width and self.height:
            width, height = self.width, self.height
        elif self.width:
            width, height = self.width, max(1, round(native_height * self.width / native_width))
        elif self.height:
            width, height = max(1, round(native_width * self.height / native_height)), self.height
        else:
            return native_width, native_height
        if width > native_width or height > native_height:
            scale = min(native_width / width, native_height / height)
            width, height = max(1, int(width * scale)), max(1, int(height * scale))
        return width, height


@dataclass(frozen=True, slots=True)
class Payload:
    """One rendition of one frame: the bytes to send, as buffers to pass to writev."""

    format: PixelFormat
    width: int
    height: int
    buffers: tuple[memoryview, ...]
    planes: tuple[Plane, ...]
    nbytes: int


def render(frame: av.VideoFrame, rendition: Rendition) -> tuple[Payload, bool]:
    """Make one rendition of a frame; the flag says whether a conversion was needed."""
    width, height = rendition.size_for(frame.width, frame.height)
    if rendition.format is PixelFormat.JPEG:
        scaled = frame if (width, height) == (frame.width, frame.height) else convert(
            frame, width, height)
        data = memoryview(encode_image(scaled, "jpeg", rendition.quality))
        return Payload(PixelFormat.JPEG, width, height, (data,), (Plane(0, 0),), len(data)), True
    name = AV_FORMAT[rendition.format]
    converted = (width, height) != (frame.width, frame.height) or frame.format.name != name
    out = convert(frame, width, height, name) if converted else frame
    buffers, planes, offset = [], [], 0
    for plane in out.planes:
        buffers.append(memoryview(plane).cast("B"))
        planes.append(Plane(offset, plane.line_size))
        offset += plane.buffer_size
    payload = Payload(rendition.format, width, height, tuple(buffers), tuple(planes), offset)
    return payload, converted
