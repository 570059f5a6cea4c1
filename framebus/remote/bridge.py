"""``framebus bridge``: publish the renditions the config exports to zenoh, for other hosts.

The bridge is its own process beside the daemon (its own systemd unit), an ordinary local
reader: a slow network, a blocked ``put()`` or a crash of the bridge never slows a camera or a
local reader. Like gunicorn's arbiter, signal handlers only record; the main loop reconciles
what is wanted (exports with a matching remote subscriber) against what runs (reader threads),
see :mod:`framebus.remote.export` for the invariants.

What else the bridge declares, for the fleet (:mod:`framebus.remote.fleet`):

* a liveliness token ``framebus/<host>`` and one per export (its data key): a host or export
  that vanishes (crash, link down) disappears from every peer's view within zenoh's lease;
* a queryable ``framebus/<host>/_status`` answering JSON: the daemon's cameras (state, fps,
  frame age, size) and the exports (key, matching, puts).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from framebus.config import Config, load_config
from framebus.errors import ConfigError, FramebusError
from framebus.remote.daemonlink import DaemonLink
from framebus.remote.export import Export
from framebus.remote.gate import QueryGate
from framebus.remote.mapping import data_key
from framebus.remote.session import init_zenoh_log, open_session
from framebus.remote.settings import KEY_PREFIX, RemoteExport, host_name
from framebus.sdnotify import Notifier
from framebus.signals import SignalInbox

log = logging.getLogger("framebus.bridge")
TICK_S = 0.25
MAX_STATUS_PENDING = 4
STATUS_KEY = "_status"  # not a camera name: those start with a letter or digit
CAMERA_FIELDS = ("name", "state", "reason", "fps", "declared_fps", "frame_age_s", "width",
                 "height", "codec")


def exported(config: Config, host: str) -> list[tuple[str, RemoteExport]]:
    """``(camera, export)`` pairs this host's bridge publishes: cameras with ``remote:``
    entries that run here (no ``host:``, or this host)."""
    return [(name, spec) for name, camera in sorted(config.cameras.items())
            if camera.host in (None, host) for spec in camera.remote]


class Bridge:
    """The bridge's zenoh entities and its exports; ``tick`` is one reconcile pass."""

    def __init__(self, config: Config, host: str, session: Any) -> None:
        self.config, self.host, self.session = config, host, session
        self.link = DaemonLink(config)
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bridge-query")
        self.exports: dict[tuple[str, RemoteExport], Export] = {}
        self._status_gate = QueryGate(self.pool, MAX_STATUS_PENDING,
                                      "busy: too many status queries waiting")
        self._token = session.liveliness().declare_token(f"{KEY_PREFIX}/{host}")
        self._status = session.declare_queryable(f"{KEY_PREFIX}/{host}/{STATUS_KEY}",
                                                 self._on_status)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Declare exports new in ``config`` and undeclare those gone (start and reload)."""
        self.config = config
        self.link = DaemonLink(config)
        wanted = set(exported(config, self.host))
        for pair in list(self.exports):
            if pair not in wanted:
                self.exports.pop(pair).close()
        for camera, spec in sorted(wanted - set(self.exports), key=lambda p: p[0]):
            self.exports[(camera, spec)] = Export(self.session, self.host, camera, spec,
                                                  self.link, self.pool, self.wake.set)
        for export in self.exports.values():
            export.link = self.link

    def tick(self) -> None:
        """Reconcile every export (start readers that are wanted, stop the others)."""
        now = time.monotonic()
        for export in list(self.exports.values()):
            export.reconcile(now)

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        live = sum(e.running for e in self.exports.values())
        return f"{len(self.exports)} exports, {live} with remote subscribers"

    def close(self) -> None:
        """Stop every export and undeclare everything (the session stays open)."""
        for export in self.exports.values():
            export.close()
        self.exports.clear()
        for entity in (self._status, self._token):
            entity.undeclare()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        """What ``framebus/<host>/_status`` answers."""
        try:
            cameras = [{k: c.get(k) for k in CAMERA_FIELDS} for c in self.link.cameras()]
            error = ""
        except (FramebusError, OSError) as exc:
            cameras, error = [], str(exc)
        return {"host": self.host, "daemon": "unreachable" if error else "ok", "error": error,
                "cameras": cameras,
                "exports": [{"camera": e.camera, "rendition": e.rendition, "key": e.key,
                             "matching": e.matching, "running": e.running,
                             "puts": e.stats.puts, "error": e.stats.error}
                            for e in self.exports.values()]}

    def _on_status(self, query: Any) -> None:
        """zenoh's callback thread: answered in the pool (each asks the daemon), at most
        MAX_STATUS_PENDING waiting."""
        self._status_gate.submit(query, self._answer_status)

    def _answer_status(self, query: Any) -> None:
        query.reply(f"{KEY_PREFIX}/{self.host}/{STATUS_KEY}", json.dumps(self.status()).encode())


def run_bridge(config_path: Path, host_override: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads the config. Returns the exit code."""
    config = load_config(config_path)
    host = host_name(config.remote, host_override)
    inbox = SignalInbox()
    inbox.install()
    notifier = Notifier()
    init_zenoh_log()
    session = open_session(config.remote, publisher=True)
    metrics = None
    try:
        bridge = Bridge(config, host, session)
        if config.remote.metrics_listen:
            from framebus.remote.metrics import serve_metrics

            metrics = serve_metrics(bridge, config.remote.metrics_listen)
        log.info("bridge running as host %s: %s (%s)", host, bridge.status_line(),
                 ", ".join(data_key(host, c, s.rendition()) for c, s in bridge.exports) or
                 "nothing exported: add remote: entries to cameras")
        notifier.ready(bridge.status_line())
        next_status = 0.0
        while True:
            signals = inbox.wait(TICK_S) if not bridge.wake.is_set() else inbox.wait(0)
            bridge.wake.clear()
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                log.info("bridge stopping on %s", signal.Signals(signals[-1]).name)
                break
            if signal.SIGHUP in signals:
                _reload(bridge, config_path, notifier)
            bridge.tick()
            notifier.watchdog()
            if time.monotonic() >= next_status:
                notifier.status(bridge.status_line())
                next_status = time.monotonic() + 5.0
        notifier.stopping()
        bridge.close()
    finally:
        if metrics is not None:
            metrics.shutdown()
        session.close()
    return 0


def _reload(bridge: Bridge, path: Path, notifier: Notifier) -> None:
    notifier.reloading()
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("bridge reload: keeping the running configuration: %s", exc)
    else:
        bridge.apply(config)
        log.info("bridge reloaded %s: %s", path, bridge.status_line())
    notifier.ready(bridge.status_line())
