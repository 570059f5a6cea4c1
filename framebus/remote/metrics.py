"""The bridge's Prometheus metrics: one Collector over its exports' plain counters.

Reader threads only increment integers (export.ExportStats); nothing here runs until a
scrape. Every export has every series from the first scrape, drop reasons included, so
``rate()`` sees the first increment. Labels are the camera and the rendition, both names from
the config (never a URL, so never a credential).

* ``framebus_remote_up`` 1 while the bridge runs (0 never: a dead bridge is no target; alert
  on ``up``), ``framebus_remote_exports`` exports declared;
* per export: ``framebus_remote_matching`` (1 while a remote subscriber matches),
  ``framebus_remote_puts_total``, ``framebus_remote_bytes_total``,
  ``framebus_remote_put_blocked_seconds_total`` (time inside zenoh's ``put()``: at link speed
  it blocks, zenoh #2258), ``framebus_remote_dropped_total{reason}`` (``upstream``: the daemon
  dropped them because the bridge did not keep up, a slow network or put; ``max_fps``: skipped
  to keep the export's rate; ``overwritten``: the shm slot was reused while the bridge copied
  it, so it was not sent torn),
  ``framebus_remote_queries_total{outcome}``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from framebus.errors import ConfigError

if TYPE_CHECKING:
    from framebus.remote.bridge import Bridge

DROP_REASONS = ("upstream", "max_fps", "overwritten")
# the daemon's refusals (no_frame, frame_too_old, ...) add their own outcomes: a word each,
# from the daemon (trusted), so the label set stays small
QUERY_OUTCOMES = ("cached", "daemon", "busy", "bad_request", "unavailable", "error")
_OUTCOME = re.compile(r"[a-z_]{1,32}")
LABELS = ["camera", "rendition"]


class RemoteCollector(Collector):
    """Reads the bridge's exports at scrape time."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Metric]:
        exports = list(self.bridge.exports.values())
        up = GaugeMetricFamily("framebus_remote_up", "1 while the framebus bridge runs")
        up.add_metric([], 1)
        count = GaugeMetricFamily("framebus_remote_exports",
                                  "Renditions the config exports from this host")
        count.add_metric([], len(exports))
        matching = GaugeMetricFamily("framebus_remote_matching",
                                     "1 while some remote subscriber matches the export",
                                     labels=LABELS)
        puts = CounterMetricFamily("framebus_remote_puts", "Frames published to zenoh",
                                   labels=LABELS)
        sent = CounterMetricFamily("framebus_remote_bytes", "Payload bytes published to zenoh",
                                   labels=LABELS)
        blocked = CounterMetricFamily(
            "framebus_remote_put_blocked_seconds",
            "Seconds spent inside zenoh put() (it blocks at link speed)", labels=LABELS)
        dropped = CounterMetricFamily(
            "framebus_remote_dropped", "Frames of the export never published, by reason",
            labels=[*LABELS, "reason"])
        queries = CounterMetricFamily(
            "framebus_remote_queries", "Newest-frame queries answered, by outcome",
            labels=[*LABELS, "outcome"])
        for export in exports:
            labels = [export.camera, export.rendition]
            stats = export.stats
            matching.add_metric(labels, int(export.matching))
            puts.add_metric(labels, stats.puts)
            sent.add_metric(labels, stats.bytes)
            blocked.add_metric(labels, stats.put_seconds)
            for reason in DROP_REASONS:
                dropped.add_metric([*labels, reason], stats.dropped[reason])
            outcomes = {*QUERY_OUTCOMES, *filter(_OUTCOME.fullmatch, stats.queries)}
            for outcome in sorted(outcomes):
                queries.add_metric([*labels, outcome], stats.queries[outcome])
        yield from (up, count, matching, puts, sent, blocked, dropped, queries)


class MetricsServer:
    """``/metrics`` on its own thread; ``shutdown()`` stops it."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name="bridge-metrics",
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        """The port bound (the config may say 0)."""
        return int(self.server.server_address[1])

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(bridge: Bridge, listen: str) -> MetricsServer:
    """Serve the bridge's metrics and the process's own on ``listen`` (``host:port``)."""
    host, _, port = listen.rpartition(":")
    try:
        address = (host.strip("[]") or "127.0.0.1", int(port))
    except ValueError:
        raise ConfigError(f"remote.metrics_listen: expected host:port, got {listen!r}") from None
    registry = CollectorRegistry()
    registry.register(RemoteCollector(bridge))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    handler = MetricsHandler.factory(registry)
    try:
        server = ThreadingHTTPServer(address, handler)
    except OSError as exc:
        raise ConfigError(f"remote.metrics_listen: cannot listen on {listen}: "
                          f"{exc.strerror}") from None
    server.daemon_threads = True
    return MetricsServer(server)
