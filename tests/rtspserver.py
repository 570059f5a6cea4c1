"""Test helper: the RTSP test-server harness plus the ``rtsp_server_factory`` fixture.

The process manager itself lives in :mod:`framebus.testsrc.harness` (the built-in demo uses it
too); this module re-exports its names so tests keep importing them from ``rtspserver``.

In a test, use the :func:`rtsp_server_factory` fixture (re-exported by conftest)::

    def test_x(rtsp_server_factory):
        server = rtsp_server_factory([Mount("cam1")])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from framebus.testsrc.harness import (
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    SERVER_SCRIPT,
    Mount,
    RtspServer,
    RtspServerError,
    checkout_root,
    gst_python,
    media_cache_dir,
)

__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "SERVER_SCRIPT",
    "Mount",
    "RtspServer",
    "RtspServerError",
    "RtspServerFactory",
    "checkout_root",
    "gst_python",
    "media_cache_dir",
    "rtsp_server_factory",
]


class RtspServerFactory(Protocol):
    """Signature of the :func:`rtsp_server_factory` fixture's value."""

    def __call__(
        self,
        mounts: Sequence[Mount],
        *,
        cache_dir: Path | None = None,
        port: int = 0,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> RtspServer: ...


@pytest.fixture
def rtsp_server_factory() -> Iterator[RtspServerFactory]:
    """Fixture: ``factory(mounts, **kwargs) -> RtspServer`` (started); all stopped at teardown."""
    servers: list[RtspServer] = []

    def factory(
        mounts: Sequence[Mount],
        *,
        cache_dir: Path | None = None,
        port: int = 0,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> RtspServer:
        server = RtspServer(mounts, cache_dir=cache_dir, port=port, ready_timeout=ready_timeout)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()
