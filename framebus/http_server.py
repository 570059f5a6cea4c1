"""An HTTP/1.1 server on asyncio and h11 in which no client can hold the daemon's resources.

Why not http.server, aiohttp or uvicorn: the control plane must bound every phase of a
request separately (the head, the body, the write, the idle time between requests), refuse a
request from its head alone without reading its body, and decide what happens at the
connection cap. h11 (the sans-IO HTTP/1.1 parser of uvicorn, hypercorn and httpx) parses;
this module only moves bytes and keeps time. It knows nothing of framebus: an ``App`` gets
each request's head, may answer it at once, and otherwise gets the body too.

Invariants:
- One event loop thread. A connection costs one socket and one task, never a thread.
- At most ``limits.max_connections`` connections are open. At the cap, a new connection
  evicts the oldest *idle* one (connected or kept alive, with no complete request head yet);
  if every connection is busy, the new one gets an immediate 503 and is closed. A client
  that sends its request promptly is therefore answered even while idle sockets pile up.
- Every wait has a deadline: a request head within ``head_timeout`` of the connection (or of
  the previous response: the keep-alive idle time), its body within ``body_timeout``, each
  response within ``write_timeout``. Past one, the connection is closed.
- Memory per connection is bounded: a head by ``max_head`` (h11's
  ``max_incomplete_event_size`` while it is incomplete, http_io.read_head once it is whole:
  431 past it either way), a body by ``max_body`` (checked against Content-Length before any
  byte is read, and while reading; chunked bodies are refused with 411).
- A client that resets or vanishes is normal: it ends its connection without a log line.
- A request the app answers from its head alone (``App.head``) has its body left unread and
  its connection closed after the answer: an unread body is never parsed as a next request.
- A streamed answer (``Response.stream``) has no Content-Length: h11 frames it chunked for an
  HTTP/1.1 client and by closing the connection for HTTP/1.0; the connection closes after it
  either way. It is busy, never idle (no eviction), each chunk must be taken within
  ``write_timeout``, little is in flight (the next chunk is asked for once the kernel took the
  last, into a small send buffer), it ends when the client closes, and at ``close()``. How
  many may run and for how long is the app's to bound.
- With TLS (``listen_tcp(..., tls=context)``) a connection counts, idle, from its accept;
  its handshake runs on the loop within ``handshake_timeout`` (http_tls.py says how).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

from framebus.http_app import App, Headers, Limits, Response, Stream, error_response
from framebus.http_io import Peer, Request, peer_of, read_body, read_head, request_of, until_eof
from framebus.http_tls import Held, handshake

log = logging.getLogger("framebus.http")

ACCEPT_BATCH = 16  # connections accepted per event loop turn (see HttpServer._deepen)
LINGER_S = 1.0  # how long a refused body may keep arriving before the connection is closed
CLOSE_WAIT_S = 2.0  # how long close() lets cancelled connections finish (a stream's clean-up)
STREAM_SNDBUF = 65536  # a streamed answer's socket send buffer (the kernel doubles it)
_REASONS = {int(status): status.phrase.encode() for status in HTTPStatus}
# a client that reset or vanished (ConnectionError covers ECONNRESET, EPIPE and the like)
_PEER_GONE = frozenset({errno.ENOTCONN, errno.ESHUTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH})


class _Closed(Exception):
    """The client went away or broke the protocol: nothing more to send."""


@dataclass
class _Connection:
    task: asyncio.Task[None]
    transport: asyncio.WriteTransport  # the TLS one once the handshake is done
    idle: bool = True
    idle_since: float = field(default_factory=time.monotonic)


def _canned(status: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# written straight to the socket at the cap: refusing must cost no task and no parsing
BUSY = _canned("503 Service Unavailable", "busy",
               "every connection is busy with a request: try again")


class HttpServer:
    """Serves one ``App`` on TCP and/or Unix sockets, inside the running event loop."""

    def __init__(self, app: App, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.connections: dict[int, _Connection] = {}
        self.refused = 0  # at the cap with nothing idle to evict
        self.evicted = 0  # idle connections closed to make room
        self.timed_out = 0
        self.tls_failed = 0  # handshakes refused (wrong CA, plain HTTP, ...) or abandoned
        # what new TLS connections get: replaced as a whole (a renewed certificate), never
        # changed in place, so a handshake never sees half a reload
        self.tls: ssl.SSLContext | None = None
        self._ids = itertools.count()
        self._servers: list[asyncio.Server] = []

    async def listen_tcp(self, host: str, port: int, tls: ssl.SSLContext | None = None
                         ) -> tuple[str, int]:
        """Listen on host:port, in HTTPS with ``tls``; returns the bound address (port 0
        picks one)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=self.limits.backlog)
        if tls is None:
            serving = asyncio.start_server(self._accept, sock=sock, backlog=ACCEPT_BATCH)
        else:
            self.tls = tls
            serving = asyncio.get_running_loop().create_server(
                lambda: Held(lambda t: asyncio.ensure_future(self._accept_tls(t))), sock=sock,
                backlog=ACCEPT_BATCH)
        await self._serve_on(sock, serving)
        address = sock.getsockname()
        return str(address[0]), int(address[1])

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket at ``path`` (the caller sets its permissions)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        await self._serve_on(sock, asyncio.start_unix_server(self._accept, sock=sock,
                                                             backlog=ACCEPT_BATCH))

    async def _serve_on(self, sock: socket.socket,
                        starting: Coroutine[None, None, asyncio.Server]) -> None:
        # asyncio uses its backlog both for listen() and as how many connections it accepts
        # in one go, before any of them reaches _accept and the cap: a burst of 1,024 would
        # hold 1,024 fds at once. So it accepts ACCEPT_BATCH at a time, while the kernel
        # queues up to limits.backlog (listen() again only changes the queue's length).
        self._servers.append(await starting)
        sock.listen(self.limits.backlog)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        for server in self._servers:
            server.close()
        tasks = [connection.task for connection in self.connections.values()]
        for task in tasks:
            task.cancel()
        if tasks:  # let them run their clean-up (a stream's aclose, the socket's abort)
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        for server in self._servers:
            await server.wait_closed()

    # -- connections --------------------------------------------------------------------------

    def _make_room(self) -> bool:
        if len(self.connections) < self.limits.max_connections:
            return True
        idle = [(c.idle_since, key) for key, c in self.connections.items() if c.idle]
        if not idle:
            return False
        _, key = min(idle)
        oldest = self.connections.pop(key)  # at once: its task ends later, its slot is free now
        oldest.task.cancel()
        oldest.transport.abort()
        self.evicted += 1
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._make_room():
            self.refused += 1
            writer.transport.write(BUSY)
            writer.transport.close()
            return
        await self._guard(writer.transport, lambda c: self._serve(reader, writer, c,
                                                                  peer_of(writer)))

    async def _accept_tls(self, transport: asyncio.Transport) -> None:
        if not self._make_room():
            self.refused += 1  # no 503: a TLS client could not read it before a handshake
            transport.abort()
            return
        context = self.tls
        assert context is not None

        async def tls(connection: _Connection) -> None:
            try:
                reader, writer = await handshake(transport, context,
                                                 self.limits.handshake_timeout)
            except (ssl.SSLError, ConnectionError):  # wrong CA, plain HTTP, a client gone
                self.tls_failed += 1
                raise _Closed() from None
            except TimeoutError:
                self.tls_failed += 1
                raise
            connection.transport = writer.transport
            await self._serve(reader, writer, connection, peer_of(writer))
        await self._guard(transport, tls)

    async def _guard(self, transport: asyncio.WriteTransport,
                     serve: Callable[[_Connection], Awaitable[None]]) -> None:
        """Count the connection (idle until a request head is in) while ``serve`` runs,
        end it however that ends, and abort its socket."""
        key = next(self._ids)
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(task, transport)
        self.connections[key] = connection
        try:
            await serve(connection)
        except (_Closed, asyncio.CancelledError):
            pass
        except TimeoutError:
            self.timed_out += 1
        except OSError as exc:
            if not _peer_gone(exc):
                log.exception("http: connection failed")
        except Exception:  # a bug must not take the server down, nor leak the socket
            log.exception("http: connection failed")
        finally:
            self.connections.pop(key, None)  # gone already if it was evicted
            connection.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     connection: _Connection, peer: Peer) -> None:
        limits = self.limits
        h11_connection = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        while True:
            connection.idle, connection.idle_since = True, time.monotonic()
            try:
                async with asyncio.timeout(limits.head_timeout):
                    event = await read_head(h11_connection, reader, limits.max_head)
            except h11.RemoteProtocolError as exc:
                await self._send(writer, h11_connection, _protocol_error(exc))
                await self._linger(reader, writer)  # e.g. the rest of a head too large
                return
            if not isinstance(event, h11.Request):  # the client closed between requests
                return
            connection.idle = False
            request = request_of(event, peer)
            response, keep_alive = await self._respond(request, h11_connection, reader)
            if response.stream is not None:
                await self._stream(reader, writer, h11_connection, response,
                                   request.method == "HEAD")
                return
            if not keep_alive:
                response.headers.append(("Connection", "close"))
            await self._send(writer, h11_connection, response, request.method == "HEAD")
            if h11_connection.their_state is h11.SEND_BODY:
                await self._linger(reader, writer)  # a refused body: let the answer arrive
                return
            if not keep_alive or (h11_connection.our_state, h11_connection.their_state) != (
                    h11.DONE, h11.DONE):
                return
            h11_connection.start_next_cycle()

    async def _respond(self, request: Request, connection: h11.Connection,
                       reader: asyncio.StreamReader) -> tuple[Response, bool]:
        """The answer and whether the connection may stay open."""
        refusal = self.app.head(request)
        if refusal is not None:
            return refusal, request.body_length == 0
        length = request.body_length
        if length is None:
            return error_response(411, "length_required", "send a Content-Length (chunked "
                                  "bodies are not accepted)"), False
        if length > self.limits.max_body:
            return error_response(413, "body_too_large",
                                  f"request body over {self.limits.max_body} bytes"), False
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await read_body(connection, reader, self.limits.max_body)
        except h11.RemoteProtocolError as exc:
            return _protocol_error(exc), False
        except TimeoutError:
            self.timed_out += 1
            return error_response(408, "timeout", "request body not received in "
                                  f"{self.limits.body_timeout:g}s"), False
        if body is None:
            return error_response(413, "body_too_large",
                                  f"request body over {self.limits.max_body} bytes"), False
        return await self.app(request, body), True

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Closing with unread bytes in the socket makes the kernel send a RST, which can
        destroy the answer before the client reads it: half-close, then read and discard
        what is still coming for a bounded time and amount, as HTTP/1.1 section 9.6 asks."""
        try:
            if writer.can_write_eof():  # TLS has no half-close: the client closes after us
                writer.write_eof()
        except OSError as exc:  # the client reset already: nothing left to wait for
            if _peer_gone(exc):
                return
            raise
        budget = 4 * self.limits.max_body
        with contextlib.suppress(OSError):  # the timeout, or the client resetting meanwhile
            async with asyncio.timeout(LINGER_S):
                while budget > 0 and (chunk := await reader.read(65536)):
                    budget -= len(chunk)

    async def _send(self, writer: asyncio.StreamWriter, connection: h11.Connection,
                    response: Response, head: bool = False) -> None:
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Closed()
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        reason = _REASONS.get(response.status, b"")
        try:
            data = connection.send(h11.Response(status_code=response.status, headers=headers,
                                                reason=reason))
            if response.body and not head:  # a HEAD answer announces the length, sends none
                data = (data or b"") + (connection.send(h11.Data(data=response.body)) or b"")
            data = (data or b"") + (connection.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:  # e.g. a body on a HEAD answer
            log.debug("http: cannot send: %s", exc)
            raise _Closed() from None
        writer.write(data)
        async with asyncio.timeout(self.limits.write_timeout):
            await writer.drain()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      connection: h11.Connection, response: Response, head: bool) -> None:
        """Send a streamed answer until it ends, the client closes or a write times out."""
        stream = response.stream
        assert stream is not None
        try:
            headers = [*response.headers, ("Connection", "close")]  # no Content-Length
            try:
                data = connection.send(h11.Response(status_code=response.status,
                                                    headers=headers,
                                                    reason=_REASONS.get(response.status, b"")))
            except h11.LocalProtocolError as exc:
                log.debug("http: cannot send: %s", exc)
                raise _Closed() from None
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            writer.transport.set_write_buffer_limits(high=0)  # drain() waits for the kernel
            await self._write(writer, data)
            if head:
                return
            pump = asyncio.ensure_future(self._pump(writer, connection, stream))
            gone = asyncio.ensure_future(until_eof(reader, self.limits.max_body))
            try:
                await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                pump.cancel()
                gone.cancel()
                await asyncio.wait((pump, gone))
            if pump.cancelled():
                raise _Closed()  # the client closed (or sent more than a request)
            pump.result()  # a write timeout or a failure of the stream raises here
        finally:
            await stream.aclose()

    async def _pump(self, writer: asyncio.StreamWriter, connection: h11.Connection,
                    stream: Stream) -> None:
        async for chunk in stream:
            await self._write(writer, connection.send(h11.Data(data=chunk)))
        await self._write(writer, connection.send(h11.EndOfMessage()))

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        writer.write(data or b"")
        async with asyncio.timeout(self.limits.write_timeout):
            await writer.drain()


def _protocol_error(exc: h11.RemoteProtocolError) -> Response:
    status = exc.error_status_hint
    phrase = {413: "head_too_large", 431: "head_too_large"}.get(status, "bad_request")
    what = "request head too large" if phrase == "head_too_large" else "malformed request"
    return error_response(status, phrase, f"{what}: {exc}")


def _peer_gone(exc: OSError) -> bool:
    """A reset or vanished client: normal on the Internet, never worth a traceback (a peer
    that resets during the linger makes shutdown() fail with ENOTCONN, no ConnectionError)."""
    return isinstance(exc, ConnectionError) or exc.errno in _PEER_GONE


__all__ = ["App", "Headers", "HttpServer", "Limits", "Peer", "Request", "Response", "Stream",
           "error_response"]
