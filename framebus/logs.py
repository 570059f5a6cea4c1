"""Logging set-up: plain stderr, or journald with structured fields when stderr is the journal.

A redaction filter is the last line of defence for secrets: any URL in a message loses its
user information (``scheme://***@``) and the values of its other credentials (path and query,
``password=REDACTED``: :func:`framebus.urls.find_credentials`), whatever code produced it.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from framebus.urls import redact_url

# a URL in free text: up to white space or a quote; closing brackets and punctuation at its
# end are the sentence's ("[rtsp://h/x]", "rtsp://h/x.")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_TRAILING = ")]},.;:"


def _redact_match(match: re.Match[str]) -> str:
    url = match[0]
    kept = url.rstrip(_TRAILING)
    return redact_url(kept, userinfo="***@") + url[len(kept):]


def redact(text: str) -> str:
    """Remove user information and credential values from every URL in ``text``."""
    return _URL.sub(_redact_match, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with URLs redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal (JOURNAL_STREAM matches fd 2)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def setup_logging(level: str = "INFO") -> None:
    """Route framebus's logs to journald (structured) or stderr (plain)."""
    handler: logging.Handler
    if stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="framebus")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
