"""A loopback TCP proxy that injects network faults between framebus and the RTSP test server.

One thread, one ``selectors`` loop, non-blocking sockets. Modes (switchable at any time):

* ``forward()`` — copy bytes both ways (the healthy network);
* ``blackhole()`` — stop moving bytes in both directions, keep every connection open, accept
  new connections and forward nothing on them either (a silent network partition: no RST, no
  FIN, nothing). ``forward()`` afterwards heals the partition: whatever was held moves on;
* ``corrupt(after_bytes, every_bytes)`` — forward, but in the server→client direction flip one
  random byte in every ``every_bytes`` once a connection has carried ``after_bytes`` (so the
  RTSP handshake and the first frames of each new connection get through intact).

Bounded in every way: per-direction buffers are capped (a side is read only while its buffer
has room), connections are capped (extra ones are closed at once), and the thread stops by
itself after ``lifetime`` seconds even if nobody calls :meth:`FaultProxy.close`.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

BUFFER_BYTES = 256 * 1024  # per direction and connection
TICK_S = 0.05  # how often the loop looks at mode changes and its deadline


class Mode(StrEnum):
    """What the proxy does with bytes."""

    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    CORRUPT = "corrupt"


@dataclass
class ProxyStats:
    """Counters, readable from any thread."""

    accepted: int = 0
    refused: int = 0  # over max_connections, or the target refused the connection
    upstream_bytes: int = 0  # client -> server
    downstream_bytes: int = 0  # server -> client
    corrupted_bytes: int = 0
    closed: int = 0


@dataclass
class _Half:
    """One direction of one connection: read from ``src``, buffer, write to ``dst``."""

    src: socket.socket
    dst: socket.socket
    downstream: bool
    buffer: bytearray = field(default_factory=bytearray)
    carried: int = 0  # bytes read so far in this direction
    next_flip: int = 0  # stream offset of the next byte to corrupt
    eof: bool = False


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    up: _Half
    down: _Half
    registered: dict[int, int] = field(default_factory=dict)  # fd -> event mask


class FaultProxy:
    """``127.0.0.1:port`` → ``target``, with fault modes; use as a context manager."""

    def __init__(self, target: tuple[str, int], *, lifetime: float = 900.0,
                 max_connections: int = 64, seed: int = 1) -> None:
        self.target = target
        self.lifetime = lifetime
        self.max_connections = max_connections
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._mode = Mode.FORWARD
        self._after_bytes = 0
        self._every_bytes = 1
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[int, _Pair] = {}  # fd (either side) -> pair
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)

    # -- control (any thread) ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port on 127.0.0.1."""
        return int(self._listener.getsockname()[1])

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def running(self) -> bool:
        """True until the proxy stopped (closed, or its lifetime ran out)."""
        return self._thread.is_alive()

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._lock:
            return len({id(pair) for pair in self._pairs.values()})

    def url(self, mount: str) -> str:
        """An rtsp:// URL for ``mount`` through the proxy."""
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def forward(self) -> None:
        """Copy bytes both ways (heals a blackhole, ends corruption)."""
        self._mode = Mode.FORWARD

    def blackhole(self) -> None:
        """Stop moving bytes; keep every connection open."""
        self._mode = Mode.BLACKHOLE

    def corrupt(self, after_bytes: int = 64 * 1024, every_bytes: int = 4096) -> None:
        """Flip one random byte per ``every_bytes`` server→client, after ``after_bytes``."""
        if after_bytes < 0 or every_bytes < 1:
            raise ValueError("after_bytes must be >= 0 and every_bytes >= 1")
        self._after_bytes, self._every_bytes = after_bytes, every_bytes
        self._mode = Mode.CORRUPT

    def start(self) -> FaultProxy:
        """Start the proxy thread."""
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close every socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the loop thread -----------------------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self.lifetime
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._update_interest()
                for key, events in self._selector.select(TICK_S):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                        continue
                    pair = self._pairs.get(sock.fileno())
                    if pair is None:
                        continue
                    self._service(pair, sock, events)
        finally:
            for pair in list({id(p): p for p in self._pairs.values()}.values()):
                self._drop(pair)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._selector.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self.connections >= self.max_connections:
            self.stats.refused += 1
            client.close()
            return
        try:
            server = socket.create_connection(self.target, timeout=1.0)
        except OSError:
            self.stats.refused += 1  # the server is down: the client sees its connection end
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server, _Half(client, server, downstream=False),
                     _Half(server, client, downstream=True))
        pair.down.next_flip = -1
        with self._lock:
            self._pairs[client.fileno()] = pair
            self._pairs[server.fileno()] = pair
        self.stats.accepted += 1

    def _wanted(self, pair: _Pair) -> dict[socket.socket, int]:
        masks: dict[socket.socket, int] = {pair.client: 0, pair.server: 0}
        if self._mode is Mode.BLACKHOLE:
            return masks  # nothing moves, nothing is noticed: a silent partition
        for half in (pair.up, pair.down):
            if not half.eof and len(half.buffer) < BUFFER_BYTES:
                masks[half.src] |= selectors.EVENT_READ
            if half.buffer:
                masks[half.dst] |= selectors.EVENT_WRITE
        return masks

    def _update_interest(self) -> None:
        for pair in list({id(p): p for p in self._pairs.values()}.values()):
            for sock, mask in self._wanted(pair).items():
                fd = sock.fileno()
                current = pair.registered.get(fd, 0)
                if mask == current:
                    continue
                if current and mask:
                    self._selector.modify(sock, mask)
                elif mask:
                    self._selector.register(sock, mask)
                else:
                    self._selector.unregister(sock)
                pair.registered[fd] = mask

    def _service(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if self._mode is Mode.BLACKHOLE:
            return
        try:
            if events & selectors.EVENT_READ:
                half = pair.up if sock is pair.client else pair.down
                self._read(half)
            if events & selectors.EVENT_WRITE:
                half = pair.down if sock is pair.client else pair.up
                self._write(half)
        except OSError:
            self._drop(pair)
            return
        if (pair.up.eof and not pair.up.buffer) or (pair.down.eof and not pair.down.buffer):
            self._drop(pair)  # one side closed and everything it sent was delivered

    def _read(self, half: _Half) -> None:
        try:
            data = half.src.recv(BUFFER_BYTES - len(half.buffer))
        except BlockingIOError:
            return
        if not data:
            half.eof = True
            return
        if half.downstream and self._mode is Mode.CORRUPT:
            data = self._corrupted(half, data)
        half.carried += len(data)
        half.buffer += data
        if half.downstream:
            self.stats.downstream_bytes += len(data)
        else:
            self.stats.upstream_bytes += len(data)

    def _corrupted(self, half: _Half, data: bytes) -> bytes:
        start, end = half.carried, half.carried + len(data)
        if half.next_flip < max(start, self._after_bytes):
            half.next_flip = max(start, self._after_bytes) + self._rng.randrange(self._every_bytes)
        if half.next_flip >= end:
            return data
        out = bytearray(data)
        while half.next_flip < end:
            out[half.next_flip - start] ^= self._rng.randrange(1, 256)
            self.stats.corrupted_bytes += 1
            half.next_flip += 1 + self._rng.randrange(2 * self._every_bytes - 1)
        return bytes(out)

    def _write(self, half: _Half) -> None:
        if not half.buffer:
            return
        try:
            sent = half.dst.send(half.buffer)
        except BlockingIOError:
            return
        del half.buffer[:sent]

    def _drop(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            fd = sock.fileno()
            if fd >= 0 and pair.registered.get(fd):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            with self._lock:
                self._pairs.pop(fd, None)
            sock.close()
        pair.registered.clear()
        self.stats.closed += 1
