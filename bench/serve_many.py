"""Benchmark 4, decode once, serve many: CPU of 4 bgr24 consumers of one live RTSP camera.

One 1920x1080 25 fps H.264 camera (GOP 50) from the loopback test RTSP server, 4 consumers that
want bgr24, three ways, one after the other:

* framebus: the daemon (``python -m framebus run``, a subprocess) decodes once, converts to
  bgr24 once, and writes to 4 FIFOs, each read by a framebus.client process;
* framebus shm: the same with ``transport: shm`` for each of the 4 subscribers (the decoder
  thread copies each bgr24 frame once into shared memory, the FIFOs carry headers only);
* ffmpeg: 4 ``ffmpeg -rtsp_transport tcp -i URL -f rawvideo -pix_fmt bgr24 pipe:`` processes
  (ffmpeg's default threads), each read through its stdout pipe by a plain reader process;
* PyAV: 4 processes each decoding the stream (``thread_count = 1``, as the daemon) and
  converting every frame with ``to_ndarray(format="bgr24")``.

The figure is the total CPU seconds (user + system, ``/proc/<pid>/stat``) of every process of a
way (daemon plus readers; ffmpegs plus readers; PyAV loops) over the same window, taken once
every consumer has its first frame. The RTSP server's CPU is not counted.

The camera serves the test pattern (the benchmark the issue names). Its frames decode in about
1.4 ms, far cheaper than camera footage, which understates what decoding once saves; so the
framebus and PyAV ways also run on a camera-like clip (:mod:`bench.clips`), as a second check.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from bench.clips import camera_like_clip
from bench.common import (
    BenchResult,
    Children,
    Context,
    DaemonProcess,
    Recorder,
    Samples,
    collect,
    fb_reader,
    fmt,
    measure,
    ratio_check,
    wait_first,
)
from bench.rtsp import Mount, server

CONSUMERS = 4
WIDTH, HEIGHT, FPS = 1920, 1080, 25
WINDOW_S = 10.0
WARMUP_S = 2.0


class Way:
    """The CPU and frames of one way of serving the consumers."""

    def __init__(self, name: str, cpu: dict[str, float], seconds: float,
                 samples: list[Samples]) -> None:
        self.name = name
        self.cpu = cpu
        self.seconds = seconds
        self.samples = samples

    @property
    def total(self) -> float:
        """CPU seconds of every process."""
        return sum(self.cpu.values())

    @property
    def fps(self) -> float:
        """Mean frames per second each consumer received."""
        return sum(s.frames for s in self.samples) / len(self.samples) / self.seconds


def _measure(ctx: Context, name: str, recorders: list[Recorder], pids: dict[str, int],
             alive: Callable[[], None] | None = None, profile_pid: int | None = None) -> Way:
    wait_first(recorders, 30, alive)
    time.sleep(WARMUP_S)
    seconds = ctx.seconds(WINDOW_S)
    session = None
    if ctx.profiler is not None and profile_pid is not None:
        session = ctx.profiler.start(f"serve_many-{name}", profile_pid, seconds)
    window = measure(seconds, pids, alive)
    if session is not None and ctx.profiler is not None:
        ctx.profiler.finish(session)
    samples = [s.window(window.t0, window.t1) for s in collect(recorders)]
    return Way(name, window.cpu, window.seconds, samples)


def run_framebus(ctx: Context, url: str, label: str, transport: str = "fifo") -> Way:
    """The daemon and 4 framebus.client readers."""
    children = Children()
    try:
        subs = {f"c{i}": {"camera": "cam", "format": "bgr24", "transport": transport}
                for i in range(CONSUMERS)}
        daemon = DaemonProcess(children, ctx.workdir, {"cam": {"url": url}}, subs,
                               name=f"serve-many-{label}")
        readers = [fb_reader(children, name, daemon.fifo(name)) for name in subs]
        pids = {"daemon": daemon.pid, **{r.name: r.pid for r in readers}}
        return _measure(ctx, f"framebus-{label}", readers, pids, daemon.alive,
                        profile_pid=daemon.pid)
    finally:
        children.close()


def run_ffmpeg(ctx: Context, url: str, label: str) -> Way:
    """4 ffmpeg processes piping bgr24 to 4 readers."""
    children = Children()
    try:
        pids: dict[str, int] = {}
        readers = []
        for i in range(CONSUMERS):
            ffmpeg = children.popen(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", url,
                 "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            reader = Recorder(children, f"r{i}", ["raw", "-", "--frame-bytes",
                                                  str(WIDTH * HEIGHT * 3)], stdin=ffmpeg.stdout)
            assert ffmpeg.stdout is not None
            ffmpeg.stdout.close()  # the reader holds it now
            pids[f"ffmpeg{i}"] = ffmpeg.pid
            pids[f"reader{i}"] = reader.pid
            readers.append(reader)
        return _measure(ctx, f"ffmpeg-{label}", readers, pids)
    finally:
        children.close()


def run_pyav(ctx: Context, url: str, label: str) -> Way:
    """4 PyAV decode-and-convert loops."""
    children = Children()
    try:
        loops = [Recorder(children, f"pyav{i}", ["decode", url, "--bgr", "--threads", "1"])
                 for i in range(CONSUMERS)]
        return _measure(ctx, f"pyav-{label}", loops, {r.name: r.pid for r in loops})
    finally:
        children.close()


def run(ctx: Context) -> BenchResult:
    """CPU of framebus serving 4 consumers over CPU of 4 independent decoders."""
    result = BenchResult("serve_many",
                         "Decode once, serve many: 1 RTSP camera 1080p25, 4 bgr24 consumers")
    srv = server([Mount("pattern", width=WIDTH, height=HEIGHT, fps=FPS, seconds=4.0, gop=50),
                  Mount("camera", fps=FPS, path=camera_like_clip(WIDTH, HEIGHT, FPS, 4.0, 50))])
    try:
        pattern, camera = srv.url("pattern"), srv.url("camera")
        fb = run_framebus(ctx, pattern, "pattern")
        ff = run_ffmpeg(ctx, pattern, "pattern")
        shm = run_framebus(ctx, pattern, "shm-pattern", transport="shm")
        pa = run_pyav(ctx, pattern, "pattern")
        fb_cam = run_framebus(ctx, camera, "camera")
        pa_cam = run_pyav(ctx, camera, "camera")
    finally:
        srv.close()
    result.table.append(["clip", "way", "CPU s", "cores", "fps each", "vs framebus",
                         "CPU s by process"])
    for clip_name, ref, ways in (("test pattern", fb, (fb, shm, ff, pa)),
                                 ("camera-like", fb_cam, (fb_cam, pa_cam))):
        for way in ways:
            detail = ", ".join(f"{k} {v:.2f}" for k, v in way.cpu.items())
            name = "framebus shm" if way is shm else way.name.split("-")[0]
            result.table.append([clip_name, name, fmt(way.total),
                                 fmt(way.total / way.seconds), fmt(way.fps, 1),
                                 fmt(way.total / ref.total) + "x", detail])
    result.checks.append(ratio_check("CPU, framebus vs 4 ffmpeg + readers (test pattern)",
                                     fb.total, "CPU s", ff.total,
                                     "4 x ffmpeg -f rawvideo bgr24 + readers", "<=", 0.35))
    result.checks.append(ratio_check("CPU, framebus shm vs 4 ffmpeg + readers (test pattern)",
                                     shm.total, "CPU s", ff.total,
                                     "4 x ffmpeg -f rawvideo bgr24 + readers", "<=", 0.30))
    result.checks.append(ratio_check("CPU, framebus vs 4 PyAV decode loops (test pattern)",
                                     fb.total, "CPU s", pa.total,
                                     "4 x PyAV decode + to_ndarray(bgr24)", "<=", 0.35))
    result.checks.append(ratio_check("CPU, framebus vs 4 PyAV decode loops (camera-like clip)",
                                     fb_cam.total, "CPU s", pa_cam.total,
                                     "4 x PyAV decode + to_ndarray(bgr24)", "<=", 0.35))
    result.details = {w.name: {"cpu_s": w.total, "cores": w.total / w.seconds, "fps": w.fps,
                               "by_process": w.cpu, "window_s": w.seconds}
                      for w in (fb, shm, ff, pa, fb_cam, pa_cam)}
    result.notes.append(f"{ctx.seconds(WINDOW_S):g} s window per way after every consumer had "
                        f"its first frame and {WARMUP_S:g} s more; RTSP server CPU excluded.")
    return result
