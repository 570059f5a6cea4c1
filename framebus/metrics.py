"""Prometheus metrics: one Collector that reads the daemon's plain counters at scrape time.

The hot paths (decoder threads, the fan-out loop) only increment plain integers; nothing
here runs until Prometheus scrapes. Names follow Prometheus conventions: ``framebus_``
prefix, ``_total`` for counters, base units (``_seconds``, ``_bytes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from framebus.camera import CameraState
from framebus.fanout import LATENCY_BUCKETS_S
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from framebus.view import DaemonView


class FramebusCollector(Collector):
    """Reads statistics snapshots of a running daemon."""

    def __init__(self, daemon: DaemonView,
                 http_stats: Callable[[], tuple[int, int, int, int]] | None = None) -> None:
        self.daemon = daemon
        self.http_stats = http_stats

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client at scrape time."""
        yield from self._cameras()
        yield from self._subscribers()
        conversions = CounterMetricFamily(
            "framebus_conversions", "Frame conversions to a (format, size) rendition",
            labels=["camera", "format", "width", "height", "quality"])
        for (camera, rendition), count in list(self.daemon.store.conversions.items()):
            quality = str(rendition.quality) if rendition.format is PixelFormat.JPEG else ""
            conversions.add_metric([camera, str(rendition.format), str(rendition.width or ""),
                                    str(rendition.height or ""), quality], count)
        yield conversions
        on_demand = CounterMetricFamily(
            "framebus_on_demand_conversions", "Conversions made for snapshots and frame "
            "requests (any size: not labelled by it)", labels=["camera"])
        for camera, count in list(self.daemon.store.on_demand.items()):
            on_demand.add_metric([camera], count)
        yield on_demand
        if self.http_stats is not None:
            yield from self._http(*self.http_stats())

    @staticmethod
    def _http(open_now: int, refused: int, evicted: int, timed_out: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("framebus_http_connections", "Open HTTP connections",
                                value=open_now)
        closed = CounterMetricFamily("framebus_http_connections_closed",
                                     "HTTP connections the daemon closed, by reason",
                                     labels=["reason"])
        closed.add_metric(["refused_at_cap"], refused)
        closed.add_metric(["evicted_idle"], evicted)
        closed.add_metric(["timeout"], timed_out)
        yield closed

    def _cameras(self) -> Iterator[Metric]:
        labels = ["camera"]
        decoded = CounterMetricFamily("framebus_camera_frames_decoded",
                                      "Frames decoded", labels=labels)
        errors = CounterMetricFamily("framebus_camera_decode_errors",
                                     "Packets that failed to decode", labels=labels)
        reconnects = CounterMetricFamily("framebus_camera_reconnects",
                                         "Reconnects by reason", labels=["camera", "reason"])
        state = GaugeMetricFamily("framebus_camera_state",
                                  "1 for the camera's current state", labels=["camera", "state"])
        age = GaugeMetricFamily("framebus_camera_frame_age_seconds",
                                "Age of the newest decoded frame", labels=labels)
        fps = GaugeMetricFamily("framebus_camera_fps", "Decoded frames per second (smoothed)",
                                labels=labels)
        width = GaugeMetricFamily("framebus_camera_width_pixels", "Frame width", labels=labels)
        height = GaugeMetricFamily("framebus_camera_height_pixels", "Frame height",
                                   labels=labels)
        info = GaugeMetricFamily("framebus_camera_info", "Camera codec", labels=["camera", "codec"])
        now = time.monotonic()
        for name, camera in list(self.daemon.cameras.cameras.items()):
            stats = camera.stats
            decoded.add_metric([name], stats.frames_decoded)
            errors.add_metric([name], stats.decode_errors)
            for reason, count in list(stats.reconnects.items()):
                reconnects.add_metric([name, reason], count)
            for candidate in CameraState:
                state.add_metric([name, candidate.value], float(camera.state is candidate))
            if stats.last_frame_mono:
                age.add_metric([name], now - stats.last_frame_mono)
            fps.add_metric([name], stats.fps)
            width.add_metric([name], stats.width)
            height.add_metric([name], stats.height)
            info.add_metric([name, stats.codec or "unknown"], 1)
        yield from (decoded, errors, reconnects, state, age, fps, width, height, info)

    def _subscribers(self) -> Iterator[Metric]:
        labels = ["subscriber", "camera"]
        sent = CounterMetricFamily("framebus_subscriber_frames_sent",
                                   "Frames fully written to the FIFO", labels=labels)
        dropped = CounterMetricFamily("framebus_subscriber_frames_dropped",
                                      "Frames not sent, by reason",
                                      labels=["subscriber", "camera", "reason"])
        sent_bytes = CounterMetricFamily("framebus_subscriber_sent_bytes",
                                         "Bytes written to the FIFO", labels=labels)
        connected = GaugeMetricFamily("framebus_subscriber_connected",
                                      "1 while a reader has the FIFO open", labels=labels)
        disconnects = CounterMetricFamily("framebus_subscriber_disconnects",
                                          "Readers that left", labels=labels)
        latency = HistogramMetricFamily("framebus_subscriber_latency_seconds",
                                        "Publish to fully written", labels=labels)
        info = GaugeMetricFamily("framebus_subscriber_info", "1 per subscriber, with its "
                                 "transport", labels=[*labels, "transport"])
        pinned = GaugeMetricFamily("framebus_subscriber_shm_pinned_slots",
                                   "shm slots the subscriber keeps from reuse (at most 3)",
                                   labels=labels)
        segment_bytes = GaugeMetricFamily("framebus_subscriber_shm_segment_bytes",
                                          "Size of the shm segment the subscriber reads "
                                          "(shared with its rendition's other shm subscribers)",
                                          labels=labels)
        failures = CounterMetricFamily("framebus_subscriber_shm_failures",
                                       "Attempts to make the subscriber's shm segment that "
                                       "failed, by reason", labels=[*labels, "reason"])
        exporter = self.daemon.fanout.exporter
        for name, sub in list(self.daemon.fanout.subscribers.items()):
            key = [name, sub.spec.camera]
            stats = sub.outbox.stats
            sent.add_metric(key, stats.sent)
            for reason, count in list(stats.dropped.items()):
                dropped.add_metric([*key, reason], count)
            sent_bytes.add_metric(key, stats.bytes_sent)
            connected.add_metric(key, float(sub.connected))
            disconnects.add_metric(key, sub.disconnects)
            counts, cumulative, buckets = list(sub.latency.counts), 0, []
            for bound, count in zip([*LATENCY_BUCKETS_S, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric(key, buckets, sub.latency.sum_s)
            info.add_metric([*key, sub.spec.transport], 1)
            if sub.shm_key is not None:
                state = exporter.state(sub.shm_key)
                segment = state.segment if state is not None else None
                pinned.add_metric(key, sub.pinned_slots)
                segment_bytes.add_metric(key, segment.size if segment is not None else 0)
                for reason in ("no_space", "permission", "error", "no_free_slot"):
                    count = state.failures[reason] if state is not None else 0
                    failures.add_metric([*key, reason], count)
        yield from (sent, dropped, sent_bytes, connected, disconnects, latency, info, pinned,
                    segment_bytes, failures)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def build_registry(daemon: DaemonView,
                   http_stats: Callable[[], tuple[int, int, int, int]] | None = None
                   ) -> CollectorRegistry:
    """A registry of framebus's own: its collector plus the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FramebusCollector(daemon, http_stats))
    ProcessCollector(namespace="framebus", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
