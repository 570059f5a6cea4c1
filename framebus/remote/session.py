"""Opening a zenoh session from the ``remote:`` config, and the one place zenoh is imported
lazily: a host without the ``remote`` extra gets a clear error naming it, not an ImportError
trace."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from framebus.errors import ConfigError, FramebusError
from framebus.remote.settings import RemoteConfig


def init_zenoh_log() -> None:
    """zenoh's own warnings (a refused certificate, a denied peer, a lost link) to stderr,
    where journald takes them; ``RUST_LOG`` overrides the level. Long-running processes
    (bridge, router) call this once; library users keep zenoh quiet unless they ask."""
    import_zenoh().init_log_from_env_or("warn")


def import_zenoh() -> Any:
    """The zenoh module, or a FramebusError saying how to install it."""
    try:
        import zenoh
    except ImportError:
        raise FramebusError("framebus across hosts needs Eclipse Zenoh: pip install "
                            "'framebus[remote]' (eclipse-zenoh)") from None
    return zenoh


# How long put() waits for room for the next fragment of a frame already being sent before
# zenoh drops the rest (with CongestionControl.DROP). zenoh's 50 ms drops every frame that
# takes longer than that to send (1.38 MB of 720p nv12 takes 110 ms at 100 Mbit/s): nothing
# arrived at all. A frame is started only when the queue has room within 1 ms (zenoh's
# wait_before_drop), so newest-wins holds; this only lets a started frame finish.
FRAGMENT_WAIT_US = 2_000_000


def zenoh_config(config: RemoteConfig, *, connect: list[str] | None = None,
                 listen: list[str] | None = None, publisher: bool = False) -> Any:
    """zenoh's config: the file ``remote.zenoh_config`` if given (TLS, routers, ACL), with
    ``listen``/``connect`` endpoints from framebus's config or the command line on top.
    Without a file, multicast scouting is off: peers are named, never guessed on a LAN."""
    z = import_zenoh()
    if config.zenoh_config is not None:
        path = Path(config.zenoh_config)
        try:
            conf = z.Config.from_file(str(path))
        except Exception as exc:  # zenoh raises its own ZError with the parser's message
            raise ConfigError(f"remote.zenoh_config: {path}: {exc}") from None
    else:
        conf = z.Config()
        conf.insert_json5("scouting/multicast/enabled", "false")
        # zenoh's shm would carry payloads through /dev/shm between any two processes that
        # share it, past the network and its limits (network namespaces included)
        conf.insert_json5("transport/shared_memory/enabled", "false")
    apply_credentials(conf)
    if publisher:
        conf.insert_json5("transport/link/tx/queue/congestion_control/drop/"
                          "max_wait_before_drop_fragments", str(FRAGMENT_WAIT_US))
        if config.send_buffer:
            # frames waiting in a socket buffer are frames growing old: the kernel's autotuned
            # buffer (up to 4 MB) held 3 frames of 720p, 350-560 ms, over 100 Mbit/s
            for link in ("tcp", "tls"):
                conf.insert_json5(f"transport/link/{link}/so_sndbuf", str(config.send_buffer))
    listen = listen if listen is not None else config.listen
    connect = connect if connect is not None else config.connect
    if listen:
        conf.insert_json5("listen/endpoints", json.dumps(listen))
    if connect:
        conf.insert_json5("connect/endpoints", json.dumps(connect))
    return conf


TLS_CREDENTIALS = {"root_ca_certificate": "ca.pem",
                   "listen_certificate": "host.pem", "connect_certificate": "host.pem",
                   "listen_private_key": "host.key", "connect_private_key": "host.key"}


def apply_credentials(conf: Any) -> None:
    """Under systemd, ``LoadCredential=ca.pem/host.pem/host.key`` hands the TLS files over in
    ``$CREDENTIALS_DIRECTORY`` (readable by this service only): they replace the paths of the
    zenoh config file, so the key never has to be readable by the service's user on disk."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return
    files = {key: Path(directory) / name for key, name in TLS_CREDENTIALS.items()}
    if all(path.is_file() for path in files.values()):
        for key, path in files.items():
            conf.insert_json5(f"transport/link/tls/{key}", json.dumps(str(path)))


def open_session(config: RemoteConfig, *, connect: list[str] | None = None,
                 listen: list[str] | None = None, publisher: bool = False) -> Any:
    """An open zenoh session; FramebusError with zenoh's reason when it cannot open (a port
    in use, a certificate that cannot be read)."""
    z = import_zenoh()
    conf = zenoh_config(config, connect=connect, listen=listen, publisher=publisher)
    try:
        return z.open(conf)
    except Exception as exc:
        raise FramebusError(f"cannot open a zenoh session: {exc}") from None
