"""The TLS handshake of http_server's connections, on the event loop and bounded in time.

Why not ``asyncio.start_server(ssl=...)``: asyncio would handshake before the server sees the
connection, so a client that connects and sends nothing would hold a socket for up to 60 s
outside ``max_connections`` and eviction. Here the server accepts plain TCP, counts the
connection (idle, so evictable) at once, and upgrades it with ``loop.start_tls`` under a
deadline. The socket is left unread until then: ``Held`` pauses reading in
``connection_made``, before asyncio's reader is installed, so no ClientHello byte can be read
into a buffer the TLS layer would never see.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

STREAM_LIMIT = 65536  # asyncio's StreamReader default


class Held(asyncio.Protocol):
    """A just-accepted connection, unread, handed to ``on_connection`` as its transport."""

    def __init__(self, on_connection: Callable[[asyncio.Transport], object]) -> None:
        self._on_connection = on_connection
        self.task: object = None  # keeps the connection's task referenced

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Pause reading (asyncio installs its reader after this call), start the task."""
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.task = self._on_connection(transport)


async def handshake(transport: asyncio.Transport, context: ssl.SSLContext, timeout: float
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade a held connection to TLS as its server within ``timeout`` (TimeoutError
    past it; ssl.SSLError or ConnectionError for a client that is refused or leaves) and
    return the stream pair over it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    # asyncio's own timeout a little later than ours: ours ends it, and counts it
    async with asyncio.timeout(timeout):
        tls = await loop.start_tls(transport, protocol, context, server_side=True,
                                   ssl_handshake_timeout=timeout + 1.0)
    assert tls is not None
    protocol.connection_made(tls)  # start_tls does not call it; the reader needs the transport
    return reader, asyncio.StreamWriter(tls, protocol, reader, loop)


__all__ = ["Held", "handshake"]
