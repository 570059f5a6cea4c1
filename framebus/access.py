"""Who may use the control plane: the bearer token, the Host and Origin checks.

The rules (README, "Security"):
- Over TCP every endpoint but the open ones (/metrics, /healthz) needs the bearer token.
  With no token configured, the daemon generates one at start into ``<fifo_dir>/api.token``
  (mode 0640, the directory's group): local users in that group can read it, nobody else,
  and no web page can.
- Over the Unix socket the socket's permissions (owner and group) are the authentication;
  the token is not needed, and SO_PEERCRED tells which user is calling.
- Host must be an IP literal, ``localhost`` (or a ``*.localhost`` name) or one of
  ``http.allowed_hosts``: a DNS-rebinding page reaches us under its own name and is refused.
- A request carrying an Origin (browsers send one on every cross-origin request and every
  POST) must be same-origin (the Origin's host and port are the Host's) or name a host in
  ``http.allowed_hosts``; ``Sec-Fetch-Site: cross-site`` is refused.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from framebus.errors import ConfigError

log = logging.getLogger("framebus.access")

TOKEN_FILE_NAME = "api.token"


def generate_token_file(directory: Path) -> tuple[SecretStr, Path]:
    """A fresh random token written to ``directory/api.token`` (0640, the directory's
    group), replacing any earlier one atomically."""
    token = secrets.token_urlsafe(32)
    path = directory / TOKEN_FILE_NAME
    temporary = directory / f".{TOKEN_FILE_NAME}.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{token}\n".encode())
            group = os.stat(directory).st_gid
            with contextlib.suppress(PermissionError):  # not in that group: keep ours
                os.fchown(fd, -1, group)
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write the generated API token: {exc.strerror}"
                          ) from None
    return SecretStr(token), path


def token_matches(header: str | None, token: SecretStr) -> bool:
    """True if an Authorization header carries ``token`` (compared in constant time)."""
    expected = f"Bearer {token.get_secret_value()}".encode()
    return hmac.compare_digest((header or "").encode("latin-1", "replace"), expected)


def host_name(value: str) -> str | None:
    """The host part of a Host header value ("h", "h:port", "[v6]:port"), lower case."""
    try:
        host = urlsplit(f"//{value}").hostname
    except ValueError:
        return None
    return host.lower() if host else None


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """IP literals, localhost names and the configured names are ours."""
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost") or host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:
        return None


def origin_allowed(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """An Origin header ("scheme://host[:port]") of the page the daemon itself served (the
    same host and port as the request's Host), or of a host in ``allowed``."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https"):
        return False  # "null" (sandboxed frames, file: pages) included
    default = 443 if parts.scheme == "https" else 80
    ours = _host_port(parts.netloc, default)
    # a Host without a port means the scheme's default (e.g. https behind a TLS proxy)
    if ours is not None and ours == _host_port(host, default):
        return True
    return ours is not None and ours[0] in allowed
