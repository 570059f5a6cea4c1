"""The API's answer types, shared by the router (control.py) and the endpoints
(api_handlers.py): an error is an ``ApiError``; a success is a ``Reply``."""

from __future__ import annotations

import json
from http import HTTPStatus

from pydantic import ValidationError

from framebus.errors import FramebusError


class ApiError(FramebusError):
    """An error answer: HTTP status, short code and a detail for humans."""

    def __init__(self, status: HTTPStatus, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}


Reply = tuple[HTTPStatus, dict[str, str], bytes]


def json_reply(data: object, status: HTTPStatus = HTTPStatus.OK) -> Reply:
    """A JSON answer."""
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def validation_detail(exc: ValidationError) -> str:
    """The first pydantic error as ``field: message`` (never echoing input values)."""
    first = exc.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{path}: {message}" if path else message
