"""Test helpers for the control plane: a tiny HTTP client for the daemon's API."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

from framebus.daemon import Daemon


class ApiClient:
    """Talks HTTP/1.1 to a daemon's control plane (loopback only)."""

    def __init__(self, daemon_or_address: Daemon | str, token: str | None = None) -> None:
        if isinstance(daemon_or_address, Daemon):
            assert daemon_or_address.control is not None
            if token is None and daemon_or_address.http_token is not None:
                token = daemon_or_address.http_token.get_secret_value()
            daemon_or_address = daemon_or_address.control.address
        host, _, port = daemon_or_address.rpartition(":")
        self.host, self.port, self.token = host, int(port), token

    @classmethod
    def from_log(cls, lines: list[str]) -> ApiClient | None:
        """A client for a daemon process, from its log: the address it listens on and the
        token it generated (if it did); None until the listening line is there."""
        address = token_file = None
        for line in list(lines):
            if match := re.search(r"generated one in (\S+)", line):
                token_file = match[1]
            if match := re.search(r"http: listening on (\S+)", line):
                address = match[1]
        if address is None:
            return None
        token = Path(token_file).read_text().strip() if token_file else None
        return cls(address, token)

    @property
    def url(self) -> str:
        """Base URL, e.g. for request_frame()."""
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        all_headers = dict(headers or {})
        if self.token:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        try:
            connection.request(method, path, body, all_headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, data: object | None = None) -> tuple[int, Any]:
        """A JSON request; the answer decoded."""
        body = None if data is None else json.dumps(data).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        status, _, raw = self.request(method, path, body, headers)
        return status, json.loads(raw) if raw else None
