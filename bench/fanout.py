"""Benchmark 1, fan-out throughput: how many frames a second reach FIFO and shm readers.

framebus: the real LatestFrameStore and FanoutLoop in this process, a synthetic camera
publishing ready-made bgr24 frames as fast as the loop takes them (``EagerPublisher``), 1, 4
and 16 subscribers with real FIFOs (1 MiB pipes, the default), each read by its own process
with framebus.client.Subscriber; then the same with ``transport="shm"`` subscribers (the
publisher thread copies each frame once into the shared-memory segment, the FIFOs carry
240-byte headers).

Baselines, same frames, same run:

* bare FIFO: a Python thread writing each whole frame with one blocking ``os.write`` into one
  FIFO (1 MiB pipe), read by one process with blocking ``os.readv`` into a reused buffer;
* ZeroMQ: PUB (zero-copy ``send(copy=False)``, SNDHWM 2, XPUB_NODROP so the publisher waits
  for the subscriber instead of spinning on drops) to one SUB process over ``ipc://``
  (RCVHWM 2, conflate off, ``recv(copy=False)``); for the shm aggregate targets also to 4
  and 16 SUB processes (XPUB_NODROP: the publisher goes at the slowest subscriber's pace);
* bare shm loop (:mod:`bench.shmring`), the limit of the shm design: one Python thread
  copying each frame into a 4-slot ring file with numpy and writing a 184-byte header to each
  of 1, 4 or 16 reader processes through one-page FIFOs;
* iceoryx2 (:mod:`bench.iox2`), zero-copy publish-subscribe from Python: a publisher thread
  copying each frame into a loaned sample with numpy, 1, 4 or 16 subscriber processes woken
  by an event service, newest wins (safe overflow, one buffered sample per subscriber).

The bare FIFO and one-subscriber ZeroMQ baselines run before and after the framebus cases and
are averaged, so a change in the machine's background load during the run moves the baseline
with the framebus figures; each bare shm loop runs right before, and each iceoryx2 case right
after, the framebus shm case with as many readers.

Throughput counts frames fully received inside the window (payload bytes for GB/s).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from typing import Any

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
from bench.iox2 import Iox2Writer, iox2_note
from bench.shmring import SLOTS, BareShmWriter
from bench.synthetic import EagerPublisher, frame_bytes, make_frames
from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.store import LatestFrameStore, Rendition
from framebus.wire import PixelFormat

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
SUBSCRIBERS = (1, 4, 16)
SHM_VS_ZMQ = {4: 4.0, 16: 10.0}  # aggregate targets against ZeroMQ with as many subscribers
WINDOW_S = 2.0
WARMUP_S = 0.5
PIPE_SIZE = 1 << 20
LIMIT_S = 210  # the runner's deadline for this benchmark (36 cases; about 130 s normally)


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
                 profile: bool, transport: str = "fifo") -> Throughput:
    """The real store and fan-out loop, ``readers`` subscriber processes."""
    store = LatestFrameStore()
    loop = FanoutLoop(store)
    rendition = Rendition(PixelFormat.BGR24)
    paths = [ctx.workdir / f"{label}-{i}.fifo" for i in range(readers)]
    for i, path in enumerate(paths):
        loop.add(SubscriberSpec(f"s{i}", "cam", rendition, path, pipe_size=PIPE_SIZE,
                                transport=transport))
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


def run_bare_shm(ctx: Context, payloads: list[bytes], readers: int, label: str) -> Throughput:
    """The bare shm loop (:mod:`bench.shmring`): one writer thread, ``readers`` processes."""
    writer = BareShmWriter(ctx.workdir, label, payloads, readers)
    children = Children()
    try:
        writer.start()
        recorders = [Recorder(children, f"shm{i}", ["shm", str(path), str(writer.ring_path)])
                     for i, path in enumerate(writer.fifos)]
        return _window(ctx, recorders, label, alive=writer.alive)
    finally:
        children.close()
        writer.stop()


def run_iox2(ctx: Context, payloads: list[bytes], readers: int, label: str) -> Throughput:
    """iceoryx2 (:mod:`bench.iox2`): a publisher thread here, ``readers`` processes."""
    writer = Iox2Writer(label, payloads, readers)
    children = Children()
    try:
        writer.start()
        recorders = [Recorder(children, f"iox2-{i}", writer.reader_args())
                     for i in range(readers)]
        return _window(ctx, recorders, label, alive=writer.alive)
    finally:
        children.close()
        writer.stop()


def run_zmq(ctx: Context, payloads: list[bytes], label: str, readers: int = 1) -> Throughput:
    """ZeroMQ PUB (this process) to ``readers`` SUB processes over ipc://."""
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
        recorders = [Recorder(children, f"zmq{i}", ["zmq", endpoint, "--hwm", "2"])
                     for i in range(readers)]
        return _window(ctx, recorders, label, alive=alive)
    finally:
        stop.set()
        children.close()
        thread.join(5)


