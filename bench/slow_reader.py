"""Benchmark 7, slow-reader isolation: one stopped reader must cost the others nothing.

One 1280x720 25 fps RTSP camera (test pattern), a daemon (``python -m framebus run``) with
4 bgr24 subscribers (1 MiB pipes), each read by a framebus.client process. Once all four read,
one is stopped with SIGSTOP for the window. Figures: the 3 fast readers' delivered / published
during the stall (published from the seq numbers they see), and the daemon's memory growth:
its largest RSS during the stall minus its largest RSS over the seconds before, in frames
(1280 x 720 x 3 bytes, the bgr24 frame the readers get). The growth over the stall's second
half is reported too: a bounded design shows one step when the stall begins (the frames the
stopped subscriber holds), then nothing.
"""

from __future__ import annotations

import signal
import time

from bench.common import (
    BenchResult,
    Children,
    Context,
    DaemonProcess,
    collect,
    fb_reader,
    fmt,
    info,
    measure,
    value_check,
    wait_first,
)
from bench.rtsp import Mount, server

WIDTH, HEIGHT = 1280, 720
WINDOW_S = 15.0
BEFORE_S = 4.0
WARMUP_S = 2.0


def run(ctx: Context) -> BenchResult:
    """The stall window and the figures."""
    result = BenchResult("slow_reader", "Slow-reader isolation: 1 stopped + 3 fast readers")
    frame_bytes = WIDTH * HEIGHT * 3
    srv = server([Mount("cam", width=WIDTH, height=HEIGHT, fps=25, seconds=4.0, gop=50)])
    children = Children()
    try:
        subs = {name: {"camera": "cam", "format": "bgr24"}
                for name in ("slow", "fast1", "fast2", "fast3")}
        daemon = DaemonProcess(children, ctx.workdir, {"cam": {"url": srv.url("cam")}}, subs,
                               name="slow-reader")
        readers = {name: fb_reader(children, name, daemon.fifo(name)) for name in subs}
        wait_first(readers.values(), 30, daemon.alive)
        time.sleep(WARMUP_S)
        before = measure(BEFORE_S, {"daemon": daemon.pid}, daemon.alive, every=0.1)
        readers["slow"].proc.send_signal(signal.SIGSTOP)
        stall = measure(ctx.seconds(WINDOW_S), {"daemon": daemon.pid}, daemon.alive, every=0.1)
        readers["slow"].proc.send_signal(signal.SIGCONT)
        fast = [readers[n] for n in ("fast1", "fast2", "fast3")]
        samples = [s.window(stall.t0, stall.t1) for s in collect(fast)]
        readers["slow"].stop()
    finally:
        children.close()
        srv.close()
    growth = stall.rss_max["daemon"] - before.rss_max["daemon"]
    growth_frames = max(0, growth) / frame_bytes
    series = stall.rss_series["daemon"]
    middle = stall.t0 + (stall.t1 - stall.t0) // 2
    first_half = max(rss for t, rss in series if t <= middle)
    late_growth = (max(rss for t, rss in series if t > middle) - first_half) / frame_bytes
    result.table.append(["reader", "frames", "published", "delivered %"])
    for name, s in zip(("fast1", "fast2", "fast3"), samples, strict=True):
        result.table.append([name, str(s.frames), str(s.expected()),
                             fmt(s.frames / max(1, s.expected()) * 100, 2)])
    delivered = sum(s.frames for s in samples) / max(1, sum(s.expected() for s in samples))
    result.table.append(["daemon RSS before / during stall (MB)",
                         fmt(before.rss_max["daemon"] / 1e6, 1),
                         fmt(stall.rss_max["daemon"] / 1e6, 1),
                         f"growth {growth_frames:.2f} frames"])
    result.table.append(["growth in the stall's second half (frames)", "", "",
                         fmt(late_growth, 2)])
    result.checks.append(value_check("fast readers' delivered / published during the stall",
                                     delivered * 100, "%", ">=", 99.0))
    result.checks.append(value_check("daemon memory growth during the stall", growth_frames,
                                     "frames", "<=", 2.0))
    result.checks.append(info("daemon memory growth in the stall's second half", late_growth,
                              "frames"))
    result.checks.append(info("daemon CPU during the stall", stall.cpu["daemon"] / stall.seconds,
                              "cores", before.cpu["daemon"] / before.seconds,
                              "before the stall"))
    result.details = {"delivered": delivered, "rss_before": before.rss_max["daemon"],
                      "rss_during": stall.rss_max["daemon"], "growth_bytes": growth,
                      "growth_frames": growth_frames, "frame_bytes": frame_bytes,
                      "late_growth_frames": late_growth,
                      "window_s": stall.seconds}
    result.notes.append(f"{stall.seconds:.0f} s stall after {BEFORE_S:g} s of RSS readings with "
                        "all four reading; RSS sampled every 0.1 s.")
    return result
