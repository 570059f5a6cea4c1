"""One export: a camera's rendition published on ``framebus/<host>/<camera>/<rendition>``.

Invariants (the bridge's reconcile keeps them; nothing else starts or stops a reader):

* The daemon is asked for frames (a run-time shm subscription) only while a remote subscriber
  matches the key (zenoh matching status): an export nobody watches costs the daemon nothing.
* The bridge is an ordinary reader of that subscription: when the network or ``put()`` is slow
  the daemon drops frames for the bridge as for any slow reader, never for the cameras or other
  readers; ``missed`` in the published header counts what the bridge missed.
* Publishing uses ``CongestionControl.DROP``; ``put()`` may still block at link speed (zenoh
  #2258), which is measured (``put_seconds``) and only ever delays this export's reader thread.
* Queries ("newest frame now") are answered from the last published frame when it satisfies
  ``max_age``/``newer_than``, else by a one-shot frame request to the daemon, in a bounded pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from framebus.client import FrameRequestError, Subscriber
from framebus.errors import FramebusError, ProtocolError
from framebus.reading import RESTART, Frame, StreamEvent
from framebus.remote.daemonlink import DaemonLink
from framebus.remote.gate import QueryGate
from framebus.remote.mapping import data_key, frame_attachment, state_sample
from framebus.remote.session import import_zenoh
from framebus.remote.settings import RemoteExport
from framebus.wire import FrameHeader, StateHeader, StreamState

log = logging.getLogger("framebus.bridge")
READ_TICK_S = 0.5  # how often a reader thread looks at its stop flag
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # a subscription that failed is retried after these delays
MAX_PENDING_QUERIES = 8  # per export; more are refused at once ("busy")
QUERY_TIMEOUT_MAX_S = 5.0


@dataclass
class ExportStats:
    """Counters of one export (the bridge's metrics and status read them)."""

    puts: int = 0
    bytes: int = 0
    put_seconds: float = 0.0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> frames
    queries: Counter[str] = field(default_factory=Counter)  # outcome -> queries
    subscriptions: int = 0  # daemon subscriptions made (1 per matching spell, + retries)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Published:
    """The last frame put, kept to answer queries without asking the daemon."""

    header: FrameHeader
    attachment: bytes
    payload: bytes


def subscription_name(host: str, camera: str, rendition: str) -> str:
    """The daemon-side name of an export's subscription: readable, unique, within 64 chars.
    Names may contain '-', so the readable part alone is ambiguous (``lobby-east``/``nv12``
    and ``lobby``/``east-nv12``): a digest of the exact triple always follows it."""
    digest = hashlib.sha256(f"{host}/{camera}/{rendition}".encode()).hexdigest()
    name = f"bridge-{host}-{camera}-{rendition}-{digest[:8]}"
    return name if len(name) <= 64 else f"bridge-{digest[:16]}"


class Export:
    """An export's zenoh publisher, liveliness token and queryable, and its reader thread."""

    def __init__(self, session: Any, host: str, camera: str, spec: RemoteExport,
                 link: DaemonLink, pool: ThreadPoolExecutor, wake: Callable[[], None]) -> None:
        z = import_zenoh()
        self.camera, self.spec, self.link = camera, spec, link
        self.rendition = spec.rendition()
        self.key = data_key(host, camera, self.rendition)
        self.name = subscription_name(host, camera, self.rendition)
        self.stats = ExportStats()
        self.last: Published | None = None
        self._last_capture_ns = 0
        self._gate = QueryGate(pool, MAX_PENDING_QUERIES,
                               "busy: too many queries waiting for this export")
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failures = 0
        self._retry_at = 0.0
        self.publisher = session.declare_publisher(
            self.key, congestion_control=z.CongestionControl.DROP)
        self._matching = self.publisher.declare_matching_listener(lambda _status: wake())
        self._token = session.liveliness().declare_token(self.key)
        self._queryable = session.declare_queryable(self.key, self._on_query)

    @property
    def matching(self) -> bool:
        """True while some remote subscriber's key expression matches this export."""
        return bool(self.publisher.matching_status.matching)

    @property
    def running(self) -> bool:
        """True while the reader thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def reconcile(self, now: float) -> None:
        """Start the reader when someone listens, stop it when nobody does (bridge loop)."""
        wanted = self.matching
        if wanted and not self.running and now >= self._retry_at:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._read, args=(self._stop,),
                                            name=f"export-{self.key}", daemon=True)
            self._thread.start()
        elif not wanted and self.running:
            self._stop.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader (its subscription is deleted) and undeclare everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for entity in (self._queryable, self._token, self._matching, self.publisher):
            with contextlib.suppress(Exception):  # the session may be closing already
                entity.undeclare()

    # -- the reader thread -------------------------------------------------------------------

    def _read(self, stop: threading.Event) -> None:
        try:
            fifo = self.link.subscribe(self.name, self.camera, self.spec)
        except (FramebusError, OSError) as exc:
            self._failed(str(exc))
            return
        self.stats.subscriptions += 1
        ended = "stopped"
        try:
            with Subscriber(fifo, reopen=False, on_event=self._on_event) as sub:
                while not stop.is_set():
                    try:
                        frame = sub.read(timeout=READ_TICK_S)
                    except TimeoutError:
                        continue
                    if frame is None:
                        ended = "the daemon closed the subscription"
                        break
                    self._put(frame)
        except (FramebusError, ProtocolError, OSError) as exc:
            ended = str(exc)
        finally:
            # the cached frame answers queries only while this subscription keeps it the
            # newest: a stopped export or a restarted daemon must not serve it later
            self.last = None
            with contextlib.suppress(FramebusError, OSError):
                self.link.unsubscribe(self.name)
        if stop.is_set():
            self._failures, self.stats.error = 0, ""
        else:  # the daemon went away (restart) or the stream broke: subscribe again soon
            self._failed(ended)

    def _failed(self, reason: str) -> None:
        delay = RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        if reason != self.stats.error:
            log.warning("bridge: %s: %s (retrying in %gs)", self.key, reason, delay)
        self.stats.error = reason

    def _put(self, frame: Frame) -> None:
        header = frame.header
        payload = bytes(frame.payload)  # the one copy out of the slot: zenoh takes bytes
        if not frame.intact():  # the daemon reused the slot while we copied: never send it torn
            self.stats.dropped["overwritten"] += 1
            return
        attachment = frame_attachment(header, len(payload), header.missed)
        began = time.perf_counter()
        self.publisher.put(payload, attachment=attachment)
        stats = self.stats
        stats.put_seconds += time.perf_counter() - began
        stats.puts += 1
        stats.bytes += len(payload)
        if header.missed:
            stats.dropped[self._drop_reason(header)] += header.missed
        self._last_capture_ns = header.capture_time_ns
        self._failures = 0
        self.last = Published(header, attachment, payload)

    def _drop_reason(self, header: FrameHeader) -> str:
        """``max_fps`` for the frames the daemon skipped to keep the export's rate (the gap
        since the previous frame is about one interval at that rate), else ``upstream``: it
        dropped them because the bridge did not keep up (a slow network or put)."""
        max_fps = self.spec.max_fps
        if max_fps and self._last_capture_ns and (
                header.capture_time_ns - self._last_capture_ns <= 1.5e9 / max_fps):
            return "max_fps"
        return "upstream"

    def _on_event(self, event: StreamEvent) -> None:
        """A camera state from the daemon goes out on the same key (a restart is visible in
        the next frame's instance already)."""
        if event.kind == RESTART or event.camera != self.camera:
            return
        try:
            code = StreamState[event.kind.upper()]
        except KeyError:
            return
        attachment, payload = state_sample(
            StateHeader(event.camera, code, event.seq, event.epoch, time.time_ns(),
                        time.monotonic_ns(), event.instance), event.reason)
        with contextlib.suppress(Exception):  # a state lost on a broken link is not fatal
            self.publisher.put(payload, attachment=attachment)

    # -- queries ("newest frame now") --------------------------------------------------------

    def _on_query(self, query: Any) -> None:
        """zenoh's callback thread: hand the query to the pool, or refuse it when full."""
        if not self._gate.submit(query, self._answer):
            self.stats.queries["busy"] += 1

    def _answer(self, query: Any) -> None:
        try:
            outcome = self._reply(query)
        except Exception as exc:  # every query gets an answer, never a stuck caller
            outcome = "error"
            query.reply_err(f"bridge error: {type(exc).__name__}")
        self.stats.queries[outcome] += 1

    def _reply(self, query: Any) -> str:
        try:
            newer_than, max_age, timeout = parse_query(str(query.parameters))
        except ValueError as exc:
            query.reply_err(f"bad_request: {exc}")
            return "bad_request"
        last = self.last
        if last is not None and (newer_than is None or last.header.seq > newer_than) and (
                max_age is None
                or time.monotonic_ns() - last.header.publish_mono_ns <= max_age * 1e9):
            query.reply(self.key, last.payload, attachment=last.attachment)
            return "cached"
        try:
            frame = self.link.frame(self.camera, self.spec, timeout, newer_than, max_age)
        except FrameRequestError as exc:
            query.reply_err(f"{exc.error}: {exc.detail}")
            return exc.error or "refused"
        except (FramebusError, OSError, TimeoutError) as exc:
            query.reply_err(f"unavailable: {exc}")
            return "unavailable"
        payload = bytes(frame.payload)
        query.reply(self.key, payload,
                    attachment=frame_attachment(frame.header, len(payload), 0))
        return "daemon"


def parse_query(parameters: str) -> tuple[int | None, float | None, float]:
    """``newer_than=<seq>;max_age=<seconds>;timeout=<seconds>`` (each optional) of a query's
    parameters; ValueError naming the parameter otherwise."""
    values: dict[str, str] = {}
    for part in filter(None, parameters.split(";")):
        key, _, value = part.partition("=")
        if key not in ("newer_than", "max_age", "timeout"):
            raise ValueError(f"unknown parameter {key[:32]!r} (newer_than, max_age, timeout)")
        values[key] = value
    newer_than = max_age = None
    timeout = QUERY_TIMEOUT_MAX_S
    try:
        if "newer_than" in values:
            newer_than = int(values["newer_than"])
            if not 0 <= newer_than < 2**63:
                raise ValueError
    except ValueError:
        raise ValueError("newer_than: expected a seq >= 0") from None
    for key in ("max_age", "timeout"):
        if key in values:
            try:
                number = float(values[key])
            except ValueError:
                number = -1.0
            if not 0 <= number <= 86400:
                raise ValueError(f"{key}: expected seconds >= 0")
            if key == "max_age":
                max_age = number
            else:
                timeout = min(max(number, 0.1), QUERY_TIMEOUT_MAX_S)
    return newer_than, max_age, timeout
