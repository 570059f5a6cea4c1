"""Console consumers: ``framebus watch`` (live per-camera statistics) and ``framebus dump``.

``watch`` reads one or more subscriber FIFOs. Each FIFO gets its own reader thread (a
:class:`~framebus.client.Subscriber` with ``reopen=True``, so it survives daemon restarts); the
threads hand small per-frame samples (camera, size, format, latency, misses: never the pixels,
whose buffer the subscriber reuses) to the main thread through a bounded queue, and the main
thread prints one line per second per camera. A camera seen on more than one FIFO (two
subscribers of one camera) gets one line per FIFO, labelled ``camera@fifo``. What a stream says
besides frames (a camera reconnecting, down, idle or back; a daemon restart) is printed as it
comes, one line each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from framebus.client import Frame, StreamEvent, Subscriber
from framebus.errors import FramebusError
from framebus.imaging import ImageKind, encode_image, to_video_frame
from framebus.reading import MISSING_FIFO
from framebus.remote.cli_support import is_remote, parse_target
from framebus.wire import PixelFormat

if TYPE_CHECKING:
    from framebus.remote.consumer import RemoteSubscriber
    from framebus.remote.settings import RemoteConfig

_READ_POLL_S = 0.2  # a reader thread notices the stop request at least this often
_QUEUE_LIMIT = 4096  # samples waiting for the main thread (bounded: the reader waits)
_JOIN_TIMEOUT_S = 2.0


DEFAULT_FIFO_DIR = Path("/run/framebus")  # config's fifo_dir default (not imported: pydantic)


class _ConsumerLog(logging.Formatter):
    """The CLI's stderr line for what the consumer library warns about; a missing FIFO also
    gets where the daemon makes its FIFOs, which is what a person needs to fix the path."""

    def __init__(self, fifo_dir: Path, source: str) -> None:
        super().__init__()
        self.fifo_dir, self.source = fifo_dir, source

    def format(self, record: logging.LogRecord) -> str:
        text = f"framebus: {record.getMessage()}"
        if record.msg is MISSING_FIFO:
            text += (f"; the daemon makes its subscribers' FIFOs in fifo_dir {self.fifo_dir} "
                     f"({self.source})")
        return text


@contextlib.contextmanager
def consumer_log(config: Path | None) -> Iterator[None]:
    """While a CLI consumer runs, print the library's warnings (a FIFO that does not exist)
    to stderr, naming the fifo_dir of ``config`` (else the default one)."""
    if config is not None:
        from framebus.config import load_config

        fifo_dir, source = load_config(config).fifo_dir, f"from {config}"
    else:
        fifo_dir, source = DEFAULT_FIFO_DIR, "the default; -c CONFIG reads the daemon's"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsumerLog(fifo_dir, source))
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger("framebus"), logging.getLogger("zenoh")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def remote_log(paths: Sequence[Path]) -> None:
    """With a ``zenoh:`` target, zenoh's warnings to stderr, a TLS handshake that the router
    refused included (init_zenoh_log). Called before ``sys.stdout`` is handed on: it moves
    fd 1 (zenoh's log) and gives ``sys.stdout`` a new object on the original stdout."""
    if any(is_remote(path) for path in paths):
        from framebus.remote.session import init_zenoh_log

        init_zenoh_log()


@dataclass(frozen=True, slots=True)
class Sample:
    """What ``watch`` keeps of one received frame (no pixels)."""

    path: Path
    camera: str
    missed: int
    latency_ns: int
    size: str
    fmt: str

    @classmethod
    def of(cls, path: Path, frame: Frame) -> Sample:
        """The sample of ``frame``, read from the FIFO at ``path``."""
        header = frame.header
        return cls(path, frame.camera, frame.missed, frame.latency_ns,
                   f"{header.width}x{header.height}", str(header.format))


@dataclass
class CameraWindow:
    """What one camera did during the current one-second window."""

    frames: int = 0
    missed: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    size: str = "-"
    fmt: str = "-"

    def add(self, frame: Frame) -> None:
        """Count one frame into the window."""
        self.add_sample(Sample.of(Path(), frame))

    def add_sample(self, sample: Sample) -> None:
        """Count one frame, given as a :class:`Sample`, into the window."""
        self.frames += 1
        self.missed += sample.missed
        self.latencies_ns.append(sample.latency_ns)
        self.size = sample.size
        self.fmt = sample.fmt

    def line(self, camera: str, seconds: float) -> str:
        """One human-readable status line for the window."""
        lat = sorted(self.latencies_ns)
        if lat:
            latency = (f"latency p50 {lat[len(lat) // 2] / 1e6:6.2f} ms "
                       f"max {lat[-1] / 1e6:6.2f} ms")
        else:
            latency = "latency -"
        return (f"{camera:<16} {self.frames / seconds:6.1f} fps  {self.size:>9} {self.fmt:<7} "
                f"{latency}  missed {self.missed}")


@dataclass(frozen=True, slots=True)
class _ReaderFailed:
    path: Path
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Event:
    path: Path
    event: StreamEvent

    def line(self) -> str:
        """E.g. ``lobby: reconnecting (backoff: connection refused)``."""
        event = self.event
        if not event.camera:
            return f"{self.path}: {event.kind} ({event.reason})"
        return f"{event.camera}: {event.kind} ({event.reason})"


_Item = Sample | _ReaderFailed | _Event


def open_reader(path: Path, remote: RemoteConfig | None, timeout: float | None = None,
                on_event: Callable[[StreamEvent], None] | None = None
                ) -> Subscriber | RemoteSubscriber:
    """A reader of a FIFO (reopened across daemon restarts), or of a camera on another host
    for a ``zenoh:`` target."""
    if is_remote(path):
        from framebus.remote.consumer import RemoteSubscriber

        host, camera, rendition = parse_target(path)
        return RemoteSubscriber(camera, host=host, rendition=rendition, config=remote,
                                timeout=timeout, on_event=on_event)
    return Subscriber(path, reopen=True, on_event=on_event, timeout=timeout)


def _read_fifo(path: Path, samples: queue.Queue[_Item], stop: threading.Event,
               remote: RemoteConfig | None) -> None:
    """Reader thread: turn every frame on ``path`` into a sample until ``stop`` is set."""
    try:
        def on_event(event: StreamEvent) -> None:
            _put(samples, _Event(path, event), stop)

        with open_reader(path, remote, on_event=on_event) as sub:
            while not stop.is_set():
                try:
                    frame = sub.read(timeout=_READ_POLL_S)
                except TimeoutError:
                    continue
                if frame is None:  # reopen=True never ends at EOF; a remote one when closed
                    break
                _put(samples, Sample.of(path, frame), stop)
    except Exception as exc:  # handed to the main thread, which raises it
        _put(samples, _ReaderFailed(path, exc), stop)


def _put(samples: queue.Queue[_Item], item: _Item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            samples.put(item, timeout=_READ_POLL_S)
            return
        except queue.Full:
            continue


def watch(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    duration: float | None,
    count: int | None,
    out: TextIO,
    should_stop: Callable[[], bool] | None = None,
    remote: RemoteConfig | None = None,
) -> int:
    """Print one line per second per camera seen on any of ``paths`` (FIFOs, or ``zenoh:``
    targets on other hosts, reached as ``remote`` says).

    Stops after ``duration`` seconds, after ``count`` frames in total, or as soon as
    ``should_stop()`` (checked at least once a second) returns True. A second without frames
    on a FIFO prints ``waiting for frames on <fifo>``. An error of one reader (say, a path that
    is not a FIFO) is raised here.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    fifos = [Path(p) for p in paths]
    if not fifos:
        raise ValueError("watch needs at least one FIFO")
    samples: queue.Queue[_Item] = queue.Queue(maxsize=_QUEUE_LIMIT)
    stop_readers = threading.Event()
    readers = [threading.Thread(target=_read_fifo, args=(path, samples, stop_readers, remote),
                                name=f"watch:{path.name}", daemon=True) for path in fifos]
    for reader in readers:
        reader.start()
    try:
        _watch_loop(fifos, samples, duration, count, out, should_stop)
    finally:
        stop_readers.set()
        for reader in readers:
            reader.join(_JOIN_TIMEOUT_S)
    return 0


def _watch_loop(
    fifos: list[Path],
    samples: queue.Queue[_Item],
    duration: float | None,
    count: int | None,
    out: TextIO,
    should_stop: Callable[[], bool] | None,
) -> None:
    started = time.monotonic()
    window_start = started
    windows: dict[tuple[str, Path], CameraWindow] = {}
    camera_paths: dict[str, set[Path]] = {}
    seen = 0
    while True:
        now = time.monotonic()
        if duration is not None and now - started >= duration:
            break
        if count is not None and seen >= count:
            break
        if should_stop is not None and should_stop():
            break
        if now - window_start >= 1.0:
            _report(windows, camera_paths, now - window_start, fifos, out)
            windows, window_start = {}, now
        try:
            item = samples.get(timeout=max(0.01, window_start + 1.0 - now))
        except queue.Empty:
            continue
        if isinstance(item, _ReaderFailed):
            raise item.error
        if isinstance(item, _Event):
            print(item.line(), file=out, flush=True)
            continue
        camera_paths.setdefault(item.camera, set()).add(item.path)
        windows.setdefault((item.camera, item.path), CameraWindow()).add_sample(item)
        seen += 1
    if windows:
        _report(windows, camera_paths, time.monotonic() - window_start, fifos, out)


def _report(
    windows: dict[tuple[str, Path], CameraWindow],
    camera_paths: dict[str, set[Path]],
    seconds: float,
    fifos: list[Path],
    out: TextIO,
) -> None:
    lines = []
    for (camera, path), window in windows.items():
        label = camera if len(camera_paths[camera]) == 1 else f"{camera}@{path.stem}"
        lines.append(window.line(label, seconds))
    for line in sorted(lines):
        print(line, file=out, flush=True)
    active = {path for _, path in windows}
    for path in fifos:
        if path not in active:
            print(f"waiting for frames on {path}", file=out, flush=True)


def dump(path: Path, out_dir: Path, count: int, kind: ImageKind, timeout: float | None,
         remote: RemoteConfig | None = None) -> int:
    """Save ``count`` frames as image files named ``<camera>-<seq>.<ext>``; print each path
    (a FIFO, or a ``zenoh:`` target on another host)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "png" if kind == "png" else "jpg"
    with open_reader(path, remote, timeout=timeout) as sub:
        for _ in range(count):
            frame = sub.read()
            if frame is None:
                raise FramebusError(f"{path}: the stream ended")
            target = out_dir / f"{frame.camera}-{frame.seq:08d}.{ext}"
            if frame.header.format is PixelFormat.JPEG and kind == "jpeg":
                data = bytes(frame.payload)  # already a JPEG: keep it bit-exact
            else:
                data = encode_image(to_video_frame(frame.header, frame.payload), kind)
            target.write_bytes(data)
            print(target, file=sys.stdout, flush=True)
    return 0
