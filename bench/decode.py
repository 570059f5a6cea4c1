"""Benchmark 3, decode overhead: the daemon's decode path against a bare PyAV decode loop.

A 1920x1080 H.264 clip (10 s, 25 fps, GOP 50, from ``framebus.testsrc.media.ensure_clip``) is
a file camera: the daemon (``python -m framebus run``, a subprocess) decodes it unpaced and
loops it, with one yuv420p subscriber (the native format: no conversion) read by a
framebus.client process. Decoded frames/s comes from the seq numbers that subscriber sees
(every decoded frame is published with the next seq, so seq gaps are frames the reader did
not need to take).

The shm row is the same daemon with ``transport: shm`` for the subscriber: no pipe copy, but
the decoder thread copies every frame it publishes into the shared-memory segment.

Baseline: ``python -m bench.procs decode FILE --loop --threads 1``, the same PyAV calls with
the same thread settings (``thread_count = 1``, the daemon's default) and the same reopen at
the end of the file.

The two alternate (baseline, daemon, baseline, daemon) and each side's runs are pooled, so a
change in the machine's background load hits both.
"""

from __future__ import annotations

import math
import time

from bench.common import (
    BenchResult,
    Children,
    Context,
    DaemonProcess,
    Recorder,
    collect,
    fb_reader,
    fmt,
    info,
    measure,
    ratio_check,
    ratio_text,
    wait_first,
)
from bench.rtsp import clip

WINDOW_S = 6.0
WARMUP_S = 2.0
ROUNDS = 2
LIMITED_FPS = 5.0


def run_daemon(ctx: Context, path: str, label: str, max_fps: float | None = None,
               transport: str = "fifo") -> tuple[float, float]:
    """(decoded frames, seconds) in one window of the daemon."""
    children = Children()
    sub: dict[str, object] = {"camera": "cam", "format": "yuv420p", "transport": transport}
    if max_fps is not None:
        sub["max_fps"] = max_fps
    try:
        daemon = DaemonProcess(
            children, ctx.workdir, {"cam": {"url": path, "decoder_threads": 1,
                                            "idle_decode": "all"}},
            {"sub": sub}, name=label)
        reader = fb_reader(children, "sub", daemon.fifo("sub"))
        wait_first([reader], 30, daemon.alive)
        time.sleep(WARMUP_S)
        window = measure(ctx.seconds(WINDOW_S), alive=daemon.alive)
        samples = collect([reader])[0].window(window.t0, window.t1)
        if samples.frames < 2:
            return math.nan, window.seconds
        return samples.seq[-1] - samples.seq[0], (samples.t[-1] - samples.t[0]) / 1e9
    finally:
        children.close()


def run_bare(ctx: Context, path: str) -> tuple[float, float]:
    """(decoded frames, seconds) in one window of the bare PyAV loop."""
    children = Children()
    try:
        decoder = Recorder(children, "pyav", ["decode", path, "--loop", "--threads", "1"])
        wait_first([decoder], 30)
        time.sleep(WARMUP_S)
        window = measure(ctx.seconds(WINDOW_S))
        samples = collect([decoder])[0].window(window.t0, window.t1)
        if samples.frames < 2:
            return math.nan, window.seconds
        return samples.frames - 1, (samples.t[-1] - samples.t[0]) / 1e9
    finally:
        children.close()


def run(ctx: Context) -> BenchResult:
    """Decoded frames/s through the daemon over decoded frames/s of a bare loop."""
    result = BenchResult("decode", "Decode overhead, 1080p H.264 file, one yuv420p subscriber")
    path = str(clip(1920, 1080, 25, 10.0, 50))
    bare_runs: list[tuple[float, float]] = []
    daemon_runs: list[tuple[float, float]] = []
    limited_runs: list[tuple[float, float]] = []
    shm_runs: list[tuple[float, float]] = []
    for n in range(ROUNDS):
        bare_runs.append(run_bare(ctx, path))
        daemon_runs.append(run_daemon(ctx, path, f"decode{n}"))
        shm_runs.append(run_daemon(ctx, path, f"decode-shm{n}", transport="shm"))
        limited_runs.append(run_daemon(ctx, path, f"decode-limited{n}", max_fps=LIMITED_FPS))

    def pooled(runs: list[tuple[float, float]]) -> float:
        return sum(f for f, _ in runs) / sum(s for _, s in runs)

    bare, daemon, limited = pooled(bare_runs), pooled(daemon_runs), pooled(limited_runs)
    shm = pooled(shm_runs)
    result.table.append(["decoder", "decoded frames/s", "vs bare", "runs"])
    for name, fps, runs in (
        ("framebus daemon -> 1 yuv420p FIFO reader", daemon, daemon_runs),
        ("framebus daemon -> 1 yuv420p shm reader", shm, shm_runs),
        (f"framebus daemon, reader at max_fps {LIMITED_FPS:g} (no copies)", limited,
         limited_runs),
        ("bare PyAV loop (thread_count=1)", bare, bare_runs),
    ):
        result.table.append([name, fmt(fps, 1), ratio_text(fps / bare),
                             ", ".join(fmt(f / s, 1) for f, s in runs)])
    result.checks.append(ratio_check("1080p decoded frames/s", daemon, "frames/s", bare,
                                     "bare PyAV decode loop", ">=", 0.95))
    result.checks.append(ratio_check("1080p decoded frames/s, shm subscriber", shm, "frames/s",
                                     bare, "bare PyAV decode loop", ">=", 0.95))
    result.checks.append(info(f"1080p decoded frames/s, subscriber at max_fps {LIMITED_FPS:g}",
                              limited, "frames/s", bare, "bare PyAV decode loop"))
    result.details = {"daemon_fps": daemon, "bare_fps": bare, "limited_fps": limited,
                      "shm_fps": shm, "shm_runs": [f / s for f, s in shm_runs],
                      "daemon_runs": [f / s for f, s in daemon_runs],
                      "limited_runs": [f / s for f, s in limited_runs],
                      "bare_runs": [f / s for f, s in bare_runs], "clip": path}
    result.notes.append(f"{ROUNDS} alternating rounds of {ctx.seconds(WINDOW_S):g} s windows, "
                        "pooled per side. The max_fps row keeps the whole decode and publish "
                        "path but sends almost nothing through the FIFO: the gap between the "
                        "two framebus rows is the pipe copy (daemon and reader) competing with "
                        "the decoder for the 2 cores. The shm row has the decoder thread copy "
                        "every decoded frame once into shared memory (the reader's FIFO carries "
                        "headers only), held to the same target as the FIFO row.")
    return result
