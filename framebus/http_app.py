"""What an ``App`` served by http_server sees: the limits, answers and the app interface."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from framebus.http_io import Request

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Limits:
    """How much any one client may take."""

    max_connections: int = 512
    handshake_timeout: float = 10.0  # TLS only
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    write_timeout: float = 30.0
    max_head: int = 16384
    max_body: int = 65536
    backlog: int = 1024


class Stream(Protocol):
    """A body sent as it is made: chunks from ``async for``; ``aclose()`` is awaited once the
    answer ends, however it ends (complete, client gone, write timeout, server closing), even
    if iteration never started."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def aclose(self) -> Awaitable[None]: ...


@dataclass
class Response:
    """An answer: status, headers (Content-Length is added) and the whole body; or, with
    ``stream``, a body of unknown length sent chunk by chunk (see the module's invariants)."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    stream: Stream | None = None


def error_response(status: int, error: str, detail: str, headers: Headers | None = None
                   ) -> Response:
    """A JSON error body ``{"error": ..., "detail": ...}``, the API's one error shape."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Response(status, [("Content-Type", "application/json"), *(headers or [])], body)


class App:
    """What the server serves. Subclasses override both methods."""

    def head(self, request: Request) -> Response | None:
        """Called once the head is in, before any body byte is read: an answer refuses the
        request (its body is never read), None lets it go on to ``__call__``."""
        return None

    async def __call__(self, request: Request, body: bytes) -> Response:
        """Answer a request whose head ``head`` accepted."""
        raise NotImplementedError


__all__ = ["App", "Headers", "Limits", "Response", "Stream", "error_response"]
