"""The loopback RTSP test server and test clips, for the benchmarks that need real cameras."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

try:
    from framebus.testsrc.harness import Mount, RtspServer, media_cache_dir
except ImportError:  # the server manager used to live in the tests
    import sys

    from bench.common import ROOT

    sys.path.insert(0, str(ROOT / "tests"))
    from rtspserver import Mount, RtspServer, media_cache_dir  # type: ignore[no-redef,import-not-found,unused-ignore]

from framebus.testsrc.media import ensure_clip

__all__ = ["Mount", "RtspServer", "clip", "media_cache_dir", "server"]


def clip(width: int, height: int, fps: int = 25, seconds: float = 10.0, gop: int = 50) -> Path:
    """An H.264 Annex-B clip from the media cache (encoded on first use)."""
    return ensure_clip(media_cache_dir(), "h264", width, height, fps, seconds, gop)


def server(mounts: Sequence[Mount]) -> RtspServer:
    """A started server (call ``close()`` in a finally block)."""
    srv = RtspServer(list(mounts), ready_timeout=30)
    srv.start()
    return srv
