"""The fault proxy (``tests/faultproxy.py``) itself, which the fault matrix's network faults go
through: it forwards byte for byte, corrupts, blackholes and heals, and stops by itself at the
end of its lifetime.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading

import pytest
from faultproxy import FaultProxy
from waiting import wait_for


class ByteServer:
    """A loopback TCP server that answers each ``GO`` with ``payload`` (the proxy's target)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    while conn.recv(2) == b"GO":
                        conn.sendall(self.payload)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def receive(sock: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes (the socket's timeout bounds each wait)."""
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return bytes(data)


def test_faultproxy_forwards_blackholes_corrupts_and_stops_by_itself() -> None:
    payload = bytes(random.Random(7).randrange(256) for _ in range(200_000))
    target = ByteServer(payload)
    try:
        with FaultProxy(("127.0.0.1", target.sock.getsockname()[1]), lifetime=60) as proxy, \
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"GO")
            assert receive(client, len(payload)) == payload  # forward: byte for byte
            proxy.corrupt(after_bytes=0, every_bytes=1000)
            client.sendall(b"GO")
            damaged = receive(client, len(payload))
            flipped = sum(a != b for a, b in zip(damaged, payload, strict=True))
            assert 100 <= flipped <= 300 and flipped == proxy.stats.corrupted_bytes
            proxy.blackhole()
            client.sendall(b"GO")
            client.settimeout(0.5)  # a deliberate observation window: nothing may arrive
            with pytest.raises(TimeoutError):
                client.recv(1)
            client.settimeout(5)
            proxy.forward()  # the partition heals: the held request goes through
            assert receive(client, len(payload)) == payload
        with FaultProxy(("127.0.0.1", target.sock.getsockname()[1]), lifetime=0.3) as short:
            wait_for(lambda: not short.running, 5, "the proxy to stop by itself")
    finally:
        target.close()
