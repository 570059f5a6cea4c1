"""A daemon camera fed by another host's export: ``url: zenoh:<host or *>/<camera>/<rendition>``.

A GPU host runs its own framebus with such a camera and fans it out to its local FIFO and shm
readers through the local API unchanged: one network copy per host, not one per consumer. The
frames keep the exporting host's capture clock (``capture_time_ns`` and its source) and PTS,
so a local reader's frame age is still measured from the camera; seq, epoch and instance are
this daemon's own. The subscription is a :class:`~framebus.remote.consumer.RemoteSubscriber`
(ring of one, ``remote.max_age``), so a slow decoder-side never queues network frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from framebus.imaging import to_video_frame
from framebus.remote.consumer import RemoteSubscriber
from framebus.remote.settings import ZENOH_URL, RemoteConfig
from framebus.wire import FrameHeader

if TYPE_CHECKING:
    import av

READ_TICK_S = 0.25  # how often the loop looks at its stop condition
Publish = Callable[["av.VideoFrame", FrameHeader, bool], None]  # frame, header, new epoch


class NoFrames(Exception):
    """No frame arrived within the open timeout (no bridge exports it, or nobody reaches it)."""


def stream_remote(url: str, config: RemoteConfig, running: Callable[[], bool],
                  publish: Publish, first_frame_timeout: float) -> None:
    """Deliver frames of ``url`` to ``publish`` while ``running()``; NoFrames when the first
    one does not come in time. Errors of the zenoh session (FramebusError) propagate, for the
    camera's backoff."""
    match = ZENOH_URL.fullmatch(url)
    if match is None:  # config validation refuses these first
        raise ValueError("expected zenoh:<host or *>/<camera>/<rendition>")
    host = None if match["host"] == "*" else match["host"]
    shape: tuple[int, int, int, int, int] | None = None  # instance, epoch, size, format
    with RemoteSubscriber(match["camera"], host=host, rendition=match["rendition"],
                          config=config) as sub:
        began = time.monotonic()
        while running():
            try:
                frame = sub.read(timeout=READ_TICK_S)
            except TimeoutError:
                if shape is None and time.monotonic() - began > first_frame_timeout:
                    raise NoFrames(f"no frame from {url} within {first_frame_timeout:g}s: "
                                   "is a bridge exporting it, and reachable?") from None
                continue
            if frame is None:
                return
            header = frame.header
            now_shape = (header.instance, header.epoch, header.width, header.height,
                         int(header.format))
            publish(to_video_frame(header, frame.payload), header, now_shape != shape)
            shape = now_shape
