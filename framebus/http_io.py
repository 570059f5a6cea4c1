"""The reading side of http_server: who is calling, and request heads and bodies read through
h11 within their limits.

Why a head is measured here: h11's ``max_incomplete_event_size`` only bounds a head that is
still incomplete in its buffer. The server reads up to ``READ_SIZE`` bytes at a time, so a
17-63 KiB head arriving in one piece was parsed whole and served, although the API answers
431 above ``Limits.max_head``. ``read_head`` counts the bytes h11 consumed to produce the
``Request`` event (the leading blank lines h11 skips included) and refuses it past the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

import h11

READ_SIZE = 65536  # bytes asked of the socket at a time


@dataclass(frozen=True)
class Peer:
    """Who is on the other end: ``transport`` is "tcp" or "unix"; ``uid``/``pid`` come from
    SO_PEERCRED on a Unix socket (None over TCP)."""

    transport: str
    address: str
    uid: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Request:
    """A request head; header names are lower case."""

    method: str
    target: str
    headers: dict[str, str]
    peer: Peer
    http_version: str = "1.1"

    @property
    def body_length(self) -> int | None:
        """The declared Content-Length, 0 for none, None for a chunked body."""
        if "transfer-encoding" in self.headers:
            return None
        return int(self.headers.get("content-length", "0"))


def _buffered(connection: h11.Connection) -> int:
    return len(connection.trailing_data[0])  # h11's unparsed bytes (a copy: small, see below)


async def next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> object:
    """h11's next event, reading from the socket while it needs data; ConnectionClosed when
    the client closes between requests."""
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_SIZE)
        if not data and connection.their_state is h11.IDLE:
            return h11.ConnectionClosed()
        connection.receive_data(data)


async def read_head(connection: h11.Connection, reader: asyncio.StreamReader,
                    max_head: int) -> object:
    """Like ``next_event`` for a request head, which must take at most ``max_head`` bytes
    however it arrives (h11.RemoteProtocolError with status 431 if not).

    Counting costs two copies of h11's buffer per request: of what a pipelining client sent
    ahead (usually nothing) and of what follows the head (at most what one read brought)."""
    fed = _buffered(connection)  # bytes given to h11 since this head began
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            if not data and connection.their_state is h11.IDLE:
                return h11.ConnectionClosed()
            connection.receive_data(data)
            fed += len(data)
            continue
        if isinstance(event, h11.Request):
            size = fed - _buffered(connection)  # what h11 parsed to make this head
            if size > max_head:
                raise h11.RemoteProtocolError(f"the request head is {size} bytes, over the "
                                              f"limit of {max_head}", error_status_hint=431)
        return event


async def read_body(connection: h11.Connection, reader: asyncio.StreamReader,
                    limit: int) -> bytes | None:
    """The whole body, or None once it grows past ``limit`` (reading stops there); raises
    ConnectionResetError if the client closes mid-body."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await next_event(connection, reader)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                return None
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed mid-body
            raise ConnectionResetError("the client closed mid-body")


async def until_eof(reader: asyncio.StreamReader, budget: int) -> None:
    """Returns once the client has closed its side (or sent ``budget`` bytes nobody reads)."""
    with contextlib.suppress(OSError):  # a reset is a close too
        while budget > 0 and (chunk := await reader.read(READ_SIZE)):
            budget -= len(chunk)


def request_of(event: h11.Request, peer: Peer) -> Request:
    """The server's Request for an h11 request head (repeated headers joined by ", ")."""
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(event.method.decode("ascii", "replace"),
                   event.target.decode("latin-1"), headers, peer,
                   event.http_version.decode("ascii", "replace"))


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """Who is connected: the uid and pid of a Unix socket's peer, a TCP peer's address."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return Peer("unix", "unix", uid=uid, pid=pid)
    address = writer.get_extra_info("peername")
    return Peer("tcp", f"{address[0]}:{address[1]}" if address else "?")
