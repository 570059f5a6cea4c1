"""Benchmark 1, fan-out throughput: how many frames a second reach FIFO readers.

framebus: the real LatestFrameStore and FanoutLoop in this process, a synthetic camera
publishing ready-made bgr24 frames as fast as the loop takes them (``EagerPublisher``), 1, 4
and 16 subscribers with real FIFOs (1 MiB pipes, the default), each read by its own process
with framebus.client.Subscriber.

Baselines, same frames, same run:

* bare FIFO: a Python thread writing each whole frame with one blocking ``os.write`` into one
  FIFO (1 MiB pipe), read by one process with blocking ``os.readv`` into a reused buffer;
* ZeroMQ: PUB (zero-copy ``send(copy=False)``, SNDHWM 2, XPUB_NODROP so the publisher waits
  for the subscriber instead of spinning on drops) to one SUB process over ``ipc://``
  (RCVHWM 2, conflate off, ``recv(copy=False)``).

Both baselines run before and after the framebus cases and are averaged, so a change in the
machine's background load during the run moves the baseline with the framebus figures.

Throughput counts frames fully received inside the window (payload bytes for GB/s).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time

import av

from bench.common import (
    BenchError,
    BenchResult,
    Children,
    Context,
    Recorder,
    Samples,
    collect,
    fb_reader,
    fmt,
    measure,
    ratio_check,
    ratio_text,
    wait_first,
)
from bench.synthetic import EagerPublisher, frame_bytes, make_frames
from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.store import LatestFrameStore, Rendition
from framebus.wire import PixelFormat

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
SUBSCRIBERS = (1, 4, 16)
WINDOW_S = 4.0
WARMUP_S = 1.0
PIPE_SIZE = 1 << 20


class Throughput:
    """Frames and bytes all readers received in a window."""

    def __init__(self, samples: list[Samples], seconds: float, writer_cpu: float = 0.0,
                 reader_cpu: float = 0.0) -> None:
        self.readers = len(samples)
        self.frames = sum(s.frames for s in samples)
        self.bytes = sum(s.bytes for s in samples)
        self.seconds = seconds
        self.writer_cpu = writer_cpu  # CPU seconds of this process (the writing side)
        self.reader_cpu = reader_cpu  # CPU seconds of every reader process
        self.runs: list[float] = []  # frames/s of each run, when pooled

    @classmethod
    def mean(cls, runs: list[Throughput]) -> Throughput:
        """The runs pooled (frames and bytes over total time)."""
        pooled = cls([], sum(r.seconds for r in runs))
        pooled.readers = runs[0].readers
        pooled.frames = sum(r.frames for r in runs)
        pooled.bytes = sum(r.bytes for r in runs)
        pooled.writer_cpu = sum(r.writer_cpu for r in runs)
        pooled.reader_cpu = sum(r.reader_cpu for r in runs)
        pooled.runs = [r.fps for r in runs]
        return pooled

    @property
    def fps(self) -> float:
        """Aggregate frames per second."""
        return self.frames / self.seconds

    @property
    def gbps(self) -> float:
        """Aggregate GB/s of payload."""
        return self.bytes / self.seconds / 1e9

    @property
    def writer_cores(self) -> float:
        """Cores the writing process used."""
        return self.writer_cpu / self.seconds

    @property
    def reader_cores(self) -> float:
        """Cores the reader processes used together."""
        return self.reader_cpu / self.seconds


def _window(ctx: Context, recorders: list[Recorder], label: str, pid: int | None = None,
            alive: threading.Event | None = None) -> Throughput:
    def check() -> None:
        if alive is not None and not alive.is_set():
            raise BenchError(f"{label}: the writer stopped")

    wait_first(recorders, 20, check)
    time.sleep(WARMUP_S)
    seconds = ctx.seconds(WINDOW_S)
    session = None
    if ctx.profiler is not None and pid is not None:
        session = ctx.profiler.start(label, pid, seconds)
    pids = {"writer": os.getpid(), **{f"reader-{r.name}": r.pid for r in recorders}}
    window = measure(seconds, pids, alive=check)
    if session is not None and ctx.profiler is not None:
        ctx.profiler.finish(session)
    samples = [s.window(window.t0, window.t1) for s in collect(recorders)]
    readers_cpu = sum(v for k, v in window.cpu.items() if k.startswith("reader-"))
    return Throughput(samples, window.seconds, window.cpu["writer"], readers_cpu)


def run_framebus(ctx: Context, frames: list[av.VideoFrame], readers: int, label: str,
                 profile: bool) -> Throughput:
    """The real store and fan-out loop, ``readers`` subscriber processes."""
    store = LatestFrameStore()
    loop = FanoutLoop(store)
    rendition = Rendition(PixelFormat.BGR24)
    paths = [ctx.workdir / f"{label}-{i}.fifo" for i in range(readers)]
    for i, path in enumerate(paths):
        loop.add(SubscriberSpec(f"s{i}", "cam", rendition, path, pipe_size=PIPE_SIZE))
    publisher = EagerPublisher(store, loop, frames)
    children = Children()
    try:
        loop.start()
        publisher.start()
        recorders = [fb_reader(children, f"s{i}", path) for i, path in enumerate(paths)]
        return _window(ctx, recorders, label, os.getpid() if profile else None)
    finally:
        children.close()
        publisher.stop()
        loop.stop(drain_s=0.2)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def run_bare(ctx: Context, payloads: list[bytes], label: str) -> Throughput:
    """One blocking writer thread, one FIFO, one plain reader process."""
    path = ctx.workdir / f"{label}.fifo"
    os.mkfifo(path)
    stop = threading.Event()
    alive = threading.Event()
    alive.set()

    def writer() -> None:
        fd = -1
        try:
            deadline = time.monotonic() + 20
            while fd < 0 and not stop.is_set():
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: no reader yet
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.01)
            if fd < 0:
                return
            os.set_blocking(fd, True)
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            n = 0
            while not stop.is_set():
                view = memoryview(payloads[n % 2])
                while view:  # one write per frame (a blocking pipe write completes whole)
                    view = view[os.write(fd, view):]
                n += 1
        except BrokenPipeError:
            pass
        finally:
            alive.clear()
            if fd >= 0:
                os.close(fd)

    thread = threading.Thread(target=writer, name="bare-writer", daemon=True)
    children = Children()
    try:
        thread.start()
        recorder = Recorder(children, "bare", ["raw", str(path), "--frame-bytes",
                                               str(len(payloads[0]))])
        return _window(ctx, [recorder], label, alive=alive)
    finally:
        stop.set()
        children.close()
        thread.join(5)
        path.unlink()


def run_zmq(ctx: Context, payloads: list[bytes], label: str) -> Throughput:
    """ZeroMQ PUB (this process) to one SUB process over ipc://."""
    import zmq

    endpoint = f"ipc://{ctx.workdir / (label + '.sock')}"
    stop = threading.Event()
    alive = threading.Event()
    bound = threading.Event()

    def publisher() -> None:
        context = zmq.Context()
        sock = context.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.SNDHWM, 2)
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(endpoint)
            alive.set()
            bound.set()
            n = 0
            while not stop.is_set():
                if not sock.poll(100, zmq.POLLOUT):
                    continue
                try:
                    sock.send(payloads[n % 2], flags=zmq.NOBLOCK, copy=False)
                    n += 1
                except zmq.Again:
                    pass
        finally:
            alive.clear()
            bound.set()
            sock.close(0)
            context.term()

    thread = threading.Thread(target=publisher, name="zmq-pub", daemon=True)
    children = Children()
    try:
        thread.start()
        bound.wait(5)
        recorder = Recorder(children, "zmq", ["zmq", endpoint, "--hwm", "2"])
        return _window(ctx, [recorder], label, alive=alive)
    finally:
        stop.set()
        children.close()
        thread.join(5)


