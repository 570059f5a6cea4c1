"""Still images from frames with PyAV's own encoders (no extra imaging library).

Used by ``framebus dump`` and by the snapshot endpoints. Encoding is CPU work: callers run it
outside the fan-out loop.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal, cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext

from framebus.wire import FrameHeader, PixelFormat, plane_shapes

ImageKind = Literal["png", "jpeg"]

_AV_FORMAT = {
    PixelFormat.BGR24: "bgr24",
    PixelFormat.RGB24: "rgb24",
    PixelFormat.GRAY: "gray",
    PixelFormat.YUV420P: "yuv420p",
    PixelFormat.NV12: "nv12",
}


def jpeg_qscale(quality: int) -> int:
    """Map a JPEG quality 1..100 (100 best) to FFmpeg's mjpeg qscale 31..2 (2 best)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be 1..100, got {quality}")
    return round(2 + (100 - quality) * 29 / 99)


def convert(frame: av.VideoFrame, width: int | None = None, height: int | None = None,
            format: str | None = None) -> av.VideoFrame:
    """``frame.reformat()`` in the calling thread, without swscale's thread pool.

    PyAV (>= 17) lets swscale pick its own thread count, and keeps the scaler, with its pool of
    worker threads, on the *source* frame for as long as that frame lives. The daemon converts
    every decoded frame once per wanted rendition, in that camera's decoder thread: a pool per
    frame cost 2-8x more time than converting in place (0.19 vs 1.46 ms for two renditions of
    a 640x360 frame on 2 cores) and left 2 idle threads behind for every stored frame.
    Parallelism comes from one decoder thread per camera instead.
    """
    return frame.reformat(width=width, height=height, format=format, threads=1)


def to_video_frame(header: FrameHeader, payload: memoryview | bytes) -> av.VideoFrame:
    """Copy a raw payload (honouring its plane offsets and strides) into a PyAV frame."""
    if header.format is PixelFormat.JPEG:
        return decode_jpeg(payload)
    frame = av.VideoFrame(header.width, header.height, _AV_FORMAT[header.format])
    shapes = plane_shapes(header.format, header.width, header.height)
    for plane, layout, shape in zip(frame.planes, header.planes, shapes, strict=True):
        src = np.ndarray((shape.rows, shape.row_bytes), np.uint8, payload, layout.offset,
                         (layout.stride, 1))
        dst = np.ndarray((shape.rows, shape.row_bytes), np.uint8, memoryview(plane), 0,
                         (plane.line_size, 1))
        dst[...] = src
    return frame


def decode_jpeg(data: memoryview | bytes) -> av.VideoFrame:
    """Decode one JPEG image with FFmpeg's mjpeg decoder."""
    codec = av.CodecContext.create("mjpeg", "r")
    frames = codec.decode(av.Packet(bytes(data)))
    frames += codec.decode(None)
    if not frames:
        raise ValueError("JPEG payload did not decode to a picture")
    frame: av.VideoFrame = frames[0]
    return frame


def encode_image(frame: av.VideoFrame, kind: ImageKind, quality: int = 85) -> bytes:
    """Encode one frame as PNG (lossless, rgb24) or JPEG (``quality`` 1..100)."""
    if kind == "png":
        name, pix_fmt, options = "png", "rgb24", {}
    else:
        qscale = str(jpeg_qscale(quality))
        name, pix_fmt, options = "mjpeg", "yuvj420p", {"qmin": qscale, "qmax": qscale}
    codec = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
    codec.width, codec.height = frame.width, frame.height
    codec.pix_fmt = pix_fmt
    codec.time_base = Fraction(1, 25)
    codec.options = options
    packets = codec.encode(convert(frame, format=pix_fmt))
    packets += codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)
