"""The HTTP API's endpoint implementations (routing and HTTP details live in control.py)."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

import framebus
from framebus.api import ApiError, Reply, json_reply, validation_detail
from framebus.camera import CameraState
from framebus.config import FifoPath, PixelFormatName, SubscriberConfig, parse_mode
from framebus.errors import FifoError
from framebus.fifo import FifoRefused, NoReader, check_allowed_path, open_requested_fifo
from framebus.imaging import convert, encode_image
from framebus.query import query_decimal, query_int
from framebus.sending import LATENCY_BUCKETS_S
from framebus.store import DEFAULT_QUALITY, Rendition, StoredFrame
from framebus.urls import redact_url
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from framebus.http_server import Peer
    from framebus.view import DaemonView


def _octal_string(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("expected an octal string like \"0660\"")
    return parse_mode(value)


class FifoRequest(BaseModel):
    """Body of POST /v1/cameras/{name}/snapshot-to-fifo."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fifo: FifoPath
    format: PixelFormatName = "bgr24"
    width: int | None = Field(None, ge=1, le=8192)
    height: int | None = Field(None, ge=1, le=8192)
    quality: int = Field(DEFAULT_QUALITY, ge=1, le=100)
    timeout: float | None = Field(None, gt=0, le=60)
    # as for GET .../snapshot.jpg: wait (up to timeout) for a frame with a higher seq; refuse
    # (503 frame_too_old) a newest frame older than max_age seconds
    newer_than: int | None = Field(None, ge=0, le=2**63 - 1)
    max_age: float | None = Field(None, ge=0, le=86400)


