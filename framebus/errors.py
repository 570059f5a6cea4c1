"""Exception hierarchy: one base class, one subclass per kind of failure.

Every message names what was wrong (which key, which path, which field) so that a user can act
on it without a traceback. No exception text ever contains a camera password.
"""

from __future__ import annotations


class FramebusError(Exception):
    """Base class of every error framebus raises on purpose."""


class ConfigError(FramebusError):
    """The configuration file is missing, unreadable or invalid (message names the key path).

    ``problems`` lists each problem on its own (the message holds them all, on one line)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class ProtocolError(FramebusError):
    """A framed message violates docs/PROTOCOL.md (bad magic, version, limits, truncation)."""


class FifoError(FramebusError):
    """A subscriber FIFO path is unsafe or unusable (not a FIFO, wrong place, ...)."""
