"""Camera URLs: where credentials hide in them, how they are shown (redacted), and the form
FFmpeg gets (credentials inserted from the config, never from the URL).

Cameras take credentials in more places than the userinfo. :func:`find_credentials` is the one
place that knows them; the config refuses a URL it finds any in, and :func:`redact_url`, the
form every log line, API answer and error shows, replaces what it finds. The formats it knows
(tests/test_url_credentials.py holds one URL of each):

* userinfo: ``rtsp://admin:pass@host/...`` (every brand);
* query: Reolink ``?user=admin&password=``, Foscam ``?usr=admin&pwd=``, VStarcam
  ``?loginuse=admin&loginpas=``, Hikvision ``?auth=<base64 user:pass>``, signed and token URLs
  (``?token=``, ``?access_token=``, ``?api_key=``, ``?X-Amz-Signature=``, ``?sig=``);
* path: XMEye/Xiongmai ``/user=admin&password=x&channel=1&stream=0.sdp`` and its underscore
  form ``/user=admin_password=x_channel=1_stream=0.sdp``, ``;key=value`` path parameters.

Keys are percent-decoded and compared without case or ``-_.~+`` (``pass%77ord``,
``Api-Key``); pairs are separated by ``&``, ``;``, ``?``, ``,`` or ``_`` (XMEye), also
percent-encoded. A key names a credential when it is a password, token, secret, signature or
key word (:func:`is_credential_key`). A user name alone (``user=admin``) is not a secret: it is
accepted and shown. An empty value (XMEye's factory ``password=``) carries nothing to hide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import SecretStr

REDACTED = "REDACTED"

# normalised keys (see _normalise) that carry a credential in the URLs cameras really use
_CREDENTIAL_KEYS = frozenset({
    "pw", "psw", "pswd", "pwd", "pass", "passwd", "password", "passwort", "passphrase",
    "loginpas",  # VStarcam and other P2P cameras: loginuse=admin&loginpas=...
    "auth", "xauth", "basicauth", "authbasic", "authcode", "authorization",  # Hikvision ?auth=
    "key", "apikey", "secret", "sig", "sign", "signature", "token", "cred", "creds",
    "credential", "credentials",
})
# ... and words that make any key a credential wherever they appear in it
_CREDENTIAL_WORDS = ("pass", "pwd", "token", "secret", "signature", "credential")
# ... and keys that end like these ("x-api-key", "AccessKey"; not "monkey")
_CREDENTIAL_ENDINGS = ("apikey", "accesskey", "authkey", "streamkey", "privatekey", "sessionkey")
_SEPARATORS = r"(?:(?<=[&;_?,])|(?<=%26)|(?<=%3[bB])|(?<=%5[fF])|(?<=%3[fF])|(?<=%2[cC]))"
# a key: unreserved characters or percent-escapes that are not a separator or '='
_KEY = r"(?:[A-Za-z0-9.~+\-]|%(?!26|3[bBdDfF]|5[fF]|2[cC])[0-9A-Fa-f]{2})+"
_PAIR = re.compile(rf"(?:^|{_SEPARATORS})(?P<key>{_KEY})(?:=|%3[dD])")
_ESCAPED_SEPARATOR = re.compile(r"%(?:26|3[bBfF]|5[fF]|2[cC])$")


@dataclass(frozen=True)
class Credential:
    """A credential in a URL: where it is, under which key, and its value's span in the URL
    (for userinfo the span covers ``user:password@``)."""

    where: str  # "userinfo", "path", "query" or "fragment"
    key: str  # as decoded from the URL ("password" for pass%77ord), "" for userinfo
    start: int
    end: int


def _normalise(key: str) -> str:
    return re.sub(r"[-_.~+ ]", "", unquote(key, errors="replace").lower())


def is_credential_key(key: str) -> bool:
    """True when a URL key (raw or decoded) names a password, token, secret or signature:
    ``password``, ``pwd``, ``pw``, ``loginpas``, ``auth``, ``api_key``, ``X-Amz-Signature`` ...
    User names (``user``, ``username``, ``usr``, ``loginuse``) are not secrets."""
    word = _normalise(key)
    return (word in _CREDENTIAL_KEYS or word.endswith(_CREDENTIAL_ENDINGS)
            or any(part in word for part in _CREDENTIAL_WORDS))


def _key_run(text: str, end: int) -> str:
    """The key that ends at ``end`` with its underscores: "api_key", XMEye's "admin_password"."""
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_.~+-%"):
        start -= 1
    return text[start:end]


def _pairs_in(text: str, offset: int, where: str) -> list[Credential]:
    """The credentials among the key=value pairs of one path segment, query or fragment."""
    matches = list(_PAIR.finditer(text))
    found = []
    for index, match in enumerate(matches):
        short, whole = match["key"], _key_run(text, match.end("key"))
        if not (is_credential_key(short) or is_credential_key(whole)):
            continue
        end = len(text)
        if index + 1 < len(matches):  # the value ends at the separator before the next key
            after = matches[index + 1].start("key")
            end = after - (3 if _ESCAPED_SEPARATOR.search(text, 0, after) else 1)
        if end <= match.end():
            continue  # an empty value: nothing to hide (XMEye's factory "password=")
        shown = unquote(short if is_credential_key(short) else whole, errors="replace")
        found.append(Credential(where, shown.encode("unicode_escape").decode("ascii"),
                                offset + match.end(), offset + end))
    return found


def find_credentials(url: str) -> list[Credential]:
    """Every credential in a network URL (``scheme://...``), in order; [] for file paths and
    lavfi graphs, which go to no server."""
    scheme_end = url.find("://")
    if scheme_end <= 0 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", url[:scheme_end]):
        return []
    start = scheme_end + 3
    found = []
    # userinfo ends at the last '@' anywhere, not only in the authority: a password with an
    # unencoded '/', '?' or '#' ("admin:pa/ss@host") must not be shown as a path either
    at = url.rfind("@", start)
    if at >= 0:
        found.append(Credential("userinfo", "", start, at + 1))
        start = at + 1
    stops = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
    authority_end = min(stops, default=len(url))
    hash_at = url.find("#", authority_end)
    query_end = hash_at if hash_at >= 0 else len(url)
    question = url.find("?", authority_end, query_end)
    path_end = question if question >= 0 else query_end
    segment_start = authority_end
    for segment in url[authority_end:path_end].split("/"):
        found += _pairs_in(segment, segment_start, "path")
        segment_start += len(segment) + 1
    if question >= 0:
        found += _pairs_in(url[question + 1:query_end], question + 1, "query")
    if hash_at >= 0:
        found += _pairs_in(url[hash_at + 1:], hash_at + 1, "fragment")
    return found


def redact_url(url: str, userinfo: str = "") -> str:
    """The URL as every log line and API answer shows it: the userinfo replaced by
    ``userinfo`` (gone by default), and the value of every other credential
    :func:`find_credentials` finds replaced by REDACTED."""
    for credential in reversed(find_credentials(url)):
        replacement = userinfo if credential.where == "userinfo" else REDACTED
        url = url[:credential.start] + replacement + url[credential.end:]
    return url


def url_with_credentials(url: str, username: str | None, password: SecretStr | None) -> str:
    """The URL to hand to FFmpeg (never to a log)."""
    if username is None:
        return url
    parts = urlsplit(url)
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
