"""The latest-frame store: renditions converted once per frame and shared, zero-copy payloads."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from rtspserver import media_cache_dir

from framebus.store import LatestFrameStore, Rendition, StoredFrame, render
from framebus.testsrc.media import ensure_clip
from framebus.wire import CaptureSource, PixelFormat, encode_header, plane_shapes


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    clip: Path = ensure_clip(media_cache_dir(), "h264", 320, 240, 25, 1.0, 25)
    with av.open(str(clip)) as container:
        return [frame for _, frame in zip(range(5), container.decode(video=0), strict=False)]


def stored(frame: av.VideoFrame, seq: int) -> StoredFrame:
    return StoredFrame(camera="cam", seq=seq, epoch=1, frame=frame, pts=frame.pts,
                       time_base=(1, 90000), capture_time_ns=0,
                       capture_source=CaptureSource.RECEIVE, keyframe=bool(frame.key_frame))


def test_each_wanted_rendition_is_converted_once_per_frame(frames: list[av.VideoFrame]) -> None:
    store = LatestFrameStore()
    small_bgr, gray, native = (Rendition(PixelFormat.BGR24, 160), Rendition(PixelFormat.GRAY),
                               Rendition(PixelFormat.YUV420P))
    for rendition in (small_bgr, small_bgr, small_bgr, gray, native):  # three want small_bgr
        store.want("cam", rendition)
    for seq, frame in enumerate(frames, 1):
        store.publish(stored(frame, seq))
        latest = store.latest("cam")
        assert latest is not None
        assert store.payload(latest, small_bgr) is store.payload(latest, small_bgr)  # shared
    assert store.conversions[("cam", small_bgr)] == len(frames)
    assert store.conversions[("cam", gray)] == len(frames)
    assert store.conversions[("cam", native)] == 0  # the decoder's own yuv420p: no conversion


def test_an_unregistered_rendition_converts_on_demand_once(frames: list[av.VideoFrame]) -> None:
    store = LatestFrameStore()
    store.publish(stored(frames[0], 1))
    latest = store.latest("cam")
    assert latest is not None
    jpeg = Rendition(PixelFormat.JPEG, height=120, quality=80)
    first = store.payload(latest, jpeg)
    assert store.payload(latest, jpeg) is first
    assert store.on_demand["cam"] == 1  # counted per camera, never per requested size
    assert ("cam", jpeg) not in store.conversions
    assert (first.width, first.height) == (160, 120)
    assert bytes(first.buffers[0][:2]) == b"\xff\xd8"  # a JPEG


@pytest.mark.parametrize("fmt", [f for f in PixelFormat if f.is_raw])
def test_payload_views_describe_pyav_planes_exactly(frames: list[av.VideoFrame],
                                                    fmt: PixelFormat) -> None:
    payload, _ = render(frames[1], Rendition(fmt, 97, 61))  # odd size: chroma rounds up
    encode_header(stored(frames[1], 1).header(payload), payload.nbytes)  # a valid message
    assert sum(len(b) for b in payload.buffers) == payload.nbytes
    reference = frames[1].reformat(97, 61, format=fmt.name.lower())
    shapes = plane_shapes(fmt, 97, 61)
    for buffer, layout, plane, shape in zip(payload.buffers, payload.planes, reference.planes,
                                            shapes, strict=True):
        assert layout.stride == plane.line_size and len(buffer) == plane.buffer_size
        dims = (shape.rows, shape.row_bytes)
        got = np.ndarray(dims, np.uint8, buffer, 0, (layout.stride, 1))
        want = np.ndarray(dims, np.uint8, memoryview(plane), 0, (plane.line_size, 1))
        assert np.array_equal(got, want)  # pixel bytes only: line padding is unspecified


def test_rendition_sizes_keep_the_aspect_ratio() -> None:
    assert Rendition(PixelFormat.GRAY, width=320).size_for(1920, 1080) == (320, 180)
    assert Rendition(PixelFormat.GRAY, height=90).size_for(1920, 1080) == (160, 90)
    assert Rendition(PixelFormat.GRAY).size_for(7, 5) == (7, 5)
