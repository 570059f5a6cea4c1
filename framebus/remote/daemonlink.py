"""The bridge's side of the local daemon's HTTP API: run-time shm subscriptions, camera status
and one-shot frames, over ``http.unix_socket`` when the config has one (no token needed, and
the daemon knows the caller) or over TCP with the configured or generated token."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from framebus.access import TOKEN_FILE_NAME
from framebus.apiclient import request_json
from framebus.client import request_frame
from framebus.config import Config
from framebus.errors import FramebusError
from framebus.reading import Frame
from framebus.remote.settings import RemoteExport

log = logging.getLogger("framebus.bridge")
API_TIMEOUT_S = 5.0


class DaemonRefused(FramebusError):
    """The daemon answered a request with an error (its reason in the message)."""


class DaemonLink:
    """How the bridge reaches the daemon whose config it shares."""

    def __init__(self, config: Config) -> None:
        http = config.http
        self.unix_socket = str(http.unix_socket) if http.unix_socket else None
        scheme = "https" if http.tls else "http"  # TLS: verified by $FRAMEBUS_CA_FILE
        self.url = f"{scheme}://{http.listen.replace('0.0.0.0', '127.0.0.1')}"
        self.fifo_dir = config.fifo_dir
        self._config = config

    def token(self) -> str | None:
        """The bearer token for TCP: configured, from its file, or the daemon's generated one
        (re-read each time: the daemon writes a new one at every start)."""
        if self.unix_socket is not None:
            return None
        http = self._config.http
        if http.token is not None:
            return http.token.get_secret_value()
        path = http.token_file or self.fifo_dir / TOKEN_FILE_NAME
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            return None

    def _call(self, method: str, path: str, body: dict[str, object] | None = None
              ) -> tuple[int, dict[str, Any]]:
        return request_json(method, self.url, self.unix_socket, path, body, self.token(),
                            API_TIMEOUT_S)

    def subscribe(self, name: str, camera: str, export: RemoteExport) -> Path:
        """A run-time subscription for ``export`` (shm for raw formats); an old one of the
        same name (a bridge that died) is replaced. Returns its FIFO."""
        body: dict[str, object] = {
            "name": name, "camera": camera, "format": export.format,
            "transport": "fifo" if export.format == "jpeg" else "shm",
            "quality": export.quality, "mode": "0660", "state_messages": True}
        for key in ("width", "height", "max_fps"):
            if getattr(export, key) is not None:
                body[key] = getattr(export, key)
        status, reply = self._call("POST", "/v1/subscriptions", body)
        if status == 409 and reply.get("error") == "exists":
            self.unsubscribe(name)
            status, reply = self._call("POST", "/v1/subscriptions", body)
        if status != 201:
            raise DaemonRefused(f"subscription {name}: {status} {reply.get('error', '')}: "
                                f"{reply.get('detail', '')}")
        return Path(str(reply["fifo"]))

    def unsubscribe(self, name: str) -> None:
        """Remove a run-time subscription (gone already is fine)."""
        status, reply = self._call("DELETE", f"/v1/subscriptions/{name}")
        if status not in (200, 404):
            log.warning("bridge: cannot delete subscription %s: %s %s", name, status,
                        reply.get("error", ""))

    def subscribed(self, name: str) -> bool:
        """True while the daemon still holds subscription ``name`` (a restarted one does
        not)."""
        return self._call("GET", f"/v1/subscriptions/{name}")[0] == 200

    def cameras(self) -> list[dict[str, Any]]:
        """GET /v1/cameras."""
        status, reply = self._call("GET", "/v1/cameras")
        if status != 200:
            raise DaemonRefused(f"GET /v1/cameras: {status} {reply.get('error', '')}")
        cameras = reply.get("cameras", [])
        return cameras if isinstance(cameras, list) else []

    def frame(self, camera: str, export: RemoteExport, timeout: float,
              newer_than: int | None, max_age: float | None) -> Frame:
        """The newest frame of ``camera`` in ``export``'s rendition, now (a private FIFO in
        the daemon's fifo_dir, which it allows)."""
        return request_frame(camera, url=self.url, unix_socket=self.unix_socket,
                             fifo_dir=self.fifo_dir, format=export.format, width=export.width,
                             height=export.height, quality=export.quality, token=self.token(),
                             timeout=timeout, newer_than=newer_than, max_age=max_age)
