"""A camera-like test clip: textured, moving, noisy picture at a camera's bitrate.

The test pattern of :mod:`framebus.testsrc.media` is a smooth gradient encoded with x264's
``ultrafast`` preset: a 1080p frame of it decodes in about 1.4 ms here, several times faster
than real camera footage (texture, sensor noise, ~4 Mbit/s). CPU ratios that depend on what
decoding costs (decode once, serve many; idle cost) are therefore also measured on this clip,
as extra information next to the figures on the test pattern.

Same stream layout as the test pattern (Annex-B, IDR every ``gop`` frames with repeated
parameter sets, access unit delimiters, no B-frames), so the test RTSP server can loop it.
Cached in the media cache under a name carrying every parameter; written atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bench.rtsp import media_cache_dir

VERSION = 1


def _pictures(width: int, height: int, frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(20240601)
    noise = rng.integers(0, 256, (height * 2, width * 2), dtype=np.uint16)
    texture = ((noise[::2, ::2] + noise[1::2, ::2] + noise[::2, 1::2] + noise[1::2, 1::2]) // 4
               ).astype(np.uint8)
    ys = np.arange(height)[:, None]
    xs = np.arange(width)[None, :]
    cw, ch = width // 2, height // 2
    u = ((np.arange(cw)[None, :] // 8 + np.arange(ch)[:, None] // 8) % 64 + 96).astype(np.uint8)
    out = []
    for i in range(frames):
        luma = np.roll(texture, (i * 3, i * 5), axis=(0, 1)) // 2 + (
            (xs + ys + 4 * i) % 256 // 2).astype(np.uint8)
        grain = rng.integers(-6, 7, (height, width), dtype=np.int16)
        luma = (luma.astype(np.int16) + grain).clip(0, 255).astype(np.uint8)
        picture = np.empty((height * 3 // 2, width), np.uint8)
        picture[:height] = luma
        chroma = picture[height:].reshape(-1)
        chroma[: cw * ch] = np.roll(u, i, axis=1).reshape(-1)
        chroma[cw * ch:] = 128
        out.append(picture)
    return out


def camera_like_clip(width: int = 1920, height: int = 1080, fps: int = 25,
                     seconds: float = 4.0, gop: int = 50, kbps: int = 4000) -> Path:
    """The clip's path, encoding it on first use (a few seconds)."""
    name = (f"bench_camera_like_{width}x{height}_{fps}fps_{round(seconds * 1000)}ms_gop{gop}"
            f"_{kbps}k_v{VERSION}.h264")
    path = media_cache_dir() / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.gop_size = gop
    ctx.max_b_frames = 0
    ctx.thread_count = 1
    ctx.options = {"preset": "veryfast", "tune": "zerolatency", "x264-params": (
        f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:aud=1"
        f":bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={kbps}:threads=1:log-level=error")}
    ctx.open()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for index, picture in enumerate(_pictures(width, height, round(fps * seconds))):
                frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
                frame.pts = index
                for packet in ctx.encode(frame):
                    out.write(bytes(packet))
            for packet in ctx.encode(None):
                out.write(bytes(packet))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