def _row(size: str, name: str, tp: Throughput, bare: Throughput, zmq1: Throughput,
         zmq_n: Throughput | None, shm_n: Throughput | None) -> list[str]:
    def vs(base: Throughput | None) -> str:
        return "-" if base is None else ratio_text(tp.fps / base.fps)

    return [size, name, str(tp.readers), fmt(tp.fps, 1), fmt(tp.fps / tp.readers, 1),
            fmt(tp.gbps, 3), vs(bare), vs(zmq1), vs(zmq_n), vs(shm_n), fmt(tp.writer_cores),
            fmt(tp.reader_cores)]


def _details(tp: Throughput) -> dict[str, Any]:
    return {"fps": tp.fps, "gbps": tp.gbps, "fps_each": tp.fps / tp.readers,
            "writer_cores": tp.writer_cores, "reader_cores": tp.reader_cores,
            **({"runs_fps": tp.runs} if tp.runs else {})}


def run(ctx: Context) -> BenchResult:
    """Every size: bare FIFO, ZeroMQ, framebus FIFO and shm, the bare shm loop, iceoryx2."""
    result = BenchResult("fanout", "Fan-out throughput (synthetic bgr24 frames, FIFO and shm "
                         "readers)")
    result.table.append(["frames", "transport", "readers", "frames/s (all)", "frames/s each",
                         "GB/s", "vs bare FIFO", "vs ZeroMQ x1", "vs ZeroMQ xN",
                         "vs bare shm xN", "writer cores", "reader cores"])
    bars: dict[str, float] = {}
    for size, (width, height) in SIZES.items():
        frames = make_frames(width, height)
        payloads = [frame_bytes(f) for f in frames]
        profiled = ctx.profiler is not None and size == "1080p"
        bare_runs = [run_bare(ctx, payloads, f"bare-{size}")]
        zmq_runs = [run_zmq(ctx, payloads, f"zmq-{size}")]
        fb = {n: run_framebus(ctx, frames, n, f"framebus-{size}-x{n}",
                              profile=profiled and n in (1, 16))
              for n in SUBSCRIBERS}
        shm: dict[int, Throughput] = {}
        bare_shm: dict[int, Throughput] = {}
        iox: dict[int, Throughput] = {}
        for n in SUBSCRIBERS:  # each next to its own baselines
            bare_shm[n] = run_bare_shm(ctx, payloads, n, f"bare-shm-{size}-x{n}")
            shm[n] = run_framebus(ctx, frames, n, f"framebus-shm-{size}-x{n}",
                                  profile=profiled and n in (1, 16), transport="shm")
            iox[n] = run_iox2(ctx, payloads, n, f"iox2-{size}-x{n}")
        zmq_n = {n: run_zmq(ctx, payloads, f"zmq-{size}-x{n}", readers=n)
                 for n in SUBSCRIBERS if n > 1}
        bare_runs.append(run_bare(ctx, payloads, f"bare-{size}"))
        zmq_runs.append(run_zmq(ctx, payloads, f"zmq-{size}"))
        bare, zmq_ = Throughput.mean(bare_runs), Throughput.mean(zmq_runs)
        zmq_n[1] = zmq_
        for name, tp in (("bare FIFO", bare), ("ZeroMQ ipc", zmq_)):
            result.table.append(_row(size, name, tp, bare, zmq_, None, None))
            bars[f"{size} {name}"] = tp.gbps
        for n, tp in fb.items():
            result.table.append(_row(size, "framebus", tp, bare, zmq_, None, None))
            bars[f"{size} framebus x{n}"] = tp.gbps
        for n in (4, 16):
            result.table.append(_row(size, "ZeroMQ ipc", zmq_n[n], bare, zmq_, zmq_n[n], None))
            bars[f"{size} ZeroMQ ipc x{n}"] = zmq_n[n].gbps
        for n in SUBSCRIBERS:
            result.table.append(_row(size, "bare shm loop", bare_shm[n], bare, zmq_, zmq_n[n],
                                     bare_shm[n]))
            result.table.append(_row(size, "framebus shm", shm[n], bare, zmq_, zmq_n[n],
                                     bare_shm[n]))
            result.table.append(_row(size, "iceoryx2", iox[n], bare, zmq_, zmq_n[n],
                                     bare_shm[n]))
            bars[f"{size} bare shm loop x{n}"] = bare_shm[n].gbps
            bars[f"{size} framebus shm x{n}"] = shm[n].gbps
            bars[f"{size} iceoryx2 x{n}"] = iox[n].gbps
        one = fb[1]
        result.checks.append(ratio_check(f"{size}, 1 subscriber vs bare FIFO", one.fps,
                                         "frames/s", bare.fps, "bare FIFO", ">=", 0.9))
        result.checks.append(ratio_check(f"{size}, 1 subscriber vs ZeroMQ", one.fps, "frames/s",
                                         zmq_.fps, "ZeroMQ PUB/SUB ipc", ">=", 1.5))
        for n in (4, 16):
            result.checks.append(ratio_check(
                f"{size}, {n} subscribers, aggregate vs bare FIFO", fb[n].fps, "frames/s",
                bare.fps, "bare FIFO (1 reader)", ">=", 0.8))
        result.checks.append(ratio_check(f"{size}, shm, 1 subscriber vs ZeroMQ", shm[1].fps,
                                         "frames/s", zmq_.fps, "ZeroMQ PUB/SUB ipc", ">=", 1.5))
        for n, target in SHM_VS_ZMQ.items():
            result.checks.append(ratio_check(
                f"{size}, shm, {n} subscribers, aggregate vs ZeroMQ x{n}", shm[n].fps,
                "frames/s", zmq_n[n].fps, f"ZeroMQ PUB to {n} SUB, ipc", ">=", target))
        for n in SUBSCRIBERS:
            subscribers = "1 subscriber" if n == 1 else f"{n} subscribers, aggregate"
            result.checks.append(ratio_check(
                f"{size}, shm, {subscribers} vs bare shm loop", shm[n].fps, "frames/s",
                bare_shm[n].fps, f"bare shm loop ({n} reader{'s' if n > 1 else ''})", ">=",
                0.8))
            result.checks.append(ratio_check(
                f"{size}, shm, {subscribers} vs iceoryx2", shm[n].fps, "frames/s",
                iox[n].fps, f"iceoryx2 ({n} subscriber{'s' if n > 1 else ''})", ">=", 1.0))
        result.details[size] = {
            "frame_bytes": len(payloads[0]),
            "bare_fifo": _details(bare),
            "zeromq": _details(zmq_),
            **{f"zeromq_x{n}": _details(zmq_n[n]) for n in (4, 16)},
            **{f"framebus_x{n}": _details(tp) for n, tp in fb.items()},
            **{f"bare_shm_x{n}": _details(tp) for n, tp in bare_shm.items()},
            **{f"framebus_shm_x{n}": _details(tp) for n, tp in shm.items()},
            **{f"iceoryx2_x{n}": _details(tp) for n, tp in iox.items()},
        }
    result.notes.append(f"{ctx.seconds(WINDOW_S):g} s window per case after {WARMUP_S:g} s "
                        "warm-up (shortened from 4 s + 1 s when the shm cases were added, to "
                        "keep the benchmark near 2 minutes); frames/s is the sum over readers; "
                        "FIFO pipes 1 MiB, shm pipes one page; "
                        "bare FIFO and ZeroMQ x1 are the mean of a run before and one after the "
                        "framebus runs, each bare shm loop runs just before and each iceoryx2 "
                        "case just after the framebus shm case with as many readers; "
                        "writer cores: CPU of the writing process "
                        "(fan-out loop and publisher, or the baseline's writer), reader cores: "
                        "all reader processes.")
    result.notes.append("shm: framebus shm subscribers read with framebus.client, the bare shm "
                        f"loop ({SLOTS}-slot ring, 184-byte headers) with bench.procs shm; "
                        "both readers check the slot's stamp and take a view of the pixels "
                        "without touching them, so each side's figure is the copy into shared "
                        "memory plus per-message costs. Work directory on tmpfs (/dev/shm), as "
                        "/run/framebus is.")
    result.notes.append(iox2_note() + " Unpaced, the publisher sends the next frame once a "
                        "reader reports (a second event service) it took the last one, as "
                        "EagerPublisher does.")
    result.plots["fanout_gbps"] = bars
    return result
