"""How a camera's trouble is named outside its thread: the reconnect reasons (a metric label
dashboards and alerts depend on), the classification of an exception into one, and a
description safe to log (no URL, so no credentials), and a reason a person can act on (the
camera's state reason in status, the API and STATE messages: no exception names)."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit

import av
import av.error

# Why a camera (re)connected: the ``reason`` label of framebus_camera_reconnects_total. Stable:
# dashboards and alerts name them. A failed attempt counts once, under the first that applies.
RECONNECT_REASONS = (
    "stalled",      # streaming, then no frame for stall_timeout (the watchdog restarted it)
    "hung",         # an open or read did not return in time (the watchdog abandoned it)
    "eof",          # the stream ended
    "auth_failed",  # 401: wrong or missing credentials
    "unsupported",  # opened, but no video stream or no decoder for it
    "too_large",    # the stream declares more than max_pixels
    "hwaccel",      # hwaccel_required, and the hardware cannot decode it
    "not_found",    # 404 (no such RTSP mount / HTTP path) or no such file
    "refused",      # connection refused (nothing listens on the port)
    "timeout",      # no answer within open_timeout, or a socket timeout (ETIMEDOUT)
    "protocol",     # the server answered, but not usably: invalid data, another 4xx/5xx status
    "error",        # anything else (DNS, unreachable network, reset, ...)
)


def failure_reason(exc: BaseException, timed_out: bool = False) -> str:
    """The reconnect reason for an exception of an open or read that is not 401 or one of ours:
    ``timed_out`` says the attempt failed after PyAV's timeout had run out (FFmpeg's RTSP
    demuxer reports an interrupted open as invalid data)."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, av.error.HTTPNotFoundError | FileNotFoundError) or code == errno.ENOENT:
        return "not_found"
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "refused"
    if timed_out or isinstance(exc, TimeoutError | av.error.ExitError) or code == errno.ETIMEDOUT:
        return "timeout"
    if isinstance(exc, av.error.InvalidDataError | av.error.HTTPError | av.error.HTTPClientError
                  | av.error.PatchWelcomeError):
        return "protocol"
    return "error"


_RTSP_STATUS = (  # the answers a camera gives that we name (PyAV class -> what it means)
    (av.error.HTTPForbiddenError, "the camera forbids this stream to this user (RTSP 403)"),
    (av.error.HTTPBadRequestError, "the camera rejected the request as malformed (RTSP 400)"),
    (av.error.HTTPServerError, "the camera reported an internal error (RTSP 5xx)"),
    (av.error.HTTPError, "the camera refused the request (RTSP 4xx)"),
)
_ERRNO_TEXT = {
    errno.ENETUNREACH: "network unreachable: no route to {where}",
    errno.EHOSTUNREACH: "host unreachable: {where}",
    errno.ECONNRESET: "connection reset by {where}",
    errno.EACCES: "permission denied: {where}",
}


def where_of(url: str) -> str:
    """What a reason names as the source: ``host:port`` of a network URL (never its user or
    password, though config refuses those in URLs anyway), else the file path or filter."""
    parts = urlsplit(url)
    if parts.scheme in ("rtsp", "rtsps") and parts.hostname:
        try:
            port = parts.port
        except ValueError:
            port = None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port or (322 if parts.scheme == 'rtsps' else 554)}"
    return url.removeprefix("file:")


def human_reason(exc: BaseException, url: str, timed_out: bool = False) -> str:
    """Why an open or read failed, said for a person ("connection refused by 192.0.2.10:554",
    "the camera has no stream at this path (RTSP 404)"); ``describe_error`` keeps the
    exception for the log. Names host and port at most: never credentials."""
    where = where_of(url)
    network = urlsplit(url).scheme in ("rtsp", "rtsps")
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return ("authentication failed: the camera refused the username and password "
                "(RTSP 401; check username: and the password source)")
    resolved = unresolvable(url, exc)
    if resolved is not None:
        return resolved
    kind = failure_reason(exc, timed_out)
    if kind == "not_found":
        return ("the camera has no stream at this path (RTSP 404)" if network
                else f"no such file: {where}")
    if kind == "refused":
        return (f"connection refused by {where} (nothing listens there: is the camera on "
                "and the port right?)")
    if kind == "timeout":
        return f"no answer from {where} in time (timed out)"
    for cls, text in _RTSP_STATUS:
        if isinstance(exc, cls):
            return text
    if isinstance(exc, av.error.InvalidDataError):
        return f"{where} answered, but not with a stream framebus can read (invalid data)"
    code = getattr(exc, "errno", None)
    if code in _ERRNO_TEXT:
        return _ERRNO_TEXT[code].format(where=where)
    error = str(getattr(exc, "strerror", None) or "")  # errno text, never the filename (URL)
    if not error:
        return "unexpected error (see the log)"
    return f"{error[:1].lower()}{error[1:]} ({where})"


def describe_error(exc: BaseException) -> str:
    """A reason safe to log: FFmpeg's errno text without the filename (which has the URL)."""
    if isinstance(exc, av.error.FFmpegError):
        return f"{type(exc).__name__}: {exc.strerror}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


def unresolvable(url: str, exc: BaseException) -> str | None:
    """FFmpeg reports a host name that does not resolve as a bare "Input/output error": for
    that error, look the name up once and say so plainly ("cannot resolve host 'camra1'");
    None when that is not the cause."""
    if getattr(exc, "errno", None) != errno.EIO:
        return None
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as failure:
        return f"cannot resolve host {host!r}: {failure.strerror}"
    except (OSError, UnicodeError):
        return None
    return None
