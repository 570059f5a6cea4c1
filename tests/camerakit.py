"""Test helpers for cameras: build one against a URL, and a TCP listener that speaks garbage."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from framebus.camera import Camera, CameraSet
from framebus.config import parse_config
from framebus.store import LatestFrameStore

FAST = {
    "open_timeout": "2s",
    "read_timeout": "2s",
    "stall_timeout": "2s",
    "backoff": {"initial": "200ms", "max": "1s", "jitter": 0.1, "auth_failure": "1s"},
}


@contextmanager
def cameras(
    specs: dict[str, dict[str, Any]], passwords: dict[str, str] | None = None
) -> Iterator[tuple[CameraSet, LatestFrameStore]]:
    """Start cameras from config dicts (merged over FAST); stop them all at exit."""
    config = parse_config({"cameras": {name: {**FAST, **spec} for name, spec in specs.items()}})
    store = LatestFrameStore()
    camera_set = CameraSet(store)
    try:
        for name, camera_config in config.cameras.items():
            secret = (passwords or {}).get(name)
            camera_set.add(Camera(name, camera_config, SecretStr(secret) if secret else None,
                                  store))
        yield camera_set, store
    finally:
        camera_set.close()


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


class GarbageServer:
    """A loopback TCP listener that answers every connection with bytes that are not RTSP."""

    def __init__(self, reply: bytes = b"\x00\xffHTTP/9.9 banana\r\n\r\n" + bytes(range(256))):
        self.reply = reply
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """An rtsp:// URL pointing at the listener."""
        return f"rtsp://127.0.0.1:{self._sock.getsockname()[1]}/garbage"

    def __enter__(self) -> GarbageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(self.reply)
                except OSError:
                    pass
