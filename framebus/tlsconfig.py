"""HTTPS for the control plane: the ``http.tls_*`` settings and the server's SSLContext.

The certificate and key are files (``tls_cert``/``tls_key``) or systemd credentials
(``tls_cert_credential``/``tls_key_credential``, names in ``$CREDENTIALS_DIRECTORY``, as
``LoadCredential=`` makes them), like the camera passwords. The key is handed to OpenSSL as a
path and never read by Python, so no error message or log line can carry its contents.

``http.listen`` beyond loopback without TLS is refused at load time unless
``allow_plain_http: true`` says that plain HTTP is meant (a trusted network, or a TLS proxy
in front): the token and the session cookie would otherwise cross the network readable.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from framebus.errors import ConfigError

# a credential is a file name in $CREDENTIALS_DIRECTORY, never a path out of it
_CREDENTIAL = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$"


class HttpTls(BaseModel):
    """The TLS part of ``http:`` (HttpConfig extends it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    tls_cert: Path | None = None  # PEM: the certificate, then any intermediates
    tls_key: Path | None = None  # PEM, unencrypted (the daemon starts unattended)
    tls_cert_credential: str | None = Field(None, pattern=_CREDENTIAL)
    tls_key_credential: str | None = Field(None, pattern=_CREDENTIAL)
    # plain HTTP beyond loopback on purpose: a trusted network, or a TLS proxy in front
    allow_plain_http: bool = False

    @model_validator(mode="after")
    def _cert_with_key(self) -> HttpTls:
        for what in ("cert", "key"):
            if getattr(self, f"tls_{what}") and getattr(self, f"tls_{what}_credential"):
                raise ValueError(f"give tls_{what} or tls_{what}_credential, not both")
        if self.has_cert != self.has_key:
            raise ValueError("give both a certificate (tls_cert or tls_cert_credential) and "
                             "its key (tls_key or tls_key_credential), or neither")
        return self

    @property
    def has_cert(self) -> bool:
        """A certificate is configured (a file or a credential)."""
        return self.tls_cert is not None or self.tls_cert_credential is not None

    @property
    def has_key(self) -> bool:
        """A key is configured (a file or a credential)."""
        return self.tls_key is not None or self.tls_key_credential is not None

    @property
    def tls(self) -> bool:
        """The TCP listener speaks HTTPS."""
        return self.has_cert


def is_loopback(host: str) -> bool:
    """``host`` (as in ``http.listen``) reaches this machine only: 127.0.0.0/8, ::1 or
    ``localhost``. A name may resolve to anything, and 0.0.0.0/:: mean every address."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(tls: HttpTls, listen: str, tcp: bool) -> None:
    """ValueError for a TCP listener beyond loopback in plain HTTP that nobody asked for."""
    host = listen.rpartition(":")[0]
    if tcp and not tls.tls and not tls.allow_plain_http and not is_loopback(host):
        raise ValueError(
            f"listen {listen} is reachable from other hosts, and plain HTTP would show them "
            "the API token and session cookies: give tls_cert and tls_key (or "
            "tls_cert_credential and tls_key_credential) to serve HTTPS, or set "
            "allow_plain_http: true if plain HTTP is meant (a trusted network, a TLS proxy in "
            "front; README: Remote access)")


def tls_files(tls: HttpTls) -> tuple[Path, Path] | None:
    """The certificate and key paths, credentials resolved; None without TLS. ConfigError
    names the key when a credential has no $CREDENTIALS_DIRECTORY."""
    if not tls.tls:
        return None
    paths = []
    for what in ("cert", "key"):
        path: Path | None = getattr(tls, f"tls_{what}")
        credential: str | None = getattr(tls, f"tls_{what}_credential")
        if credential is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(f"http.tls_{what}_credential: $CREDENTIALS_DIRECTORY is not "
                                  "set (use LoadCredential= in the unit)")
            path = Path(directory) / credential
        assert path is not None
        paths.append(path)
    return paths[0], paths[1]


class _Encrypted(Exception):
    pass


def _no_passphrase() -> str:
    # without a callback OpenSSL would prompt on the terminal: a daemon would hang at start
    raise _Encrypted()


def server_context(tls: HttpTls) -> ssl.SSLContext | None:
    """A server SSLContext (TLS 1.2 or later, HTTP/1.1 by ALPN) with the configured
    certificate and key, or None without TLS. ConfigError names the key and the reason (an
    OpenSSL reason code or errno text, never a file's contents)."""
    files = tls_files(tls)
    if files is None:
        return None
    cert, key = files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for what, path in (("cert", cert), ("key", key)):
        try:  # readable at all: then a failure below is the contents', named by reason
            path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"http.tls_{what}: {path}: cannot read: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"http.tls_key: {key}: the key is encrypted; give it unencrypted "
                          "(readable only by the daemon, e.g. by LoadCredential=)") from None
    except ssl.SSLError as exc:
        reason = exc.reason or "not a PEM certificate and matching key"
        raise ConfigError(f"http.tls_cert/tls_key: {cert}, {key}: cannot load: {reason} (a "
                          "PEM certificate and its unencrypted PEM key)") from None
    return context


__all__ = ["HttpTls", "check_exposure", "is_loopback", "server_context", "tls_files"]
