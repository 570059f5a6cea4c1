"""Logging set-up: plain stderr, or journald with structured fields when stderr is the journal.

A redaction filter is the last line of defence for secrets: any ``scheme://user:pass@`` in a
message loses its user information, whatever code produced it.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")


def redact(text: str) -> str:
    """Remove user information from every URL in ``text``."""
    return _USERINFO.sub(r"\1***@", text)


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
