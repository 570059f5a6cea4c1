"""The ``remote:`` parts of the YAML configuration (schema only: no zenoh import here, so the
daemon and ``check-config`` validate them on hosts without the ``remote`` extra).

Top level::

    remote:
      host: camhost1                 # this host's name in keys (default: the hostname)
      zenoh_config: /etc/framebus/zenoh/peer.json5   # zenoh's own config file (TLS, router)
      listen: [tcp/10.0.0.5:7447]    # endpoints, when there is no zenoh_config file
      connect: [tls/router.site:7447]
      metrics_listen: 127.0.0.1:8471 # the bridge's /metrics

Per camera, what the bridge exports (nothing unless listed)::

    cameras:
      lobby:
        url: rtsp://...
        remote:
          - {format: nv12, width: 1280, height: 720, max_fps: 25}
          - {name: preview, format: jpeg, width: 640, quality: 80, max_fps: 5}
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from framebus.errors import ConfigError

KEY_PREFIX = "framebus"
# host, camera and rendition names are single key chunks: no '/', no zenoh wildcard or
# verbatim characters ('*', '$', '@', '#', '?'), never empty; the same rule as camera names
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENDPOINT = re.compile(r"^(tcp|tls|udp|quic|unixsock-stream)/\S+$")
RawFormat = Literal["bgr24", "rgb24", "gray", "yuv420p", "nv12", "jpeg"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class RemoteExport(_Strict):
    """One rendition of a camera published to zenoh by the bridge."""

    name: str | None = Field(None, pattern=NAME.pattern)  # default: derived from the rest
    format: RawFormat = "nv12"
    width: int | None = Field(None, ge=1, le=8192)  # one side given keeps the aspect ratio
    height: int | None = Field(None, ge=1, le=8192)
    max_fps: float | None = Field(None, gt=0, le=1000)
    quality: int = Field(85, ge=1, le=100)  # jpeg only

    def rendition(self) -> str:
        """The key chunk naming this export: ``name``, else e.g. ``nv12-1280x720``,
        ``jpeg-w640``, ``bgr24``."""
        if self.name:
            return self.name
        if self.width and self.height:
            return f"{self.format}-{self.width}x{self.height}"
        if self.width or self.height:
            return f"{self.format}-{'w' if self.width else 'h'}{self.width or self.height}"
        return self.format


class RemoteConfig(_Strict):
    """How this host joins the zenoh network (bridge, remote sources, ``status --fleet``)."""

    host: str | None = Field(None, pattern=NAME.pattern)
    zenoh_config: Path | None = None
    listen: list[str] = Field(default_factory=list)
    connect: list[str] = Field(default_factory=list)
    metrics_listen: str | None = "127.0.0.1:8471"
    # a remote frame older than this (by the header's capture clock) is dropped on arrival
    max_age: float = Field(1.0, gt=0, le=3600)
    # the bridge's socket send buffer per link, bytes (0: the kernel's autotuning). Small
    # keeps frames young on a slow link; a fast long link needs its bandwidth-delay product
    send_buffer: int = Field(262144, ge=0, le=1 << 30)
    # the largest zenoh message this host takes in, bytes: a frame above it is not delivered,
    # and a peer cannot make this process hold more (zenoh's own default is 1 GiB). The
    # bridge takes in only queries and declarations: 1 MiB there, whatever this says
    max_message_size: int = Field(64 << 20, ge=1 << 20, le=1 << 30)

    @field_validator("listen", "connect")
    @classmethod
    def _endpoints(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            if not _ENDPOINT.fullmatch(endpoint):  # fullmatch: '$' lets a trailing newline by
                raise ValueError(f"expected zenoh endpoints like 'tcp/10.0.0.5:7447' or "
                                 f"'tls/router:7447', got {endpoint!r}")
        return endpoints


def check_exports(exports: list[RemoteExport]) -> list[RemoteExport]:
    """Two exports of one camera may not share a rendition name (they would share a key)."""
    seen: set[str] = set()
    for export in exports:
        name = export.rendition()
        if name in seen:
            raise ValueError(f"two exports named {name!r}: give one a name:")
        seen.add(name)
    return exports


ZENOH_URL = re.compile(r"^zenoh:(?P<host>\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/"
                       r"(?P<camera>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/"
                       r"(?P<rendition>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")


def check_zenoh_url(url: str) -> str:
    """``zenoh:<host or *>/<camera>/<rendition>``: a camera exported by a framebus bridge."""
    if not ZENOH_URL.fullmatch(url):
        raise ValueError("expected zenoh:<host or *>/<camera>/<rendition>, e.g. "
                         "zenoh:*/lobby/nv12-1280x720")
    return url


def host_name(config: RemoteConfig, override: str | None = None) -> str:
    """This host's name in keys: ``--host``, ``remote.host``, else the short hostname."""
    name = override or config.host or socket.gethostname().split(".")[0]
    if not NAME.fullmatch(name):
        raise ConfigError(f"remote.host: {name!r} is not usable in a key (1-64 of A-Z a-z 0-9 "
                          "_ . - starting with a letter or digit): set remote.host or --host")
    return name
