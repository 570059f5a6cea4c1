"""YAML configuration loaded into frozen, typed objects (pydantic), with one-line errors.

Every error names the key path and what was expected, e.g.
``cameras.front.read_timeout: expected a duration like '5s', got 'soon'``. Passwords are
resolved at load time (inline, file, environment variable or systemd credential) into
``SecretStr`` values that print as ``**********``; no error message ever echoes one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from framebus.configcheck import validation_error
from framebus.errors import ConfigError
from framebus.hwdecode.settings import HwaccelSettings, with_defaults
from framebus.remote.settings import (
    NAME,
    RemoteConfig,
    RemoteExport,
    check_exports,
    check_zenoh_url,
    host_name,
)
from framebus.tlsconfig import HttpTls, check_exposure
from framebus.urls import find_credentials

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# the pattern is OpenAPI's too (ECMA "$" is the end); Python's "$" also matches before a
# final newline, so Python checks use fullmatch
CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# what a URL with credentials is told (README: Configuration and systemd)
CREDENTIALS_GO_ELSEWHERE = ("give the camera username: and one of password_credential: (a "
                            "systemd credential), password_file:, password_env: or password:")


def parse_duration(value: object) -> float:
    """``'500ms'``, ``'5s'``, ``'2m'``, ``'1h'`` or a plain number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        raise ValueError(f"expected a duration like '5s', got {value!r}")
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class BackoffConfig(_Strict):
    """Reconnect delays: exponential from ``initial`` up to ``max``, randomised by ``jitter``."""

    initial: Duration = 0.5
    max: Duration = 30.0
    jitter: float = Field(0.2, ge=0.0, le=1.0)
    reset_after: Duration = 30.0
    auth_failure: Duration = 60.0

    @model_validator(mode="after")
    def _initial_below_max(self) -> BackoffConfig:
        if self.initial > self.max:
            raise ValueError("initial must not exceed max")
        return self