class SubscriptionRequest(SubscriberConfig):
    """Body of POST /v1/subscriptions: a subscriber's options plus its name. ``mode`` must be
    an octal string ("0660"): a JSON number would silently be read as decimal."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    mode: Annotated[int, BeforeValidator(_octal_string)] = 0o660

    @field_validator("mode")
    @classmethod
    def _no_looser_than_0660(cls, mode: int) -> int:
        if mode & ~0o660:
            raise ValueError(f"mode {mode:04o} is looser than 0660: the API may not hand "
                             "frames to other users")
        return mode


MAX_SNAPSHOT_SIDE = 8192  # a request must not make the daemon convert gigabytes


def _check_owner(path: Path, owner: int, peer: Peer) -> None:
    """A caller may only hand the daemon a FIFO it owns. Over the Unix socket the daemon
    knows the caller's uid (SO_PEERCRED): its own FIFOs, and root any. Over TCP it only knows
    that the caller has the token, which every member of the token file's group may read,
    so it cannot tell one local user from another (nor does a FIFO's group or directory:
    every consumer shares the daemon's group): only FIFOs of the daemon's own user."""
    if peer.transport != "unix":
        if owner != os.geteuid():
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused",
                           f"{path} belongs to uid {owner}: over TCP the daemon cannot tell "
                           "who is asking, so it writes only into its own user's FIFOs; ask "
                           "over the Unix socket (http.unix_socket; request_frame(unix_socket="
                           "...), framebus snapshot --unix-socket), where it checks the FIFO "
                           "is yours")
    elif peer.uid not in (0, owner):
        raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused",
                       f"{path} belongs to uid {owner}, not to the caller (uid {peer.uid})")


def _exists(name: str) -> ApiError:
    return ApiError(HTTPStatus.CONFLICT, "exists", f"a subscription named {name!r} exists")


def _no_subscription(name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "unknown_subscription", f"no subscription {name!r}")


class Handlers:
    """One method per endpoint."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.started = time.monotonic()  # the control plane starts with the daemon
        self._requested: set[tuple[int, int]] = set()  # FIFOs frame requests are writing to
        self._requested_lock = threading.Lock()

    def health(self, _query: dict[str, str]) -> Reply:
        """GET /healthz (open, no token): is the daemon up, are its cameras streaming."""
        cameras = list(self.daemon.cameras.cameras.items())
        down = {name: camera.state.value for name, camera in cameras
                if camera.state is not CameraState.STREAMING}
        # 200 while the daemon serves (a liveness probe); "degraded" names who is not streaming
        return json_reply({"status": "degraded" if down else "ok", "cameras": len(cameras),
                           "streaming": len(cameras) - len(down), "not_streaming": down,
                           "version": framebus.__version__,
                           "uptime_s": round(time.monotonic() - self.started, 1)})

    # -- cameras -----------------------------------------------------------------------------

    def _camera(self, name: str) -> Any:
        camera = self.daemon.cameras.cameras.get(name)
        if camera is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_camera", f"no camera named {name!r}")
        return camera

    def camera_status(self, name: str) -> dict[str, Any]:
        """A camera's state, as the API shows it."""
        camera = self._camera(name)
        stats = camera.stats
        latest = self.daemon.store.latest(name)
        subscribers = sorted(s.spec.name for s in self.daemon.fanout.subscribers.values()
                             if name in s.spec.all_cameras)
        return {
            "name": name, "url": redact_url(camera.config.url), "state": camera.state.value,
            "reason": camera.reason, "fps": round(stats.fps, 2),
            "declared_fps": round(stats.declared_fps, 2), "width": stats.width,
            "height": stats.height, "codec": stats.codec, "epoch": stats.epoch,
            "decoder": camera.decoding.decoder(stats.codec), "hwaccel": camera.decoding.as_json(),
            "frames_decoded": stats.frames_decoded, "decode_errors": stats.decode_errors,
            "reconnects": dict(stats.reconnects), "last_seq": latest.seq if latest else None,
            "frame_age_s": round(time.monotonic() - stats.last_frame_mono, 3)
            if stats.last_frame_mono else None,
            "subscribers": subscribers,
        }

    def list_cameras(self, _query: dict[str, str]) -> Reply:
        """GET /v1/cameras."""
        return json_reply({"cameras": [self.camera_status(n)
                                       for n in sorted(self.daemon.cameras.cameras)]})

    def get_camera(self, _query: dict[str, str], name: str) -> Reply:
        """GET /v1/cameras/{name}."""
        return json_reply(self.camera_status(name))

    def _frame(self, name: str, query: dict[str, str], wait: float | None = None) -> StoredFrame:
        """The newest frame (newer than ``newer_than``), waiting up to ``wait`` seconds (at most
        ``http.wait_timeout``) for one; 503 if none comes or it is older than ``max_age``."""
        self._camera(name)
        newer_than = query_int(query, "newer_than", 0, 2**63 - 1)
        limit = query_decimal(query, "max_age", 0,
                              expected="a number of seconds >= 0 (ASCII digits, e.g. 2 or 0.5)")
        store = self.daemon.store
        wait = min(wait or math.inf, self.daemon.config.http.wait_timeout)
        deadline = time.monotonic() + wait
        with store.published:
            while True:
                frame = store.latest(name)
                if frame is not None and (newer_than is None or frame.seq > newer_than):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "no frame yet" if frame is None else f"no frame newer than {newer_than}"
                    raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "no_frame",
                                   f"{what} within {wait:g}s")
                store.published.wait(remaining)
        if limit is not None:
            age = (time.monotonic_ns() - frame.publish_mono_ns) / 1e9
            if age > limit:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "frame_too_old",
                               f"newest frame is {age:.3f}s old, over max_age {limit:g}s")
        return frame

    def snapshot(self, query: dict[str, str], name: str, kind: str) -> Reply:
        """GET /v1/cameras/{name}/snapshot.jpg|png: the newest frame as an image."""
        width = query_int(query, "width", 1, MAX_SNAPSHOT_SIDE)
        height = query_int(query, "height", 1, MAX_SNAPSHOT_SIDE)
        quality = query_int(query, "quality", 1, 100) or DEFAULT_QUALITY
        self._check_size(name, width, height)
        frame = self._frame(name, query)
        if kind == "jpg":  # shared with any subscriber wanting the same: converted once
            payload = self.daemon.store.payload(frame, Rendition(PixelFormat.JPEG, width, height,
                                                                 quality))
            body, content_type = bytes(payload.buffers[0]), "image/jpeg"
        else:
            w, h = Rendition(PixelFormat.RGB24, width, height).size_for(frame.width, frame.height)
            body = encode_image(convert(frame.frame, w, h), "png")
            content_type = "image/png"
        age = (time.monotonic_ns() - frame.publish_mono_ns) / 1e9
        headers = {"Content-Type": content_type, "Age": str(int(age)),
                   "Cache-Control": "no-store", "X-Framebus-Seq": str(frame.seq),
                   "X-Framebus-Epoch": str(frame.epoch),
                   "X-Framebus-Capture-Time-Ns": str(frame.capture_time_ns),
                   "X-Framebus-Age-Ms": f"{age * 1000:.1f}"}
        return HTTPStatus.OK, headers, body

    def snapshot_to_fifo(self, body: dict[str, Any], peer: Peer, name: str) -> Reply:
        """POST /v1/cameras/{name}/snapshot-to-fifo: write the newest frame into the caller's
        FIFO as one message, through the fan-out loop, without blocking."""
        try:
            request = FifoRequest.model_validate(body)
        except ValidationError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", validation_detail(exc)) from None
        self._check_size(name, request.width, request.height)
        # the caller's timeout bounds the whole request, the wait for a first frame included
        timeout = min(request.timeout or self.daemon.config.http.wait_timeout,
                      self.daemon.config.http.wait_timeout)
        limits = {}  # in the query-string form GET .../snapshot.jpg parses (no exponents)
        if request.newer_than is not None:
            limits["newer_than"] = str(request.newer_than)
        if request.max_age is not None:
            limits["max_age"] = f"{request.max_age:.9f}"
        frame = self._frame(name, limits, wait=timeout)
        rendition = Rendition(PixelFormat.from_name(request.format), request.width,
                              request.height, request.quality)
        payload = self.daemon.store.payload(frame, rendition)  # converted here, not in the loop
        try:  # someone else's FIFO is refused before it is opened: no probing for readers
            owner = os.lstat(request.fifo).st_uid
        except OSError:
            owner = None  # open_requested_fifo says what is wrong with the path
        if owner is not None:
            _check_owner(request.fifo, owner, peer)
        try:
            fd = open_requested_fifo(request.fifo, self.daemon.allowed_fifo_dirs())
        except NoReader as exc:
            raise ApiError(HTTPStatus.CONFLICT, "no_reader", str(exc)) from None
        except FifoRefused as exc:
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused", str(exc)) from None
        try:
            key = self._claim_request_fifo(fd, request.fifo, peer)
        except ApiError:
            os.close(fd)
            raise
        done = threading.Event()
        outcome: list[bool] = []

        def closed(complete: bool) -> None:
            outcome.append(complete)
            with self._requested_lock:
                self._requested.discard(key)
            done.set()
        self.daemon.fanout.send_once(fd, frame, payload, timeout, closed)
        if not done.wait(timeout + 2.0) or not outcome[0]:
            raise ApiError(HTTPStatus.GATEWAY_TIMEOUT, "reader_too_slow",
                           f"the reader did not take the frame within {timeout:g}s: cut off")
        return json_reply({"camera": name, "seq": frame.seq, "epoch": frame.epoch,
                           "format": str(payload.format), "width": payload.width,
                           "height": payload.height, "bytes": payload.nbytes})

    def _claim_request_fifo(self, fd: int, path: Path, peer: Peer) -> tuple[int, int]:
        """Refuse a FIFO that is not the caller's to give: a subscriber's (409), one another
        request is writing (409), over the Unix socket one another user owns (403)."""
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key in self.daemon.fifos_in_use():
            raise ApiError(HTTPStatus.CONFLICT, "fifo_in_use",
                           f"{path} is a subscriber's FIFO: frame requests need their own")
        _check_owner(path, info.st_uid, peer)  # again on the open file: no swap in between
        with self._requested_lock:
            if key in self._requested:
                raise ApiError(HTTPStatus.CONFLICT, "fifo_in_use",
                               f"{path}: another frame request is writing into it")
            self._requested.add(key)
        return key

    def _check_size(self, camera: str, width: int | None, height: int | None) -> None:
        """Refuse outputs over the camera's max_pixels (they are also never upscaled)."""
        config = self.daemon.config.cameras.get(camera)
        if config is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_camera", f"no camera named {camera!r}")
        if width and height and width * height > config.max_pixels:
            raise ApiError(HTTPStatus.BAD_REQUEST, "too_large",
                           f"{width}x{height} is over the camera's max_pixels "
                           f"{config.max_pixels}")

    # -- subscriptions -----------------------------------------------------------------------

    def subscription_status(self, name: str) -> dict[str, Any]:
        """A subscriber's options and counters."""
        sub = self.daemon.fanout.subscribers.get(name)
        source = "api" if name in self.daemon.dynamic else "config"
        config = self.daemon.dynamic.get(name) or self.daemon.config.subscribers.get(name)
        if config is None:
            raise _no_subscription(name)
        status: dict[str, Any] = {"name": name, "source": source,
                                  **config.model_dump(mode="json"),
                                  "fifo": str(self.daemon.fifo_path(name))}
        if sub is not None:
            stats = sub.outbox.stats
            status.update(connected=sub.connected, frames_sent=stats.sent,
                          bytes_sent=stats.bytes_sent, dropped=dict(stats.dropped),
                          disconnects=sub.disconnects, pipe_size=sub.pipe_size, error=sub.error,
                          latency={"bounds_s": list(LATENCY_BUCKETS_S),
                                   "counts": list(sub.latency.counts)})
            if sub.shm_keys:
                status["shm"] = sub.shm_status(self.daemon.fanout.exporter)
        else:
            status.update(connected=False, error=self.daemon.subscriber_errors.get(name, ""))
        return status

    def list_subscriptions(self, _query: dict[str, str]) -> Reply:
        """GET /v1/subscriptions."""
        names = sorted({*self.daemon.config.subscribers, *self.daemon.dynamic})
        return json_reply({"subscriptions": [self.subscription_status(n) for n in names]})

    def get_subscription(self, _query: dict[str, str], name: str) -> Reply:
        """GET /v1/subscriptions/{name}."""
        return json_reply(self.subscription_status(name))

    def add_subscription(self, body: dict[str, Any], peer: Peer) -> Reply:
        """POST /v1/subscriptions: a long-lived subscriber added at run time."""
        try:
            request = SubscriptionRequest.model_validate(body)
        except ValidationError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", validation_detail(exc)) from None
        cameras = request.names(self.daemon.config.cameras)
        for name in cameras:
            self._check_size(name, request.width, request.height)  # 404 for an unknown one
        if request.name in self.daemon.config.subscribers or request.name in self.daemon.dynamic:
            raise _exists(request.name)  # before the path: its default FIFO is in use
        limit = self.daemon.config.http.max_subscriptions
        if len(self.daemon.dynamic) >= limit:
            raise ApiError(HTTPStatus.CONFLICT, "too_many_subscriptions",
                           f"the daemon holds its limit of {limit} run-time subscriptions "
                           "(http.max_subscriptions)")
        config = SubscriberConfig.model_validate(request.model_dump(exclude={"name"}))
        rendition = Rendition(PixelFormat.from_name(config.format), config.width,
                              config.height, config.quality)
        store = self.daemon.store
        for name in cameras:
            limit = self.daemon.config.cameras[name].max_renditions
            if not store.is_wanted_rendition(name, rendition) and (
                    store.renditions_of(name) >= limit):
                raise ApiError(HTTPStatus.CONFLICT, "too_many_renditions",
                               f"camera {name!r} already converts to {limit} renditions "
                               "(max_renditions): use one of the existing format and size "
                               "combinations")
        path = config.fifo or self.daemon.config.fifo_dir / f"{request.name}.fifo"
        try:
            check_allowed_path(path, self.daemon.allowed_fifo_dirs())
        except FifoError as exc:
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused", str(exc)) from None
        self._check_subscription_path(path, peer, request.name)
        try:
            added = self.daemon.add_dynamic(request.name, config)
        except FifoError as exc:
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused", str(exc)) from None
        if not added:  # a concurrent request took the name meanwhile
            raise _exists(request.name)
        return json_reply(self.subscription_status(request.name), HTTPStatus.CREATED)

    def _check_subscription_path(self, path: Path, peer: Peer, name: str) -> None:
        """The daemon creates a run-time subscription's FIFO itself, in a directory that
        exists: no directories are made, and no FIFO already in use or someone else's is
        taken over."""
        if not path.parent.is_dir():
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request",
                           f"fifo: {path.parent} is not an existing directory (the API does "
                           "not create directories)")
        resolved = os.path.realpath(path)
        names = {*self.daemon.config.subscribers, *self.daemon.dynamic}
        if any(os.path.realpath(self.daemon.fifo_path(n)) == resolved for n in names):
            raise ApiError(HTTPStatus.CONFLICT, "fifo_in_use",
                           f"{path} is another subscriber's FIFO")
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused",
                           f"{path}: cannot inspect: {exc.strerror}") from None
        if (info.st_dev, info.st_ino) in self.daemon.fifos_in_use():
            raise ApiError(HTTPStatus.CONFLICT, "fifo_in_use",
                           f"{path} is another subscriber's FIFO")
        if info.st_uid != os.geteuid():
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused",
                           f"{path} exists and belongs to uid {info.st_uid}: the daemon only "
                           "takes over FIFOs it made itself")
        if peer.uid is not None and peer.uid not in (0, os.geteuid()):
            if stat.S_ISFIFO(info.st_mode) and resolved == os.path.realpath(
                    self.daemon.config.fifo_dir / f"{name}.fifo"):
                # This name's own FIFO in the daemon's directory, used by no subscriber: a
                # run-time subscription's, left by the daemon's previous run (the directory
                # is kept across restarts). Replaced by a new one, not taken over: a reader
                # still on the old inode gets nothing. Without this a client (framebus
                # bridge) could not subscribe again under its name after `systemctl restart
                # framebus`; any other existing path stays refused.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(resolved)
                return
            raise ApiError(HTTPStatus.FORBIDDEN, "fifo_refused",
                           f"{path} exists: give a new path")

    def delete_subscription(self, _query: dict[str, str], name: str) -> Reply:
        """DELETE /v1/subscriptions/{name} (run-time subscriptions only)."""
        if name in self.daemon.config.subscribers:
            raise ApiError(HTTPStatus.CONFLICT, "configured",
                           f"{name!r} comes from the config file: edit it and reload")
        if name not in self.daemon.dynamic:
            raise _no_subscription(name)
        self.daemon.remove_dynamic(name)
        return json_reply({"deleted": name})
