"""Shared benchmark machinery: results, child processes, CPU and memory readings, windows.

Every child a benchmark starts goes through :class:`Children`, whose ``close()`` (called from
a ``finally`` block) continues, terminates and finally kills whatever is still running, so a
failed or timed-out benchmark leaves nothing behind.

Measuring windows: consumers record one sample per frame (their own clock is the system-wide
CLOCK_MONOTONIC, the same one the daemon stamps frames with). A benchmark waits until every
consumer has its first frame, lets things settle, then takes a window ``[t0, t1]``; only
samples inside the window count, and CPU times are read from ``/proc`` at both ends, so
start-up and shutdown costs never enter a figure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import yaml

if TYPE_CHECKING:
    from bench.profiling import Profiler

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a deadline passed)."""


@dataclass
class Context:
    """What every benchmark gets: a scratch directory, the optional profiler, a time scale."""

    workdir: Path
    profiler: Profiler | None = None
    scale: float = 1.0  # BENCH_SCALE: multiplies every measuring window (e.g. 0.3 for a smoke run)

    def seconds(self, nominal: float) -> float:
        """A window length, scaled."""
        return max(1.0, nominal * self.scale)


# -- results -----------------------------------------------------------------------------------


@dataclass
class Check:
    """One figure with its baseline, the ratio, and the target it is held to."""

    what: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""  # e.g. ">= 0.9x" (applies to the ratio) or "<= 1 ms" (to the value)
    met: bool | None = None  # None: informational, no target

    def to_json(self) -> dict[str, Any]:
        """Plain data for results.json."""
        data = asdict(self)
        for key in ("value", "baseline", "ratio"):
            if isinstance(data[key], float):
                data[key] = round(data[key], 6)
        return data


def ratio_check(what: str, value: float, unit: str, baseline: float, baseline_name: str,
                op: str, target: float) -> Check:
    """A check whose target applies to ``value / baseline``."""
    ratio = value / baseline if baseline else math.nan
    return Check(what, value, unit, baseline, baseline_name, ratio, f"{op} {target:g}x",
                 _compare(ratio, op, target))


def value_check(what: str, value: float, unit: str, op: str, target: float,
                baseline: float | None = None, baseline_name: str = "") -> Check:
    """A check whose target applies to the value itself (the ratio is informational)."""
    ratio = value / baseline if baseline else None
    return Check(what, value, unit, baseline, baseline_name, ratio, f"{op} {target:g} {unit}",
                 _compare(value, op, target))


def info(what: str, value: float, unit: str, baseline: float | None = None,
         baseline_name: str = "") -> Check:
    """A figure without a target."""
    ratio = value / baseline if baseline else None
    return Check(what, value, unit, baseline, baseline_name, ratio)


def _compare(value: float, op: str, target: float) -> bool:
    if math.isnan(value):
        return False
    return value >= target if op == ">=" else value <= target


