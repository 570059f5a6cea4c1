"""Run the benchmarks: ``python -m bench.run [NAME ...] [--profile]`` (``make bench``).

Each benchmark runs under a hard deadline (``LIMIT_S``, or the module's own ``LIMIT_S``): past
it, SIGALRM raises in the main thread and the benchmark's ``finally`` blocks end its child
processes. A benchmark that fails is recorded with its error and the others still run. The
work directory is on /dev/shm when there is one (see ``scratch_dir``). Results: printed tables,
PNGs in ``bench/out/`` and, merged with the recorded ones, ``.cache/bench/results.json``; with
``--record`` (``make bench RECORD=1``) ``bench/results.json`` and the README table between the
bench markers instead, so that only a run meant for the record changes tracked files.
``BENCH_SCALE=0.3`` shortens every measuring window (a smoke run; the results say so).
``--profile`` adds per-thread CPU and py-spy profiles of the fan-out, serve_many and idle
windows (``bench/out/profile-*.txt``); a profiled run is printed but never recorded, since
sampling perturbs what it measures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from bench.common import ROOT, BenchResult, Children, Context, format_table
from bench.report import ORDER, RESULTS, SCRATCH, machine, plots, save_results, update_readme

LIMIT_S = 120
# gpu (bench/gpu.py) runs only when named: without a GPU it is recorded as skipped, and a
# plain `make bench RECORD=1` on such a host must not replace figures measured on one
ON_REQUEST = ("gpu",)
MODULES = {name: f"bench.{name}" for name in (*ORDER, *ON_REQUEST)}
ALIASES = {"serve": "serve_many", "slow": "slow_reader", "throughput": "fanout", "zenoh": "remote"}


class BenchTimeout(Exception):
    """A benchmark ran past its deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise BenchTimeout in the main thread after ``seconds``."""
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise BenchTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def scratch_dir() -> str | None:
    """Where the work directory goes: /dev/shm when it is there (tmpfs, as /run/framebus is in
    production: shm segments in a disk-backed directory would pay for page writeback), else
    the default temporary directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def run_one(name: str, ctx: Context) -> BenchResult:
    """One benchmark, bounded, errors caught."""
    module = importlib.import_module(MODULES[name])
    runner: Callable[[Context], BenchResult] = module.run
    limit: float = getattr(module, "LIMIT_S", LIMIT_S)
    start = time.monotonic()
    try:
        with deadline(limit):
            result = runner(ctx)
    except (Exception, BenchTimeout) as exc:
        traceback.print_exc()
        result = BenchResult(name, name, error=f"{type(exc).__name__}: {exc}")
    finally:
        Children.close_all()
    result.seconds = time.monotonic() - start
    if ctx.scale != 1.0:
        result.notes.append(f"BENCH_SCALE={ctx.scale:g}: windows scaled, not a full run.")
    return result


def show(result: BenchResult) -> None:
    """Print one benchmark's table, checks and notes."""
    print(f"\n== {result.name}: {result.title} ({result.seconds:.0f} s)")
    if result.error:
        print(f"FAILED: {result.error}")
        return
    print(format_table(result.table))
    print()
    for check in result.checks:
        base = ""
        if check.baseline is not None:
            base = f" vs {check.baseline:.4g} ({check.baseline_name})"
        ratio = f" = {check.ratio:.2f}x" if check.ratio is not None else ""
        verdict = "" if check.met is None else ("  MET" if check.met else "  NOT MET")
        target = f"  [target {check.target}]" if check.target else ""
        print(f"  {check.what}: {check.value:.4g} {check.unit}{base}{ratio}{target}{verdict}")
    for note in result.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all when none are named)."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(ORDER)} "
                        f"(default: all), or {', '.join(ON_REQUEST)}")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the fanout, serve_many and idle windows "
                        "(function profiles need py-spy); a profiled run is not recorded")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results.json and the README table (default: "
                        ".cache/bench/results.json only)")
    parser.add_argument("--no-readme", action="store_true",
                        help="with --record: leave README.md alone")
    args = parser.parse_args(argv)
    names = []
    for raw in args.names or list(ORDER):
        for part in raw.replace(",", " ").split():
            name = ALIASES.get(part, part)
            if name not in MODULES:
                parser.error(f"unknown benchmark {part!r}; choose from {', '.join(MODULES)}")
            names.append(name)
    scale = float(os.environ.get("BENCH_SCALE", "1"))
    started = machine()
    print(f"framebus benchmarks on {started['cores']} cores ({started['cpu']}), load "
          f"{started['loadavg_at_start'][0]:.2f}: {', '.join(names)}")
    profiler = None
    if args.profile:
        from bench.profiling import Profiler

        profiler = Profiler()
        if profiler.exe is None:
            print("note: py-spy not found (pip install py-spy): thread CPU only")
    t0 = time.monotonic()
    results: list[BenchResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="framebus-bench-", dir=scratch_dir()) as workdir:
            for name in names:
                sub = Path(workdir) / name
                sub.mkdir()
                result = run_one(name, Context(sub, profiler, scale))
                show(result)
                results.append(result)
    finally:
        if profiler is not None:
            profiler.close()
    total = time.monotonic() - t0
    written = plots([r for r in results if not r.error])
    shown = ", ".join(str(p.relative_to(ROOT)) for p in written)
    if profiler is not None:  # sampling perturbs the figures: keep them out of the record
        for session in profiler.sessions:
            print("\n" + "\n".join(session.summary))
        met = sum(1 for r in results for c in r.checks if c.met)
        targets = sum(1 for r in results for c in r.checks if c.met is not None)
        print(f"\nprofiled run ({total:.0f} s): {met} of {targets} targets met; results.json "
              f"and README left alone; profiles in bench/out/profile-*.txt; {shown}")
        return 1 if any(r.error for r in results) else 0
    target = RESULTS if args.record else SCRATCH
    data = save_results(results, total, started, target)
    readme = "not recorded (make bench RECORD=1 records)" if not args.record else (
        "" if args.no_readme else "README table updated" if update_readme(data) else
        "README markers not found: table not written")
    print(f"\nthis run: {total:.0f} s, "
          f"{sum(1 for r in results for c in r.checks if c.met)} of "
          f"{sum(1 for r in results for c in r.checks if c.met is not None)} targets met; "
          f"results.json (all benchmarks): {data['summary']['met']} of "
          f"{data['summary']['targets']}. Wrote {target.relative_to(ROOT)}"
          f"{', ' + shown if shown else ''}{'; ' + readme if readme else ''}.")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
