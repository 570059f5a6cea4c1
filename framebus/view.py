"""What the control plane (HTTP handlers, the metrics collector) may read and change.

The daemon implements this protocol; control.py, api_handlers.py and metrics.py depend on it
alone, never on daemon.py, so the import graph has no cycle and a handler cannot reach past
what is listed here (no reconcile, no shutdown, no camera passwords).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from framebus.camera import CameraSet
from framebus.config import Config, SubscriberConfig
from framebus.fanout import FanoutLoop
from framebus.store import LatestFrameStore


class DaemonView(Protocol):
    """A running daemon, as the control plane sees it."""

    @property
    def config(self) -> Config:
        """The configuration in force (replaced whole on reload)."""

    @property
    def store(self) -> LatestFrameStore:
        """Newest frames and their renditions (read; renditions are converted on demand)."""

    @property
    def cameras(self) -> CameraSet:
        """Running cameras (read their state and statistics)."""

    @property
    def fanout(self) -> FanoutLoop:
        """Subscribers and their counters (read); ``send_once`` for frame requests."""

    @property
    def dynamic(self) -> Mapping[str, SubscriberConfig]:
        """Subscriptions added over HTTP."""

    @property
    def subscriber_errors(self) -> Mapping[str, str]:
        """Why a configured subscriber is not running, by name."""

    def fifo_path(self, name: str) -> Path:
        """Where a subscriber's FIFO lives."""

    def allowed_fifo_dirs(self) -> list[Path]:
        """Directories frame requests and run-time subscriptions may use."""

    def fifos_in_use(self) -> set[tuple[int, int]]:
        """(st_dev, st_ino) of every FIFO a subscriber uses: requests may never write there."""

    def add_dynamic(self, name: str, sub: SubscriberConfig) -> bool:
        """Add a run-time subscription; False if the name is taken."""

    def remove_dynamic(self, name: str) -> None:
        """Remove a run-time subscription."""