class CameraConfig(_Strict, HwaccelSettings):
    """One camera. Credentials never live in ``url``; its hwaccel keys come from
    HwaccelSettings (or the top level's ``defaults``)."""

    url: str
    transport: Literal["tcp", "udp", "auto"] = "tcp"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    password_credential: str | None = None  # a file name in $CREDENTIALS_DIRECTORY
    open_timeout: Duration = 5.0
    read_timeout: Duration = 5.0
    stall_timeout: Duration = 5.0
    backoff: BackoffConfig = BackoffConfig()
    decoder_threads: int = Field(1, ge=0, le=16)  # 0: let FFmpeg choose
    idle_decode: Literal["keyframes", "all"] = "keyframes"
    # a stream declaring more pixels is refused before its frames are decoded (state and
    # metric reason "too_large"); renditions are capped per camera
    max_pixels: int = Field(8192 * 8192, ge=64, le=1 << 30)
    max_renditions: int = Field(8, ge=1, le=64)
    # fleet: the host whose daemon runs this camera (`framebus run --host`); none: every host
    host: str | None = Field(None, pattern=NAME.pattern)
    remote: list[RemoteExport] = Field(default_factory=list)  # what the bridge exports

    @field_validator("remote")
    @classmethod
    def _export_names(cls, remote: list[RemoteExport]) -> list[RemoteExport]:
        return check_exports(remote)

    @field_validator("url")
    @classmethod
    def _url_without_credentials(cls, url: str) -> str:
        # never echo the URL or a part of it: the value may be the very secret refused
        parts = urlsplit(url)
        if parts.scheme == "zenoh":  # a camera another host's bridge exports
            return check_zenoh_url(url)
        if parts.scheme in ("rtsp", "rtsps"):
            found = find_credentials(url)
            if found:
                where = found[0]
                what = ("credentials in the URL" if where.where == "userinfo"
                        else f"credentials in the URL's {where.where} ({where.key}=...)")
                raise ValueError(f"{what} are not allowed: {CREDENTIALS_GO_ELSEWHERE}")
            if not parts.hostname:
                raise ValueError("expected rtsp://host[:port]/path")
            try:
                parts.port  # noqa: B018  (raises on a port that is not a number)
            except ValueError:
                raise ValueError("expected rtsp://host[:port]/path, the port a number") from None
        elif parts.scheme not in ("", "file", "lavfi"):
            raise ValueError(f"expected an rtsp://, rtsps://, zenoh:, file path or lavfi: URL, "
                             f"got scheme {parts.scheme!r}")
        return url

    @property
    def decoding(self) -> HwaccelSettings:
        """The camera's hardware decoding settings (hwaccel, hwaccel_device, hwaccel_required:
        framebus.hwdecode; software with a visible reason unless required)."""
        return HwaccelSettings(hwaccel=self.hwaccel, hwaccel_device=self.hwaccel_device,
                               hwaccel_required=self.hwaccel_required)

    @model_validator(mode="after")
    def _one_password_source(self) -> CameraConfig:
        sources = [name for name in ("password", "password_file", "password_env",
                                     "password_credential") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ValueError(f"give one password source, not {' and '.join(sources)}")
        if sources and self.username is None:
            raise ValueError(f"{sources[0]} needs a username")
        if self.username is not None and urlsplit(self.url).scheme not in ("rtsp", "rtsps"):
            # anything else would put them where they mean nothing (a lavfi filter graph)
            raise ValueError("username and password are for rtsp:// and rtsps:// cameras")
        return self


def parse_mode(value: object) -> int:
    """A file mode: ``0660`` (YAML reads it as octal already), ``"0660"`` or ``"660"``."""
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode like '0660', got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError(f"expected an octal file mode like '0660', got {value!r}")
    return value


FileMode = Annotated[int, BeforeValidator(parse_mode)]


def _usable_path(path: Path) -> Path:
    text = str(path)
    if "\0" in text:
        raise ValueError("a path may not contain a NUL character")
    if len(os.fsencode(text)) > 4095:
        raise ValueError("path longer than 4095 bytes")
    return path


FifoPath = Annotated[Path, AfterValidator(_usable_path)]
PixelFormatName = Literal["bgr24", "rgb24", "gray", "yuv420p", "nv12", "jpeg"]


class SubscriberConfig(_Strict):
    """One long-lived subscriber: which camera (or cameras, interleaved in one FIFO), in which
    rendition, through which FIFO."""

    camera: str | None = None
    cameras: list[str] | Literal["*"] | None = None  # "*": every configured camera
    format: PixelFormatName = "bgr24"
    quality: int = Field(85, ge=1, le=100)  # jpeg only
    width: int | None = Field(None, ge=1, le=32768)  # one side given keeps the aspect ratio
    height: int | None = Field(None, ge=1, le=32768)
    max_fps: float | None = Field(None, gt=0, le=1000)
    fifo: FifoPath | None = None  # default: <fifo_dir>/<name>.fifo
    pipe_size: int = Field(1 << 20, ge=4096, le=1 << 30)
    mode: FileMode = 0o660
    group: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
    # shm: pixels go through a shared-memory segment beside the FIFO (one per camera, so a
    # multi-camera subscriber reads several), headers through the FIFO
    transport: Literal["fifo", "shm"] = "fifo"
    # protocol 1.2 STATE messages (camera reconnecting, down, idle, back) in the stream; off
    # keeps the stream readable by 1.0/1.1 readers, which reject them
    state_messages: bool = True

    @model_validator(mode="after")
    def _one_camera_source(self) -> SubscriberConfig:
        if (self.camera is None) == (self.cameras is None):
            raise ValueError("give camera (one) or cameras (a list, or \"*\" for all), "
                             "not both or neither")
        if isinstance(self.cameras, list):
            if not self.cameras:
                raise ValueError("cameras: expected at least one camera")
            if len(set(self.cameras)) != len(self.cameras):
                raise ValueError("cameras: a camera is listed twice")
        return self

    def names(self, configured: Iterable[str]) -> tuple[str, ...]:
        """The cameras this subscriber reads, given the configured ones (for "*")."""
        if self.camera is not None:
            return (self.camera,)
        if self.cameras == "*":
            return tuple(sorted(configured))
        return tuple(self.cameras or ())

    @model_validator(mode="after")
    def _shm_carries_raw_frames(self) -> SubscriberConfig:
        if self.transport == "shm" and self.format == "jpeg":
            raise ValueError("transport shm carries raw formats (bgr24, rgb24, gray, yuv420p, "
                             "nv12), for one camera or several; jpeg frames are small: use "
                             "transport fifo")
        return self


class HttpConfig(HttpTls):
    """The control plane: HTTP API and /metrics; HTTPS with the ``tls_*`` keys (tlsconfig)."""

    enabled: bool = True
    listen: str = "127.0.0.1:8470"  # host:port; port 0 picks a free one
    # serve on this Unix socket: instead of TCP, or beside it when listen is given too
    unix_socket: Path | None = None
    token: SecretStr | None = None  # bearer token required on every request, if set
    token_file: Path | None = None
    allowed_fifo_dirs: list[Path] = Field(default_factory=list)  # besides fifo_dir
    wait_timeout: Duration = 5.0  # longest wait for newer_than and for a FIFO reader to drain
    max_body_bytes: int = Field(65536, ge=256, le=1 << 20)
    allowed_hosts: list[str] = Field(default_factory=list)  # Host names besides IPs, localhost
    max_connections: int = Field(512, ge=4, le=65536)  # kept below the fd limit at start
    head_timeout: Duration = 10.0  # a request head, and the keep-alive idle time
    body_timeout: Duration = 10.0
    write_timeout: Duration = 30.0
    workers: int = Field(4, ge=1, le=64)  # threads for snapshots, conversions, frame requests
    max_subscriptions: int = Field(64, ge=0, le=4096)  # run-time subscriptions, all cameras
    max_live_streams: int = Field(8, ge=0, le=256)  # MJPEG live views at once (the web page)
    live_max_seconds: Duration = 3600.0  # a live view ends after this (the page renews it)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected host:port like '127.0.0.1:8470', got {listen!r}")
        return listen

    @model_validator(mode="after")
    def _not_exposed_in_plain(self) -> HttpConfig:
        tcp = self.unix_socket is None or "listen" in self.model_fields_set  # as control.py
        check_exposure(self, self.listen, self.enabled and tcp)
        return self


class Config(_Strict):
    """The whole daemon configuration."""

    fifo_dir: Path = Path("/run/framebus")
    cameras: dict[str, CameraConfig] = Field(default_factory=dict)
    subscribers: dict[str, SubscriberConfig] = Field(default_factory=dict)
    http: HttpConfig = HttpConfig()
    remote: RemoteConfig = RemoteConfig()
    defaults: HwaccelSettings = HwaccelSettings()  # for cameras that do not set these keys

    @model_validator(mode="before")
    @classmethod
    def _camera_defaults(cls, data: object) -> object:
        return with_defaults(data)

    @field_validator("subscribers")
    @classmethod
    def _subscriber_names(
        cls, subscribers: dict[str, SubscriberConfig]
    ) -> dict[str, SubscriberConfig]:
        for name in subscribers:
            if not CAMERA_NAME.fullmatch(name):
                raise ValueError(f"subscriber name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - "
                                 "and start with a letter or digit")
        return subscribers

    @model_validator(mode="after")
    def _subscribers_name_known_cameras(self) -> Config:
        for name, sub in self.subscribers.items():
            key = "camera" if sub.camera is not None else "cameras"
            for camera in sub.names(self.cameras):
                if camera not in self.cameras:
                    raise ValueError(f"subscribers.{name}.{key}: unknown camera {camera!r}")
        return self

    def fifo_path(self, name: str) -> Path:
        """Where subscriber ``name``'s FIFO lives."""
        return self.subscribers[name].fifo or self.fifo_dir / f"{name}.fifo"

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, cameras: dict[str, CameraConfig]) -> dict[str, CameraConfig]:
        for name in cameras:
            if not CAMERA_NAME.fullmatch(name):
                raise ValueError(f"camera name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - "
                                 "and start with a letter or digit")
        return cameras


