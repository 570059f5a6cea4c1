"""Opening a zenoh session from the ``remote:`` config, and the one place zenoh is imported
lazily: a host without the ``remote`` extra gets a clear error naming it, not an ImportError
trace."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from framebus.errors import ConfigError, FramebusError
from framebus.remote.settings import RemoteConfig

# zenoh's log lines as its tracing subscriber writes them (colours off by NO_COLOR, stripped
# anyway): "2026-01-02T03:04:05.678901Z  WARN acc-0 ThreadId(07) zenoh_link_tls::unicast: text"
_ZENOH_LINE = re.compile(
    r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(?:\S+\s+)?ThreadId\(\d+\)\s+(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ZENOH_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
                 "WARN": logging.WARNING, "ERROR": logging.ERROR}
# Without RUST_LOG: warnings, plus the orchestrator's debug lines, of which only a dial that a
# TLS peer refused is kept (as a warning); zenoh logs that only at debug, and it is what
# a host with a wrong certificate needs to see. Every other debug line is dropped here.
ZENOH_LOG_DEFAULT = "warn,zenoh::net::runtime::orchestrator=debug"
_ORCHESTRATOR = "zenoh::net::runtime::orchestrator: "
_TLS_DIAL_REFUSED = re.compile(
    r"Unable to connect to (?:configured peer )?(\S+?)! ((?:received fatal alert|invalid peer "
    r"certificate)\S*: \w+)")
# zenoh 1.10 ends every accept error with "Hint: increase the system open file limit.", a
# refused certificate included; that hint sends an operator the wrong way
_FD_HINT = ". Hint: increase the system open file limit."
_zenoh_log_lock = threading.Lock()
_zenoh_log_started = False


def init_zenoh_log() -> None:
    """zenoh's own warnings (a refused certificate, a denied peer, a lost link) into this
    process's log, as logger ``zenoh``: to stderr, or to journald with a priority.
    ``RUST_LOG`` sets zenoh's level and is passed through as is; without it, warnings and a
    dial refused by TLS (:data:`ZENOH_LOG_DEFAULT`). The bridge, the router and the ``watch``
    and ``dump`` commands call this once; library users keep zenoh quiet unless they ask.

    zenoh-python writes its log to *stdout* (fd 1) and offers no other writer, so fd 1 becomes
    a pipe read by a thread that hands each line to :mod:`logging`; ``sys.stdout`` keeps the
    original stdout. (Before, a router's "invalid peer certificate: UnknownIssuer" went to
    stdout in colour, which journald shows as "[blob data]" and a reader of stderr misses.)"""
    global _zenoh_log_started
    z = import_zenoh()
    with _zenoh_log_lock:
        if _zenoh_log_started:
            return
        _zenoh_log_started = True
        explicit = bool(os.environ.get("RUST_LOG"))
        os.environ.setdefault("NO_COLOR", "1")  # tracing-subscriber's switch for ANSI colours
        read_end, write_end = os.pipe()
        if sys.stdout is not None:
            sys.stdout.flush()
            sys.stdout = open(os.dup(1), "w", encoding=sys.stdout.encoding,  # noqa: SIM115
                              errors=sys.stdout.errors, buffering=1)
        os.dup2(write_end, 1)
        os.close(write_end)
        logger = logging.getLogger("zenoh")
        logger.setLevel(logging.DEBUG)  # RUST_LOG decides what zenoh writes at all
        threading.Thread(target=_forward_zenoh_log, args=(read_end, logger, explicit),
                         name="zenoh-log", daemon=True).start()
        z.init_log_from_env_or(ZENOH_LOG_DEFAULT)


def zenoh_record(line: str, explicit: bool) -> tuple[int, str] | None:
    """``(level, message)`` for one line of zenoh's log, or None to drop it; a line of its
    own (a continuation, a stray print) comes back as a warning."""
    line = _ANSI.sub("", line).rstrip()
    match = _ZENOH_LINE.match(line)
    if not line:
        return None
    if not match:
        return logging.WARNING, line
    level, text = _ZENOH_LEVELS[match[1]], match[2].removesuffix(_FD_HINT)
    if "invalid peer certificate" in text and text != match[2]:
        text += " (refused a connecting peer's TLS certificate)"
    if level == logging.DEBUG and not explicit:
        refused = _TLS_DIAL_REFUSED.search(text) if text.startswith(_ORCHESTRATOR) else None
        if refused is None:
            return None
        return logging.WARNING, (f"{_ORCHESTRATOR}TLS handshake with {refused[1]} failed: "
                                 f"{refused[2]} (retrying)")
    return level, text


def _forward_zenoh_log(fd: int, logger: logging.Logger, explicit: bool) -> None:
    with open(fd, encoding="utf-8", errors="replace") as lines:
        for raw in lines:
            record = zenoh_record(raw, explicit)
            if record is not None:
                logger.log(record[0], "%s", record[1])


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
BRIDGE_RX_MAX = 1 << 20  # queries, declarations and liveliness only


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
    # bounds what any peer can make this process buffer for one message (a 1 GiB query to
    # the bridge, a 1 GiB "frame" to a consumer); the bridge receives no frames at all
    conf.insert_json5("transport/link/rx/max_message_size",
                      str(BRIDGE_RX_MAX if publisher else config.max_message_size))
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
