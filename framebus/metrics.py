"""Prometheus metrics: one Collector that reads the daemon's plain counters at scrape time.

The hot paths (decoder threads, the fan-out loop, the HTTP event loop) only increment plain
integers; nothing here runs until Prometheus scrapes. Names follow Prometheus conventions:
``framebus_`` prefix, ``_total`` for counters, base units (``_seconds``, ``_bytes``). The
process itself is described by prometheus_client's standard collectors, without the prefix
(``process_*``, ``python_info``), so the dashboards and alerts operators already have apply.

Every series whose label values are known in advance exists from the first scrape, at 0: each
camera has every reconnect reason, each subscriber every drop reason (and, on shm, every shm
failure reason), each HTTP route its duration histogram. ``rate()`` and ``increase()`` then
see the first increment instead of a series appearing already at 1.

A subscriber's series are bounded whatever the number of cameras it reads: per camera up to
``PER_CAMERA_MAX`` cameras, beyond that one series summed over them, ``camera="*"``. A
``camera`` label always names one camera (or ``*``), so joins on it work for multi-camera
subscribers: what belongs to the FIFO itself (reader connected, disconnects, info) is repeated
for each of its cameras. Conversions are labelled by the renditions subscribers want now,
each there at 0 from its first subscriber: their series do not grow with every size ever
asked. The scrape itself runs off the event loop (scrape.py).
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import av
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import framebus
from framebus.camera import CameraState
from framebus.failures import RECONNECT_REASONS
from framebus.fanout import LATENCY_BUCKETS_S
from framebus.hwdecode.state import FALLBACK_REASONS
from framebus.outbox import RATE_LIMIT, READER_GONE, SHUTDOWN, SLOW_READER, SUPERSEDED, OutboxStats
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from framebus.view import DaemonView

DROP_REASONS = (SUPERSEDED, RATE_LIMIT, SLOW_READER, READER_GONE, SHUTDOWN)
SHM_FAILURE_REASONS = ("no_space", "permission", "error", "no_free_slot")
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER = "other"  # the route of a path no endpoint has, the method of an unknown method
# A subscriber of more cameras than this has its series summed over them, camera="*": with
# 300 cameras and 64 subscriptions of "*", per-camera series made /metrics 16 MB
PER_CAMERA_MAX = 8
ALL_CAMERAS = "*"


def ffmpeg_version() -> str:
    """The FFmpeg release PyAV runs on ("8.1.2"), else its libavformat version ("lavf 62.12")."""
    version = getattr(av, "ffmpeg_version_info", None)
    if version:
        return str(version)
    major, minor, _ = av.library_versions.get("libavformat", (0, 0, 0))
    return f"lavf {major}.{minor}"


class HttpRequestStats:
    """Requests the API answered, as plain counters. The event loop thread increments them;
    the /metrics thread (scrape.py) reads them with single C-level copies (``list()`` of a
    dict or list holds the GIL throughout), so no lock and never "changed size during
    iteration".

    ``route`` is an endpoint's path template (``/v1/cameras/{name}``), never the raw path, and
    ``other`` for a path no endpoint has; a method outside HTTP's usual ones counts as
    ``other``: the labels stay bounded whatever clients send.
    """

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = tuple(dict.fromkeys([*routes, OTHER]))
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.durations = {route: [0] * (len(HTTP_BUCKETS_S) + 1) for route in self.routes}
        self.duration_sums = dict.fromkeys(self.routes, 0.0)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        if route not in self.durations:
            route = OTHER
        self.requests[(route, method if method in HTTP_METHODS else OTHER, status)] += 1
        self.durations[route][bisect_left(HTTP_BUCKETS_S, seconds)] += 1
        self.duration_sums[route] += seconds


class FramebusCollector(Collector):
    """Reads statistics snapshots of a running daemon."""

    def __init__(self, daemon: DaemonView,
                 http_stats: Callable[[], tuple[int, int, int, int, int]] | None = None,
                 requests: HttpRequestStats | None = None) -> None:
        self.daemon = daemon
        self.http_stats = http_stats
        self.requests = requests
        self.build = [framebus.__version__, platform.python_version(), av.__version__,
                      ffmpeg_version()]

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client at scrape time."""
        build = GaugeMetricFamily("framebus_build_info", "Always 1: the versions of framebus, "
                                  "Python, PyAV and the FFmpeg it runs on",
                                  labels=["version", "python", "pyav", "ffmpeg"])
        build.add_metric(self.build, 1)
        yield build
        yield from self._cameras()
        yield from self._subscribers()
        # width/height are the rendition's size as subscribers ask it, not the output size: an
        # empty side is "native" (both empty) or "from the aspect ratio" (one empty), and a side
        # larger than the camera's is never upscaled. The output size follows the camera's and
        # may change mid-stream: as a label it would start new series; it is in frame headers.
        # Only renditions some subscriber wants now have a series (store.conversions): one a
        # subscription asked goes with it (its count resets if asked again), so the label
        # values are bounded by the subscriptions of now, never by every size ever asked.
        conversions = CounterMetricFamily(
            "framebus_conversions", "Frame conversions to a (format, size) rendition that "
            "subscribers want now; an empty width or height: native, or from the aspect ratio",
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
        if self.requests is not None:
            yield from self._requests(self.requests)

    @staticmethod
    def _http(open_now: int, refused: int, evicted: int, timed_out: int,
              tls_failed: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("framebus_http_connections", "Open HTTP connections",
                                value=open_now)
        closed = CounterMetricFamily("framebus_http_connections_closed",
                                     "HTTP connections the daemon closed, by reason",
                                     labels=["reason"])
        closed.add_metric(["refused_at_cap"], refused)
        closed.add_metric(["evicted_idle"], evicted)
        closed.add_metric(["timeout"], timed_out)
        closed.add_metric(["tls_failed"], tls_failed)  # wrong CA, plain HTTP, a stalled hello
        yield closed

    @staticmethod
    def _requests(stats: HttpRequestStats) -> Iterator[Metric]:
        requests = CounterMetricFamily("framebus_http_requests",
                                       "HTTP requests answered, by route template, method and "
                                       "status", labels=["route", "method", "status"])
        for (route, method, status), count in sorted(list(stats.requests.items())):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily("framebus_http_request_duration_seconds",
                                          "From the complete request to its answer being ready",
                                          labels=["route"])
        for route in stats.routes:
            cumulative, buckets = 0, []
            for bound, count in zip([*HTTP_BUCKETS_S, float("inf")], list(stats.durations[route]),
                                    strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            durations.add_metric([route], buckets, stats.duration_sums[route])
        yield durations

    def _cameras(self) -> Iterator[Metric]:
        labels = ["camera"]
        decoded = CounterMetricFamily("framebus_camera_frames_decoded",
                                      "Frames decoded", labels=labels)
        errors = CounterMetricFamily("framebus_camera_decode_errors",
                                     "Packets that failed to decode", labels=labels)
        packets = CounterMetricFamily("framebus_camera_packets",
                                      "Packets demuxed from the camera's stream", labels=labels)
        input_bytes = CounterMetricFamily("framebus_camera_input_bytes",
                                          "Bytes of the packets demuxed (the compressed stream)",
                                          labels=labels)
        reconnects = CounterMetricFamily("framebus_camera_reconnects",
                                         "Reconnects by reason", labels=["camera", "reason"])
        state = GaugeMetricFamily("framebus_camera_state",
                                  "1 for the camera's current state", labels=["camera", "state"])
        idle = GaugeMetricFamily("framebus_camera_idle",
                                 "1 while streaming but decoding keyframes only, nobody "
                                 "wanting its frames (idle_decode: keyframes)", labels=labels)
        age = GaugeMetricFamily("framebus_camera_frame_age_seconds",
                                "Age of the newest decoded frame; +Inf before the first",
                                labels=labels)
        fps = GaugeMetricFamily("framebus_camera_fps", "Decoded frames per second (smoothed)",
                                labels=labels)
        declared = GaugeMetricFamily("framebus_camera_declared_fps",
                                     "The frame rate the stream declares; 0 if none",
                                     labels=labels)
        width = GaugeMetricFamily("framebus_camera_width_pixels", "Frame width", labels=labels)
        height = GaugeMetricFamily("framebus_camera_height_pixels", "Frame height",
                                   labels=labels)
        info = GaugeMetricFamily("framebus_camera_info", "Camera codec", labels=["camera", "codec"])
        decoder = GaugeMetricFamily("framebus_camera_decoder_info", "1, labelled with the "
                                    "codec, the hwaccel asked for and the device decoding "
                                    "(none: software)",
                                    labels=["camera", "codec", "requested", "hwaccel"])
        fallbacks = CounterMetricFamily("framebus_camera_hwaccel_fallbacks", "Sessions that "
                                        "decoded in software (or, hwaccel_required, not at "
                                        "all) although hardware was asked for, by reason",
                                        labels=["camera", "reason"])
        now = time.monotonic()
        for name, camera in list(self.daemon.cameras.cameras.items()):
            stats = camera.stats
            decoded.add_metric([name], stats.frames_decoded)
            errors.add_metric([name], stats.decode_errors)
            packets.add_metric([name], stats.packets)
            input_bytes.add_metric([name], stats.input_bytes)
            counted = dict(stats.reconnects)
            for reason in dict.fromkeys([*RECONNECT_REASONS, *counted]):
                reconnects.add_metric([name, reason], counted.get(reason, 0))
            for candidate in CameraState:
                state.add_metric([name, candidate.value], float(camera.state is candidate))
            idle.add_metric([name], float(camera.idle))
            last = stats.last_frame_mono
            age.add_metric([name], now - last if last else float("inf"))
            fps.add_metric([name], stats.fps)
            declared.add_metric([name], stats.declared_fps)
            width.add_metric([name], stats.width)
            height.add_metric([name], stats.height)
            info.add_metric([name, stats.codec or "unknown"], 1)
            hw = camera.decoding
            decoder.add_metric([name, stats.codec or "unknown", hw.requested,
                                hw.active or "none"], 1)
            if hw.requested != "none":
                for reason in dict.fromkeys([*FALLBACK_REASONS, *hw.fallbacks]):
                    fallbacks.add_metric([name, reason], hw.fallbacks.get(reason, 0))
        yield from (decoded, errors, packets, input_bytes, reconnects, state, idle, age, fps,
                    declared, width, height, info, decoder, fallbacks)

    def _subscribers(self) -> Iterator[Metric]:
        labels = ["subscriber", "camera"]
        offered = CounterMetricFamily("framebus_subscriber_frames_offered",
                                      "Frames of its camera the subscriber was due: sent + "
                                      "dropped + at most 2 in flight", labels=labels)
        sent = CounterMetricFamily("framebus_subscriber_frames_sent",
                                   "Frames fully written to the FIFO", labels=labels)
        dropped = CounterMetricFamily("framebus_subscriber_frames_dropped",
                                      "Frames not sent, by reason",
                                      labels=["subscriber", "camera", "reason"])
        sent_bytes = CounterMetricFamily("framebus_subscriber_sent_bytes",
                                         "Bytes written to the FIFO: headers and payloads "
                                         "(fifo), headers only (shm)", labels=labels)
        payload_bytes = CounterMetricFamily("framebus_subscriber_payload_bytes",
                                            "Frame payload bytes delivered: written to the FIFO "
                                            "(fifo) or in the shm slot the header names (shm)",
                                            labels=labels)
        # the FIFO's own, once per camera it carries (the same value) so joins on camera work
        connected = GaugeMetricFamily("framebus_subscriber_connected", "1 while a reader has "
                                      "the FIFO (carrying the camera's frames) open",
                                      labels=labels)
        disconnects = CounterMetricFamily("framebus_subscriber_disconnects", "Readers of the "
                                          "FIFO (carrying the camera's frames) that left",
                                          labels=labels)
        latency = HistogramMetricFamily("framebus_subscriber_latency_seconds",
                                        "The camera's frames, publish to fully written",
                                        labels=labels)
        info = GaugeMetricFamily("framebus_subscriber_info", "1 per subscriber and camera it "
                                 "reads, with its transport", labels=[*labels, "transport"])
        # shm series are per segment, and a segment holds one camera's frames: a multi-camera
        # subscriber has one series per camera, a single-camera one its one as before
        pinned = GaugeMetricFamily("framebus_subscriber_shm_pinned_slots",
                                   "shm slots the subscriber keeps from reuse in the camera's "
                                   "segment (at most 3)", labels=labels)
        segment_bytes = GaugeMetricFamily("framebus_subscriber_shm_segment_bytes",
                                          "Size of the shm segment the subscriber reads the "
                                          "camera's frames from (shared with that rendition's "
                                          "other shm subscribers)", labels=labels)
        failures = CounterMetricFamily("framebus_subscriber_shm_failures",
                                       "Attempts to make the subscriber's shm segment for the "
                                       "camera that failed, by reason",
                                       labels=[*labels, "reason"])
        exporter = self.daemon.fanout.exporter
        for name, sub in list(self.daemon.fanout.subscribers.items()):
            cameras = sub.spec.all_cameras
            # every series per camera (a multi-camera FIFO has one each), up to PER_CAMERA_MAX
            # cameras: beyond, one series summed over them, camera="*", so a subscriber costs
            # a bounded number of series however many cameras it reads
            each = len(cameras) <= PER_CAMERA_MAX
            for camera, stats in _streams(sub.outbox.stream_stats, cameras, each):
                key = [name, camera]
                offered.add_metric(key, stats.offered)
                sent.add_metric(key, stats.sent)
                drops = dict(stats.dropped)
                for reason in dict.fromkeys([*DROP_REASONS, *drops]):
                    dropped.add_metric([*key, reason], drops.get(reason, 0))
                sent_bytes.add_metric(key, stats.bytes_sent)
                payload_bytes.add_metric(key, stats.payload_bytes)
                connected.add_metric(key, float(sub.connected))
                disconnects.add_metric(key, sub.disconnects)
                histogram = sub.camera_latency.get(camera, sub.latency)  # one camera, or "*"
                counts, cumulative, buckets = list(histogram.counts), 0, []
                for bound, count in zip([*LATENCY_BUCKETS_S, float("inf")], counts, strict=True):
                    cumulative += count
                    buckets.append((_bound(bound), cumulative))
                latency.add_metric(key, buckets, histogram.sum_s)
                info.add_metric([*key, sub.spec.transport], 1)
            if not sub.shm_keys:
                continue
            pins = sub.pinned_by_camera()
            shm: dict[str, tuple[int, int, Counter[str]]] = {}
            for camera, shm_key in sub.shm_keys.items():  # per segment: per camera
                state = exporter.state(shm_key)
                segment = state.segment if state is not None else None
                shm[camera] = (pins[camera], segment.size if segment is not None else 0,
                               Counter(state.failures) if state is not None else Counter())
            if not each:  # summed: slots pinned in all, bytes of all, failures of all
                shm = {ALL_CAMERAS: (sum(v[0] for v in shm.values()),
                                     sum(v[1] for v in shm.values()),
                                     sum((v[2] for v in shm.values()), Counter()))}
            for camera, (pinned_now, size, failed) in shm.items():
                pinned.add_metric([name, camera], pinned_now)
                segment_bytes.add_metric([name, camera], size)
                for reason in SHM_FAILURE_REASONS:
                    failures.add_metric([name, camera, reason], failed[reason])
        yield from (offered, sent, dropped, sent_bytes, payload_bytes, connected, disconnects,
                    latency, info, pinned, segment_bytes, failures)


def _streams(stats: dict[str, OutboxStats], cameras: tuple[str, ...], each: bool
             ) -> Iterator[tuple[str, OutboxStats]]:
    """A subscriber's frame counts: per camera, or summed over its cameras as ``*``."""
    if each:
        for camera in cameras:
            yield camera, stats.get(camera) or OutboxStats()
        return
    total = OutboxStats()
    for camera in cameras:
        one = stats.get(camera)
        if one is not None:
            total.offered += one.offered
            total.sent += one.sent
            total.bytes_sent += one.bytes_sent
            total.payload_bytes += one.payload_bytes
            total.dropped.update(dict(one.dropped))
    yield ALL_CAMERAS, total


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def build_registry(daemon: DaemonView,
                   http_stats: Callable[[], tuple[int, int, int, int, int]] | None = None,
                   requests: HttpRequestStats | None = None) -> CollectorRegistry:
    """A registry of framebus's own: its collector plus the standard process_* and
    python_info series (no framebus_ prefix: they are what every exporter calls them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FramebusCollector(daemon, http_stats, requests))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