def run(ctx: Context) -> BenchResult:
    """Every size: bare FIFO, ZeroMQ, framebus with 1, 4 and 16 subscribers."""
    result = BenchResult("fanout", "Fan-out throughput (synthetic bgr24 frames, FIFO readers)")
    result.table.append(["frames", "transport", "readers", "frames/s (all)", "frames/s each",
                         "GB/s", "vs bare FIFO", "vs ZeroMQ", "writer cores", "reader cores"])
    bars: dict[str, float] = {}
    for size, (width, height) in SIZES.items():
        frames = make_frames(width, height)
        payloads = [frame_bytes(f) for f in frames]
        bare_runs = [run_bare(ctx, payloads, f"bare-{size}")]
        zmq_runs = [run_zmq(ctx, payloads, f"zmq-{size}")]
        fb = {n: run_framebus(ctx, frames, n, f"framebus-{size}-x{n}",
                              profile=ctx.profiler is not None and size == "1080p" and n in (1, 16))
              for n in SUBSCRIBERS}
        bare_runs.append(run_bare(ctx, payloads, f"bare-{size}"))
        zmq_runs.append(run_zmq(ctx, payloads, f"zmq-{size}"))
        bare, zmq_ = Throughput.mean(bare_runs), Throughput.mean(zmq_runs)
        for name, tp in (("bare FIFO", bare), ("ZeroMQ ipc", zmq_)):
            result.table.append([size, name, "1", fmt(tp.fps, 1), fmt(tp.fps, 1),
                                 fmt(tp.gbps, 3), ratio_text(tp.fps / bare.fps),
                                 ratio_text(tp.fps / zmq_.fps), fmt(tp.writer_cores),
                                 fmt(tp.reader_cores)])
            bars[f"{size} {name}"] = tp.gbps
        for n, tp in fb.items():
            result.table.append([size, "framebus", str(n), fmt(tp.fps, 1), fmt(tp.fps / n, 1),
                                 fmt(tp.gbps, 3), ratio_text(tp.fps / bare.fps),
                                 ratio_text(tp.fps / zmq_.fps), fmt(tp.writer_cores),
                                 fmt(tp.reader_cores)])
            bars[f"{size} framebus x{n}"] = tp.gbps
        one = fb[1]
        result.checks.append(ratio_check(f"{size}, 1 subscriber vs bare FIFO", one.fps,
                                         "frames/s", bare.fps, "bare FIFO", ">=", 0.9))
        result.checks.append(ratio_check(f"{size}, 1 subscriber vs ZeroMQ", one.fps, "frames/s",
                                         zmq_.fps, "ZeroMQ PUB/SUB ipc", ">=", 1.5))
        for n in (4, 16):
            result.checks.append(ratio_check(
                f"{size}, {n} subscribers, aggregate vs bare FIFO", fb[n].fps, "frames/s",
                bare.fps, "bare FIFO (1 reader)", ">=", 0.8))
        result.details[size] = {
            "frame_bytes": len(payloads[0]),
            "bare_fifo": {"fps": bare.fps, "gbps": bare.gbps, "runs_fps": bare.runs,
                          "writer_cores": bare.writer_cores, "reader_cores": bare.reader_cores},
            "zeromq": {"fps": zmq_.fps, "gbps": zmq_.gbps, "runs_fps": zmq_.runs,
                       "writer_cores": zmq_.writer_cores, "reader_cores": zmq_.reader_cores},
            **{f"framebus_x{n}": {"fps": tp.fps, "gbps": tp.gbps, "fps_each": tp.fps / n,
                                  "writer_cores": tp.writer_cores,
                                  "reader_cores": tp.reader_cores}
               for n, tp in fb.items()},
        }
    result.notes.append(f"{ctx.seconds(WINDOW_S):g} s window per case after {WARMUP_S:g} s "
                        "warm-up; frames/s is the sum over readers; pipes 1 MiB; "
                        "baselines are the mean of a run before and one after the framebus runs; "
                        "writer cores: CPU of the writing process (fan-out loop and publisher, "
                        "or the baseline's writer), reader cores: all reader processes.")
    result.plots["fanout_gbps"] = bars
    return result