def resolve_password(camera: CameraConfig, name: str) -> SecretStr | None:
    """The camera's password from whichever source it names; ConfigError names the key."""
    where = f"cameras.{name}"
    if camera.password is not None:
        return camera.password
    try:
        if camera.password_file is not None:
            return SecretStr(camera.password_file.read_text().strip())
        if camera.password_credential is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(f"{where}.password_credential: $CREDENTIALS_DIRECTORY is not "
                                  "set (use LoadCredential= in the unit)")
            return SecretStr((Path(directory) / camera.password_credential).read_text().strip())
    except OSError as exc:
        key = "password_file" if camera.password_file is not None else "password_credential"
        raise ConfigError(f"{where}.{key}: cannot read: {exc.strerror}") from None
    if camera.password_env is not None:
        value = os.environ.get(camera.password_env)
        if value is None:
            raise ConfigError(f"{where}.password_env: environment variable "
                              f"{camera.password_env} is not set")
        return SecretStr(value)
    return None


def parse_config(data: object, source: str = "config") -> Config:
    """Validate already-parsed YAML data; raise ConfigError naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, Config, source) from None
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file; every failure is a one-line ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_config(data, str(path))


def for_host(config: Config, override: str | None = None) -> Config:
    """A fleet config cut down to this host: the cameras without ``host:`` or with this
    host's name (``--host``, else ``remote.host``, else the hostname), and the subscribers of
    those. A config naming no host runs whole, as before."""
    if override is None and not any(camera.host for camera in config.cameras.values()):
        return config
    host = host_name(config.remote, override)
    cameras = {name: camera for name, camera in config.cameras.items()
               if camera.host in (None, host)}
    subscribers = {}
    for name, sub in config.subscribers.items():
        if sub.camera is not None:
            if sub.camera in cameras:
                subscribers[name] = sub
        elif isinstance(sub.cameras, list):
            kept = [camera for camera in sub.cameras if camera in cameras]
            if kept:
                subscribers[name] = sub.model_copy(update={"cameras": kept})
        else:  # "*": every camera this host runs
            subscribers[name] = sub
    return config.model_copy(update={"cameras": cameras, "subscribers": subscribers})


def resolve_passwords(config: Config) -> dict[str, SecretStr | None]:
    """Every camera's password, read once at load (and reload) time."""
    return {name: resolve_password(camera, name) for name, camera in config.cameras.items()}
