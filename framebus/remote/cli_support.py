"""What the consumer commands (``watch``, ``dump``, ``snapshot``, ``status --fleet``) share to
reach cameras on other hosts: ``zenoh:`` targets and the options naming the zenoh network."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from framebus.errors import ConfigError
from framebus.remote.settings import NAME, RemoteConfig

PREFIX = "zenoh:"


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """``--connect`` and ``--zenoh-config``: how this command joins the zenoh network."""
    group = parser.add_argument_group("across hosts (zenoh: targets, --fleet)")
    group.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                       help="a zenoh endpoint to dial, e.g. tcp/10.0.0.5:7447 (repeatable)")
    group.add_argument("--zenoh-config", type=Path, metavar="FILE",
                       help="a zenoh config file (TLS, router), e.g. "
                       "/etc/framebus/zenoh/peer.json5")


def remote_config(args: argparse.Namespace) -> RemoteConfig:
    """The :class:`RemoteConfig` the command line describes; ConfigError naming the option."""
    try:
        return RemoteConfig(zenoh_config=args.zenoh_config, connect=args.connect)
    except ValidationError as exc:  # its last line is a link to pydantic's docs: take the msg
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"--connect: {reason}") from None


def is_remote(target: str | Path) -> bool:
    """True for ``zenoh:...`` targets (cameras on other hosts), False for FIFO paths."""
    return str(target).startswith(PREFIX)


def parse_target(target: str | Path) -> tuple[str | None, str, str | None]:
    """``(host, camera, rendition)`` of ``zenoh:CAMERA``, ``zenoh:HOST/CAMERA`` or
    ``zenoh:HOST/CAMERA/RENDITION`` (HOST may be ``*``: any host)."""
    parts = str(target).removeprefix(PREFIX).split("/")
    host: str | None = None
    rendition: str | None = None
    if len(parts) == 1:
        camera = parts[0]
    elif len(parts) == 2:
        host, camera = parts
    elif len(parts) == 3:
        host, camera, rendition = parts
    else:
        camera = ""
    if (not NAME.fullmatch(camera)
            or (host is not None and host != "*" and not NAME.fullmatch(host))
            or (rendition is not None and not NAME.fullmatch(rendition))):
        raise ConfigError(f"{str(target)[:100]!r}: expected zenoh:CAMERA, zenoh:HOST/CAMERA "
                          "or zenoh:HOST/CAMERA/RENDITION (HOST may be *)")
    return (None if host == "*" else host), camera, rendition
