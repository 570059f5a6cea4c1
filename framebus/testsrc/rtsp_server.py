#!/usr/bin/python3
"""Standalone loopback RTSP server for tests: loops pre-encoded Annex-B clips in real time.

Run it with the *system* Python (it needs ``gi`` with GstRtspServer, and nothing else: it
must not import framebus, numpy or av)::

    python3 rtsp_server.py --port 0 \\
        --mount cam1=/cache/h264_640x360.h264 \\
        --mount cam2=/cache/clip.h265,codec=h265,fps=30 \\
        --mount priv=/cache/clip.h264,user=alice,password=secret

Once every clip is loaded and the listening socket is bound it prints exactly one line,
``READY <port>``, to stdout. It binds 127.0.0.1 only. SIGTERM/SIGINT exit with status 0 (so
does EOF on stdin with ``--exit-on-stdin-eof``, which lets a test harness make sure the server
never outlives it). Exit status 1 means a clip could not be loaded or the port is taken.

How a mount works
-----------------
At start-up each clip is parsed once (``filesrc ! h264parse|h265parse ! appsink``) into a
list of access units kept in memory. Each mount is a *shared* media factory whose pipeline is::

    appsrc name=src is-live=true format=time max-buffers=4 block=false
        caps=video/x-h264,stream-format=byte-stream,alignment=au,framerate=FPS/1
      ! rtph264pay name=pay0 pt=96          (video/x-h265 and rtph265pay for H.265)

Nothing is decoded or encoded while serving. The appsrc is a *live* source; every time it asks
for data we push the next access unit (wrapping from the last one back to the first, which is
an IDR with in-band parameter sets) stamped ``pts = offset + n * 1/fps``. The sinks that
gst-rtsp-server puts after the payloader synchronise on the clock, so the stream leaves at
``fps`` frames per second with monotonic RTP timestamps across loops; the small appsrc queue
keeps at most a few frames ahead. ``offset`` is the pipeline's running time when the first
buffer is pushed. If the process was stopped (SIGSTOP) and continued, the next timestamp would
lie in the past and the sinks would burst the whole backlog; instead ``offset`` is moved
forward, so after SIGCONT the stream simply carries on in real time like a camera would.

Why not ``multifilesrc loop=true ! h264parse``: multifilesrc reads a whole file as one
buffer and stamps it with a per-file timestamp, so the parser's interpolated timestamps go
backwards or stall at each wrap, and a payloader behind a non-live source follows the
timestamps it is given (bursts or stalls). Seeking on EOS would need a flushing seek inside a
pipeline that gst-rtsp-server controls (and which it seeks itself when a client sends a Range
header). A live appsrc with our own timestamps sidesteps all of this, costs one Python
callback per frame, and makes a client that joins a shared media later simply start at the
current position.

Authentication
--------------
If any mount has ``user=`` and ``password=``, the server gets a ``GstRtspServer.RTSPAuth``.
Each distinct user/password pair gets a Basic-auth entry whose token carries its own media
factory role; unauthenticated requests (and wrong credentials) get a default token with the
role ``anonymous``. Every role has the *access* permission on every mount, because a failed
access check is answered with 404 and libavformat (like most clients) only sends credentials
after a 401 challenge. Open mounts grant *construct* to every role, protected mounts only to
the role of their own credentials; a failed construct check is answered with
``401 Unauthorized`` plus ``WWW-Authenticate: Basic realm=...``. That check runs for every
client, also when the shared media already exists. Credentials are never printed or logged.

The listening socket is bound by GLib with ``allow_reuse=TRUE`` (SO_REUSEADDR), so a server
that was SIGKILLed can be restarted on the same port immediately even while old connections
sit in TIME_WAIT.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CODECS = {
    "h264": ("h264parse", "video/x-h264", "rtph264pay"),
    "h265": ("h265parse", "video/x-h265", "rtph265pay"),
}
# If the next timestamp is this far behind the running time (process stopped, starved CPU),
# skip ahead instead of bursting the backlog.
_MAX_LAG_NS = 300 * Gst.MSECOND
_LOAD_TIMEOUT_NS = 30 * Gst.SECOND


def _log(message: str) -> None:
    print(f"rtsp_server[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MountSpec:
    """One ``--mount`` argument, parsed."""

    name: str
    path: str
    codec: str
    fps: int
    user: str | None
    password: str | None

    @property
    def protected(self) -> bool:
        return self.user is not None


def parse_mount(text: str) -> MountSpec:
    """Parse ``NAME=PATH[,codec=h264|h265][,fps=N][,user=U,password=P|password_env=VAR]``.

    Values cannot contain commas. Error messages never include the password.
    """
    head, _, rest = text.partition(",")
    name, sep, path = head.partition("=")
    if not sep or not path:
        raise ValueError("mount must look like NAME=PATH[,key=value...]")
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid mount name {name!r} (letters, digits, _ . - only)")
    options: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"mount {name}: option without '=' (expected key=value)")
            if key not in ("codec", "fps", "user", "password", "password_env"):
                raise ValueError(f"mount {name}: unknown option {key!r}")
            options[key] = value
    lowered = path.lower()
    default_codec = "h265" if lowered.endswith((".h265", ".265", ".hevc")) else "h264"
    codec = options.get("codec", default_codec)
    if codec not in _CODECS:
        raise ValueError(f"mount {name}: codec must be h264 or h265, not {codec!r}")
    try:
        fps = int(options.get("fps", "25"))
    except ValueError:
        raise ValueError(f"mount {name}: fps must be an integer") from None
    if not 1 <= fps <= 240:
        raise ValueError(f"mount {name}: fps must be in 1..240")
    user = options.get("user")
    password = options.get("password")
    if "password_env" in options:  # keeps the secret out of /proc/*/cmdline
        password = os.environ.get(options["password_env"])
        if password is None:
            raise ValueError(f"mount {name}: environment variable {options['password_env']} "
                             "is not set")
    if (user is None) != (password is None):
        raise ValueError(f"mount {name}: user and password go together")
    if user is not None and (not user or ":" in user):
        raise ValueError(f"mount {name}: user must be non-empty and contain no ':'")
    if not os.path.isfile(path):
        raise ValueError(f"mount {name}: no such file {path!r}")
    return MountSpec(name, path, codec, fps, user, password)


def load_access_units(path: str, codec: str) -> list[Gst.Buffer]:
    """Parse an Annex-B file into a list of access-unit buffers (parsed once, kept in memory)."""
    parser, media_type, _ = _CODECS[codec]
    pipeline = Gst.parse_launch(
        f"filesrc name=file ! {parser} ! "
        f"{media_type},stream-format=byte-stream,alignment=au ! "
        "appsink name=sink sync=false emit-signals=false max-buffers=0"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    units: list[Gst.Buffer] = []
    pipeline.set_state(Gst.State.PLAYING)
    try:
        while True:
            sample = sink.emit("try-pull-sample", _LOAD_TIMEOUT_NS)
            if sample is None:
                if sink.get_property("eos"):
                    break
                bus_msg = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
                if bus_msg is not None:
                    err, _dbg = bus_msg.parse_error()
                    raise RuntimeError(f"cannot parse {path}: {err.message}")
                raise RuntimeError(f"timed out parsing {path}")
            units.append(sample.get_buffer())
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not units:
        raise RuntimeError(f"{path}: no access units found")
    if units[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
        raise RuntimeError(f"{path}: does not start with a keyframe, cannot loop it")
    return units


class LoopFeeder:
    """Feeds one media's appsrc: loops the access units with real-time, monotonic timestamps."""

    def __init__(self, name: str, units: list[Gst.Buffer], fps: int, appsrc: Gst.Element) -> None:
        self._name = name
        self._units = units
        self._fps = fps
        self._appsrc = appsrc
        self._lock = threading.Lock()
        self._n = 0  # frames pushed so far (never wraps)
        self._offset: int | None = None
        self._skips = 0
        appsrc.connect("need-data", self._on_need_data)

    def _running_time(self) -> int | None:
        clock = self._appsrc.get_clock()
        if clock is None:
            return None
        return int(clock.get_time() - self._appsrc.get_base_time())

    def _on_need_data(self, appsrc: Gst.Element, _length: int) -> None:
        with self._lock:
            now = self._running_time()
            step = Gst.util_uint64_scale_int(self._n, Gst.SECOND, self._fps)
            if self._offset is None:
                self._offset = now if now is not None else 0
            pts = self._offset + step
            if now is not None and pts + _MAX_LAG_NS < now:
                # We were stopped or starved: resume in real time instead of bursting.
                self._offset += now - pts
                pts = now
                self._skips += 1
                if self._skips <= 3 or self._skips % 100 == 0:
                    _log(f"mount {self._name}: behind real time, skipped ahead ({self._skips})")
            duration = Gst.util_uint64_scale_int(1, Gst.SECOND, self._fps)
            buf = self._units[self._n % len(self._units)].copy()
            buf.unset_flags(Gst.BufferFlags.DISCONT)
            buf.pts = pts
            buf.dts = pts
            buf.duration = duration
            self._n += 1
        appsrc.emit("push-buffer", buf)