@dataclass
class BenchResult:
    """What one benchmark reports."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)  # printed: header row first
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # extra figures for results.json
    plots: dict[str, Any] = field(default_factory=dict)  # raw series for the PNGs (not saved)
    seconds: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain data for results.json."""
        return {"name": self.name, "title": self.title, "seconds": round(self.seconds, 1),
                "error": self.error, "checks": [c.to_json() for c in self.checks],
                "table": self.table, "notes": self.notes, "details": self.details}


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table (first row is the header)."""
    if not rows:
        return ""
    widths = [max(len(str(row[i])) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


# -- /proc readings ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid: int) -> float:
    """CPU seconds of a process's live threads so far, in nanoseconds' resolution
    (``/proc/PID/task/*/schedstat``): what cpu_seconds counts in 10 ms ticks, for processes
    that use a few percent of a core, where ticks are too coarse to compare."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
                    total += int(stat.read().split()[0])
            except FileNotFoundError:
                continue
    return total / 1e9


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread id: (user, system) CPU seconds so far."""
    times: dict[int, tuple[float, float]] = {}
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            times[int(tid)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return times


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


# -- child processes ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for children: ``bench`` importable, unbuffered output."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
            "PYTHONUNBUFFERED": "1"}


def end_processes(procs: Iterable[subprocess.Popen[Any]], grace: float) -> None:
    """End those of ``procs`` still running: SIGCONT (a stopped child ignores SIGTERM) and
    SIGTERM to each, in order, then SIGKILL to any not gone ``grace`` s later; all reaped."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Children:
    """Every process a benchmark starts; ``close()`` ends those still running.

    Every instance is also remembered, so ``close_all()`` (the runner calls it after each
    benchmark) ends children whose own ``close()`` was cut short, e.g. by the deadline.
    """

    _instances: ClassVar[list[Children]] = []

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        Children._instances.append(self)

    @classmethod
    def close_all(cls) -> None:
        """Close every instance made so far."""
        while cls._instances:
            cls._instances.pop().close()

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a child (its own process group is not used: signals go to it alone)."""
        kwargs.setdefault("cwd", ROOT)
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(list(args), **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """:func:`end_processes` with 3 s of grace, then close their pipes."""
        end_processes(self.procs, grace=3.0)
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Samples:
    """What a consumer recorded: one entry per frame."""

    t: list[int]  # CLOCK_MONOTONIC ns when the frame was complete at the consumer
    seq: list[int]
    latency: list[int]  # ns, publish to complete (0 where not known)
    nbytes: list[int]

    def window(self, t0: int, t1: int) -> Samples:
        """The samples with t0 <= t < t1."""
        keep = [i for i, t in enumerate(self.t) if t0 <= t < t1]
        return Samples([self.t[i] for i in keep], [self.seq[i] for i in keep],
                       [self.latency[i] for i in keep], [self.nbytes[i] for i in keep])

    @property
    def frames(self) -> int:
        """Frames recorded."""
        return len(self.t)

    @property
    def bytes(self) -> int:
        """Payload bytes recorded."""
        return sum(self.nbytes)

    def expected(self) -> int:
        """Frames the source published over the seq range seen (seq gaps are missed frames)."""
        return self.seq[-1] - self.seq[0] + 1 if self.seq else 0

    def seq_rate(self) -> float:
        """Frames per second the source published, from the seq numbers seen."""
        if len(self.t) < 2 or self.t[-1] == self.t[0]:
            return math.nan
        return (self.seq[-1] - self.seq[0]) / ((self.t[-1] - self.t[0]) / 1e9)

    def rate(self) -> float:
        """Frames per second received (between the first and the last sample)."""
        if len(self.t) < 2 or self.t[-1] == self.t[0]:
            return math.nan
        return (len(self.t) - 1) / ((self.t[-1] - self.t[0]) / 1e9)


class Recorder:
    """A consumer child (``python -m bench.procs KIND ...``) and what it recorded.

    The child prints ``{"first": t}`` at its first frame; on SIGUSR1 it prints its samples as
    one JSON line and exits.
    """

    def __init__(self, children: Children, name: str, args: Sequence[str],
                 stdin: int | IO[bytes] | None = subprocess.DEVNULL,
                 module: str = "bench.procs", prefix: Sequence[str] = ()) -> None:
        """``prefix`` goes before the command (e.g. ``ip netns exec NS``, which execs, so the
        pid and the signals are the child's own)."""
        self.name = name
        self.proc = children.popen([*prefix, sys.executable, "-m", module, *args],
                                   stdin=stdin, stdout=subprocess.PIPE, text=True)
        self.first = threading.Event()
        self.done = threading.Event()
        self.samples: Samples | None = None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if line.startswith('{"first"'):
                    self.first.set()
                elif line.startswith('{"t"'):
                    data = json.loads(line)
                    self.samples = Samples(data["t"], data["seq"], data["lat"], data["nbytes"])
                else:
                    self.lines.append(line.rstrip())
        except (OSError, ValueError):
            pass
        finally:
            self.done.set()

    def stop(self) -> None:
        """Ask the child for its samples (it exits after printing them)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)

    def result(self, timeout: float = 10.0) -> Samples:
        """The samples (after ``stop``); BenchError if the child gave none."""
        self.done.wait(timeout)
        if self.samples is None:
            raise BenchError(f"consumer {self.name} gave no samples (exit {self.proc.poll()}): "
                             + " | ".join(self.lines[-5:]))
        return self.samples


def wait_first(recorders: Iterable[Recorder], timeout: float,
               alive: Callable[[], None] | None = None) -> None:
    """Wait until every recorder has its first frame (BenchError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    for rec in recorders:
        while not rec.first.wait(0.1):
            if alive is not None:
                alive()
            if rec.proc.poll() is not None:
                raise BenchError(f"consumer {rec.name} exited ({rec.proc.returncode}): "
                                 + " | ".join(rec.lines[-5:]))
            if time.monotonic() > deadline:
                raise BenchError(f"consumer {rec.name}: no frame within {timeout:g} s")


def collect(recorders: Sequence[Recorder], timeout: float = 15.0) -> list[Samples]:
    """Stop every recorder and return their samples, in order."""
    for rec in recorders:
        rec.stop()
    return [rec.result(timeout) for rec in recorders]


@dataclass
class Window:
    """A measuring window with CPU and memory readings of some processes."""

    t0: int
    t1: int
    cpu: dict[str, float]  # name -> CPU seconds used inside the window
    rss_max: dict[str, int]
    rss_start: dict[str, int]
    rss_series: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (t ns, bytes)

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return (self.t1 - self.t0) / 1e9


def measure(seconds: float, pids: dict[str, int] | None = None,
            alive: Callable[[], None] | None = None, every: float = 0.25) -> Window:
    """Sleep through a window of ``seconds``, reading CPU at both ends and RSS throughout."""
    pids = pids or {}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    rss0 = {name: rss_bytes(pid) for name, pid in pids.items()}
    rss_max = dict(rss0)
    t0 = time.monotonic_ns()
    series: dict[str, list[tuple[int, int]]] = {name: [(t0, rss0[name])] for name in pids}
    end = t0 + int(seconds * 1e9)
    while (now := time.monotonic_ns()) < end:
        time.sleep(min(every, (end - now) / 1e9))
        if alive is not None:
            alive()
        for name, pid in pids.items():
            rss = rss_bytes(pid)
            series[name].append((time.monotonic_ns(), rss))
            rss_max[name] = max(rss_max[name], rss)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t1 = time.monotonic_ns()
    return Window(t0, t1, {n: cpu1[n] - cpu0[n] for n in pids}, rss_max, rss0, series)


# -- the daemon as a subprocess ----------------------------------------------------------------


class DaemonProcess:
    """``python -m framebus run -c CONFIG`` with the given cameras and subscribers."""

    def __init__(self, children: Children, workdir: Path, cameras: dict[str, dict[str, Any]],
                 subscribers: dict[str, dict[str, Any]], name: str = "framebus") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.fifo_dir = workdir / f"{name}-fifos"
        config = {"fifo_dir": str(self.fifo_dir), "http": {"enabled": False},
                  "cameras": cameras, "subscribers": subscribers}
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.name = name
        with open(self.log_path, "wb") as log:
            self.proc = children.popen(
                [sys.executable, "-m", "framebus", "run", "-c", str(self.config_path),
                 "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    def fifo(self, subscriber: str) -> Path:
        """The FIFO of a configured subscriber."""
        return self.fifo_dir / f"{subscriber}.fifo"

    def alive(self) -> None:
        """BenchError (with the log's tail) if the daemon has exited."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-8:]
            raise BenchError(f"daemon {self.name} exited ({self.proc.returncode}): "
                             + " | ".join(tail))

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines of the daemon's log."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []


def fb_reader(children: Children, name: str, fifo: Path) -> Recorder:
    """A consumer using framebus.client.Subscriber on ``fifo``."""
    return Recorder(children, name, ["fb", str(fifo)])


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table; '-' for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio_text(value: float | None) -> str:
    """A ratio for a table."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"
