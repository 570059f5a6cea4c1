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
        session = open_session(config or RemoteConfig(), connect=connect, listen=[])
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        # a session just opened learns the network's queryables a moment later: a query that
        # nobody answered is asked again until the deadline
        while not errors and (left := deadline - time.monotonic()) > 0:
            for reply in session.get(query, timeout=left + 0.5):
                frame = _frame(reply, errors)
                if frame is not None:
                    return frame
            if not errors:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    finally:
        if own:
            session.close()
    if not errors:
        raise TimeoutError(f"no host answered for {query} within {timeout:g}s")
    error, _, detail = errors[0].partition(": ")
    raise FrameRequestError(503, error, detail)


def _frame(reply: Any, errors: list[str]) -> Frame | None:
    """The frame in a reply, or None with the reason appended to ``errors``."""
    sample = reply.ok
    if sample is None:
        errors.append(reply.err.payload.to_bytes().decode(errors="replace")[:200])
        return None
    raw = b"" if sample.attachment is None else sample.attachment.to_bytes()
    try:
        message = decode_sample(raw, memoryview(sample.payload.to_bytes()))
    except ProtocolError as exc:
        errors.append(f"invalid reply: {exc}")
        return None
    if not isinstance(message.header, FrameHeader):
        errors.append("invalid reply: a STATE message")
        return None
    return Frame(message.header, message.payload, time.monotonic_ns())