class LoopFactory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
    """A shared media factory whose pipeline is a live appsrc looping one clip."""

    def __init__(self, spec: MountSpec, units: list[Gst.Buffer]) -> None:
        super().__init__()
        self._spec = spec
        self._units = units
        self._feeders: list[LoopFeeder] = []
        _, media_type, payloader = _CODECS[spec.codec]
        self.set_launch(
            "( appsrc name=src is-live=true format=time max-buffers=4 block=false "
            f"caps={media_type},stream-format=byte-stream,alignment=au,"
            f"framerate={spec.fps}/1 "
            f"! {payloader} name=pay0 pt=96 )"
        )
        self.set_shared(True)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        feeder = LoopFeeder(self._spec.name, self._units, self._spec.fps, appsrc)
        # Keep the feeder alive as long as its media; drop it when the media is finished.
        self._feeders.append(feeder)
        media.connect("unprepared", self._on_media_unprepared, feeder)

    def _on_media_unprepared(self, _media: object, feeder: LoopFeeder) -> None:
        if feeder in self._feeders:
            self._feeders.remove(feeder)


def build_server(specs: list[MountSpec], port: int) -> GstRtspServer.RTSPServer:
    """Create the server, its mounts and (if needed) its authentication."""
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    # A listen backlog big enough for many cameras connecting at once.
    server.set_backlog(64)

    credentials: dict[tuple[str, str], str] = {}
    for spec in specs:
        if spec.user is not None and spec.password is not None:
            credentials.setdefault((spec.user, spec.password), f"role{len(credentials)}")
    anonymous_role = "anonymous"
    all_roles = [anonymous_role, *credentials.values()]

    if credentials:
        auth = GstRtspServer.RTSPAuth()
        default_token = GstRtspServer.RTSPToken()
        default_token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, anonymous_role)
        auth.set_default_token(default_token)
        for (user, password), role in credentials.items():
            token = GstRtspServer.RTSPToken()
            token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, role)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)

    mounts = server.get_mount_points()
    cache: dict[tuple[str, str], list[Gst.Buffer]] = {}
    for spec in specs:
        key = (spec.path, spec.codec)
        if key not in cache:
            cache[key] = load_access_units(spec.path, spec.codec)
        factory = LoopFactory(spec, cache[key])
        if credentials:
            # Every role may *access* (see) every mount: a refused access check answers
            # 404, and clients such as libavformat only send credentials after a 401.
            # The *construct* check answers 401 (with WWW-Authenticate), so that one is
            # where a protected mount refuses roles other than its own.
            permissions = GstRtspServer.RTSPPermissions()
            if spec.user is not None and spec.password is not None:
                construct_roles = [credentials[(spec.user, spec.password)]]
            else:
                construct_roles = all_roles
            for role in all_roles:
                permissions.add_permission_for_role(
                    role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True
                )
                permissions.add_permission_for_role(
                    role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, role in construct_roles
                )
            factory.set_permissions(permissions)
        mounts.add_factory(f"/{spec.name}", factory)
        _log(
            f"mount /{spec.name}: {os.path.basename(spec.path)} {spec.codec} {spec.fps} fps, "
            f"{len(cache[key])} access units{', auth required' if spec.protected else ''}"
        )
    return server


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT, return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    parser.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="NAME=PATH[,codec=h264|h265][,fps=N][,user=U,password=P]",
        help="serve PATH (Annex-B) at rtsp://127.0.0.1:PORT/NAME; repeatable",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin reaches EOF (give it a pipe: the server dies with its parent)",
    )
    args = parser.parse_args(argv)
    if not args.mount:
        parser.error("at least one --mount is required")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    specs: list[MountSpec] = []
    for text in args.mount:
        try:
            specs.append(parse_mount(text))
        except ValueError as exc:
            parser.error(str(exc))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        parser.error("mount names must be unique")

    Gst.init(None)
    loop = GLib.MainLoop()
    try:
        server = build_server(specs, args.port)
    except (RuntimeError, GLib.Error) as exc:
        _log(f"error: {exc}")
        return 1

    def on_signal(signum: int) -> bool:
        _log(f"signal {signum}, shutting down")
        loop.quit()
        return GLib.SOURCE_REMOVE  # type: ignore[no-any-return]

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal, signum)

    if args.exit_on_stdin_eof:

        def watch_stdin() -> None:
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            _log("stdin closed, shutting down")
            GLib.idle_add(loop.quit)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    try:
        source_id = server.attach(None)
    except GLib.Error as exc:
        _log(f"error: cannot listen on 127.0.0.1:{args.port}: {exc.message}")
        return 1
    if source_id == 0:
        _log(f"error: cannot listen on 127.0.0.1:{args.port}")
        return 1
    # Remove idle sessions periodically so abandoned clients do not pile up.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])

    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()

    # Close client connections so their media pipelines stop, then leave.
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    GLib.source_remove(source_id)
    sys.stdout.flush()
    sys.stderr.flush()
    # Streaming threads may still be winding down; do not wait for interpreter teardown.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
