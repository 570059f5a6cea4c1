"""How a camera's trouble is named outside its thread: the reconnect reasons (a metric label
dashboards and alerts depend on), the classification of an exception into one, and a
description safe to log (no URL, so no credentials)."""

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
