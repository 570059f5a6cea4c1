"""Talking to the daemon's HTTP API from a client: where the token comes from, a JSON request
over TCP (http:// or https://) or the Unix socket. Used by framebus.client.request_frame and
the CLI.

https:// URLs are verified against the system's CAs, or only against ``ca_file`` (else
``$FRAMEBUS_CA_FILE``): the daemon's self-signed certificate or the CA that signed it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from framebus.errors import FramebusError

DEFAULT_TOKEN_FILE = "/run/framebus/api.token"


DEFAULT_URL = "http://127.0.0.1:8470"


def default_url() -> str:
    """The control URL the CLI uses when given none: ``$FRAMEBUS_URL``, else the daemon's
    default listen address."""
    return os.environ.get("FRAMEBUS_URL") or DEFAULT_URL


def read_token_file(path: str | os.PathLike[str], named_by: str = "") -> str | None:
    """The token in ``path``; a FramebusError naming the file (and what named it) when it
    cannot be read: a token the user asked for must not be dropped for a bare 401."""
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise FramebusError(f"cannot read the API token file {path}{named_by}: "
                            f"{exc.strerror}") from None


def default_token() -> str | None:
    """The API token a client uses when given none: ``$FRAMEBUS_TOKEN``, else the file
    ``$FRAMEBUS_TOKEN_FILE`` (FramebusError naming it when it cannot be read), else the
    daemon's generated ``/run/framebus/api.token`` if this user may read it (members of the
    framebus group may), else None."""
    token = os.environ.get("FRAMEBUS_TOKEN")
    if token:
        return token
    named = os.environ.get("FRAMEBUS_TOKEN_FILE")
    if named:
        return read_token_file(named, " (named by $FRAMEBUS_TOKEN_FILE)")
    try:  # only a guess: other users may not read it, and then no token is sent
        return Path(DEFAULT_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def unauthorized_hint(token_file: str | os.PathLike[str] | None) -> str:
    """What to add to a 401: which token was refused, or that none was found and where one
    comes from."""
    if token_file is not None:
        source = str(token_file)
    elif os.environ.get("FRAMEBUS_TOKEN"):
        source = "$FRAMEBUS_TOKEN"
    elif os.environ.get("FRAMEBUS_TOKEN_FILE"):
        source = f"$FRAMEBUS_TOKEN_FILE ({os.environ['FRAMEBUS_TOKEN_FILE']})"
    elif os.access(DEFAULT_TOKEN_FILE, os.R_OK):
        source = DEFAULT_TOKEN_FILE
    else:
        return (" (no token was sent: give --token-file, or set $FRAMEBUS_TOKEN or "
                "$FRAMEBUS_TOKEN_FILE; the daemon writes one to <fifo_dir>/api.token)")
    return f" (the daemon refused the token from {source}: is it this daemon's?)"


class DaemonUnreachable(FramebusError):
    """No daemon answers at the URL or socket (the message names it and what to check)."""


UNREACHABLE = (ConnectionError, FileNotFoundError, socket.gaierror)


def unreachable(where: str, exc: OSError) -> DaemonUnreachable:
    """The one-line error for a daemon that does not answer at ``where`` (a URL or socket)."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return DaemonUnreachable(f"cannot reach the framebus daemon at {where}: {reason} (is it "
                             "running? see http.listen / http.unix_socket; --url or "
                             "$FRAMEBUS_URL names another)")


def tls_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client context verifying the daemon's certificate and name: against ``ca_file``
    (else ``$FRAMEBUS_CA_FILE``) alone, or the system's CAs; FramebusError naming a CA file
    that cannot be loaded."""
    ca_file = ca_file or os.environ.get("FRAMEBUS_CA_FILE") or None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise FramebusError(f"cannot load the CA file {ca_file}: {reason}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_failure(where: str, exc: ssl.SSLError) -> FramebusError:
    """The one-line error for an HTTPS connection that failed in TLS, saying what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FramebusError(f"TLS: the daemon at {where} was not verified: "
                             f"{exc.verify_message} (give --ca-file or $FRAMEBUS_CA_FILE: its "
                             "certificate or the CA that signed it; the URL's host must be a "
                             "name or address in the certificate)")
    return FramebusError(f"TLS with the daemon at {where} failed: {exc.reason or exc} (does "
                         "it serve HTTPS? http.tls_cert in its config; else use http://)")


def request(method: str, url: str, unix_socket: str | None, path: str, body: bytes | None,
            token: str | None, timeout: float, headers: dict[str, str] | None = None,
            ca_file: str | os.PathLike[str] | None = None) -> tuple[int, bytes]:
    """One request over TCP (HTTPS for an https:// URL, see ``tls_context``) or a Unix
    socket; returns (status, body bytes). Without ``token``, over TCP, uses
    ``default_token()`` (the socket needs none); an unreachable daemon is a
    DaemonUnreachable naming the URL or socket."""
    sent = dict(headers or {})
    if token is None and unix_socket is None:
        token = default_token()
    if token:
        sent["Authorization"] = f"Bearer {token}"
    connection: http.client.HTTPConnection
    if unix_socket is not None:
        connection, where = UnixHTTPConnection(unix_socket, timeout), f"unix socket {unix_socket}"
    else:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 8470
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                     context=tls_context(ca_file))
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        where = url
    try:
        connection.request(method, path, body, sent)
        response = connection.getresponse()
        return response.status, response.read()
    except ssl.SSLError as exc:
        raise tls_failure(where, exc) from None
    except http.client.RemoteDisconnected as exc:  # what plain HTTP gets from an HTTPS port
        hint = " (if it serves HTTPS, use an https:// URL)" if url.startswith("http:") else ""
        raise DaemonUnreachable(f"the framebus daemon at {where} closed the connection "
                                f"without an answer: {exc}{hint}") from None
    except UNREACHABLE as exc:
        raise unreachable(where, exc) from None
    finally:
        connection.close()


def request_json(method: str, url: str, unix_socket: str | None, path: str,
                 body: dict[str, object] | None, token: str | None, timeout: float,
                 ca_file: str | os.PathLike[str] | None = None
                 ) -> tuple[int, dict[str, object]]:
    """One JSON request (see ``request``); returns (status, decoded JSON body)."""
    status, data = request(method, url, unix_socket, path,
                           None if body is None else json.dumps(body).encode(), token, timeout,
                           {"Content-Type": "application/json"} if body is not None else None,
                           ca_file)
    try:
        decoded = json.loads(data or b"{}")
    except ValueError:
        decoded = {"error": "bad_response", "detail": data[:200].decode("utf-8", "replace")}
    return status, decoded if isinstance(decoded, dict) else {}


def post_json(url: str, unix_socket: str | None, path: str, body: dict[str, object],
              token: str | None, timeout: float, ca_file: str | os.PathLike[str] | None = None
              ) -> tuple[int, dict[str, object]]:
    """POST JSON (see ``request_json``)."""
    return request_json("POST", url, unix_socket, path, body, token, timeout, ca_file)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the daemon's optional control socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock
