"""Camera URLs as FFmpeg needs them (credentials inserted) and as everyone else sees them
(redacted: no userinfo, no credential-like query values)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr

from framebus.config import looks_secret


def redact_url(url: str) -> str:
    """The URL without user information, and with credential-like query values (password=,
    token= ...) replaced by REDACTED: the form every log line and API answer shows."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        parts = parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host)
    if parts.query:
        parts = parts._replace(query="&".join(
            f"{part.split('=', 1)[0]}=REDACTED" if looks_secret(part.split("=", 1)[0]) else part
            for part in parts.query.split("&")))
    return urlunsplit(parts)


def url_with_credentials(url: str, username: str | None, password: SecretStr | None) -> str:
    """The URL to hand to FFmpeg (never to a log)."""
    if username is None:
        return url
    parts = urlsplit(url)
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
