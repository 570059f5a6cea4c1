""""The newest frame of camera X, now" across hosts: a zenoh query to the exports' queryables.

The query's selector is the export's key with the same limits as the HTTP API's
(``framebus/*/lobby/nv12-1280x720?newer_than=41;max_age=0.5;timeout=2``); the bridge answers
from the last frame it published when that satisfies them, else asks its daemon.
"""

from __future__ import annotations

import time
from typing import Any

from framebus.client import FrameRequestError
from framebus.errors import ProtocolError
from framebus.reading import Frame
from framebus.remote.mapping import decode_sample, selector
from framebus.remote.session import open_session
from framebus.remote.settings import RemoteConfig
from framebus.wire import FrameHeader


def request_remote_frame(
    camera: str,
    *,
    host: str | None = None,
    rendition: str | None = None,
    config: RemoteConfig | None = None,
    connect: list[str] | None = None,
    session: Any = None,
    newer_than: int | None = None,
    max_age: float | None = None,
    timeout: float = 5.0,
) -> Frame:
    """The newest frame of ``camera`` from whichever host exports it (the first valid reply
    when several do). Raises FrameRequestError with the bridge's reason (``frame_too_old``,
    ``timeout``, ``unavailable``...) and TimeoutError when nobody answers in ``timeout``."""
    params = [f"timeout={timeout:g}"]
    if newer_than is not None:
        params.append(f"newer_than={int(newer_than)}")
    if max_age is not None:
        params.append(f"max_age={max_age:g}")
    query = f"{selector(camera, host, rendition)}?{';'.join(params)}"
    own = session is None
    if own:
        session = open_session(config or RemoteConfig(), connect=connect)
    errors: list[str] = []
    try:
        for reply in session.get(query, timeout=timeout + 0.5):
            sample = reply.ok
            if sample is None:
                errors.append(reply.err.payload.to_bytes().decode(errors="replace")[:200])
                continue
            raw = b"" if sample.attachment is None else sample.attachment.to_bytes()
            try:
                message = decode_sample(raw, memoryview(sample.payload.to_bytes()))
            except ProtocolError as exc:
                errors.append(f"invalid reply: {exc}")
                continue
            if isinstance(message.header, FrameHeader):
                return Frame(message.header, message.payload, time.monotonic_ns())
    finally:
        if own:
            session.close()
    if not errors:
        raise TimeoutError(f"no host answered for {query} within {timeout:g}s")
    error, _, detail = errors[0].partition(": ")
    raise FrameRequestError(503, error, detail)
