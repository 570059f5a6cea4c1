"""``framebus router``: a zenoh router for a site, under systemd, without installing zenohd.

Peers (bridges, remote consumers, daemons with ``zenoh:`` sources) dial it, and it tells them
of each other by gossip, so frames then flow peer to peer. Everything else (TLS/mTLS, the ACL
by certificate name, multicast off) is in its zenoh config file; see
config/zenoh/router.json5. ``zenohd -c`` with the same file is the equivalent.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from framebus.errors import ConfigError, FramebusError
from framebus.remote.session import apply_credentials, import_zenoh, init_zenoh_log
from framebus.sdnotify import Notifier
from framebus.signals import SignalInbox

log = logging.getLogger("framebus.router")


def run_router(config_path: Path | None, listen: list[str]) -> int:
    """Run a router session until SIGTERM/SIGINT (SIGHUP is ignored: zenoh cannot reload a
    TLS config in place; restart the unit). Returns the exit code."""
    z = import_zenoh()
    init_zenoh_log()
    try:
        conf = z.Config.from_file(str(config_path)) if config_path else z.Config()
    except Exception as exc:
        raise ConfigError(f"--zenoh-config: {config_path}: {exc}") from None
    try:
        conf.insert_json5("mode", '"router"')
        if config_path is None:
            conf.insert_json5("scouting/multicast/enabled", "false")
            conf.insert_json5("transport/shared_memory/enabled", "false")
        apply_credentials(conf)
        if listen:
            conf.insert_json5("listen/endpoints", json.dumps(listen))
    except Exception as exc:
        raise ConfigError(f"--listen: {exc}") from None
    inbox = SignalInbox()
    inbox.install()
    notifier = Notifier()
    try:
        session = z.open(conf)
    except Exception as exc:
        raise FramebusError(f"cannot start the zenoh router: {exc}") from None
    try:
        zid = str(session.zid())
        log.info("zenoh router %s listening", zid)
        notifier.ready(f"zenoh router {zid}")
        while True:
            signals = inbox.wait(1.0)
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                break
            notifier.watchdog()
        notifier.stopping()
    finally:
        session.close()
    return 0
