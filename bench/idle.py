"""Benchmark 5, idle cost: a camera nobody subscribes to, against the same camera decoded fully.

One 1920x1080 25 fps H.264 camera (GOP 50, 2 s) from the loopback test RTSP server, two
daemons (``python -m framebus run``, subprocesses) at the same time, neither with subscribers:

* idle: ``idle_decode: keyframes`` (the default): only keyframes are decoded;
* full: ``idle_decode: all``: every frame is decoded (what one subscriber would add, minus the
  conversion and the FIFO writes).

The figure is each daemon's CPU seconds over the same window (``/proc/<pid>/stat``). The pair
runs on the test pattern (the benchmark the issue names) and, at the same time, on a
camera-like clip (:mod:`bench.clips`), whose frames cost what camera footage costs to decode.
"""

from __future__ import annotations

import time

from bench.clips import camera_like_clip
from bench.common import (
    BenchResult,
    Children,
    Context,
    DaemonProcess,
    fmt,
    info,
    measure,
    ratio_check,
)
from bench.rtsp import Mount, server

WINDOW_S = 15.0
WARMUP_S = 4.0
SOURCES = {"pattern": "test pattern", "camera": "camera-like clip"}


def run(ctx: Context) -> BenchResult:
    """CPU of the idle daemon over CPU of the fully decoding one, for both clips."""
    result = BenchResult("idle", "Idle cost: unsubscribed camera (keyframes only) vs full decode")
    srv = server([Mount("pattern", width=1920, height=1080, fps=25, seconds=4.0, gop=50),
                  Mount("camera", fps=25, path=camera_like_clip(1920, 1080, 25, 4.0, 50))])
    children = Children()
    daemons: dict[str, DaemonProcess] = {}
    try:
        for source in SOURCES:
            for mode in ("keyframes", "all"):
                daemons[f"{source}-{mode}"] = DaemonProcess(
                    children, ctx.workdir,
                    {"cam": {"url": srv.url(source), "idle_decode": mode}}, {},
                    name=f"idle-{source}-{mode}")

        def alive() -> None:
            for daemon in daemons.values():
                daemon.alive()

        deadline = time.monotonic() + WARMUP_S
        while time.monotonic() < deadline:
            alive()
            time.sleep(0.2)
        seconds = ctx.seconds(WINDOW_S)
        session = None
        if ctx.profiler is not None:
            session = ctx.profiler.start("idle-keyframes", daemons["camera-keyframes"].pid,
                                         seconds)
        window = measure(seconds, {k: d.pid for k, d in daemons.items()}, alive)
        if session is not None and ctx.profiler is not None:
            ctx.profiler.finish(session)
        problems = [line for d in daemons.values() for line in d.log_tail()
                    if "WARNING" in line or "ERROR" in line]
    finally:
        children.close()
        srv.close()
    seconds = window.seconds
    result.table.append(["clip", "camera", "CPU s", "% of a core", "RSS MB", "idle / full"])
    for source, label in SOURCES.items():
        cpu_idle = window.cpu[f"{source}-keyframes"]
        cpu_full = window.cpu[f"{source}-all"]
        for mode, cpu in (("keyframes", cpu_idle), ("all", cpu_full)):
            result.table.append([
                label, f"{'idle' if mode == 'keyframes' else 'full'} (idle_decode: {mode})",
                fmt(cpu), fmt(cpu / seconds * 100, 1),
                fmt(window.rss_max[f"{source}-{mode}"] / 1e6, 0),
                fmt(cpu_idle / cpu_full) + "x" if mode == "keyframes" and cpu_full else ""])
        result.checks.append(ratio_check(f"CPU, idle camera vs fully decoded ({label})",
                                         cpu_idle, "CPU s", cpu_full,
                                         "same camera, idle_decode: all", "<=", 0.15))
        result.checks.append(info(f"idle camera CPU ({label})", cpu_idle / seconds * 100,
                                  "% of a core"))
        result.details[source] = {"cpu_idle_s": cpu_idle, "cpu_full_s": cpu_full,
                                  "rss_idle": window.rss_max[f"{source}-keyframes"],
                                  "rss_full": window.rss_max[f"{source}-all"]}
    result.details["window_s"] = seconds
    result.notes.append(f"All four daemons in the same {seconds:.0f} s window after "
                        f"{WARMUP_S:g} s; 1080p25, GOP 50; CPU from /proc in 10 ms ticks.")
    if problems:
        result.notes.append("daemon log: " + " | ".join(problems[-3:]))
    return result
