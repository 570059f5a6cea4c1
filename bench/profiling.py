"""Optional profiles of a benchmark's window (``python -m bench.run NAME --profile``).

Two views of the same window:

* per-thread user/system CPU seconds from ``/proc/<pid>/task/<tid>/stat`` (system time is
  the kernel copying frames through pipes; user time is Python, numpy and libav), with thread
  names from the interpreter (``py-spy dump`` for another process);
* ``py-spy record`` (sampling only threads that are running, 100 Hz): the functions with the
  most samples, self and inclusive, and framebus's own lines. py-spy is not a bench
  dependency: ``pip install py-spy`` into the venv to get this part.

Results go to ``bench/out/profile-<label>.txt`` (summary) and ``.raw`` (collapsed stacks).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import OUT, thread_times

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable (next to this interpreter, or on PATH)."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Session:
    """One profile being recorded."""

    label: str
    pid: int
    seconds: float
    names: dict[int, str]
    times0: dict[int, tuple[float, float]]
    proc: subprocess.Popen[bytes] | None
    raw_path: Path
    summary: list[str] = field(default_factory=list)


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, for this process or (with py-spy) another one."""
    import os

    if pid == os.getpid():
        return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    exe = py_spy()
    if exe is None:
        return {}
    try:
        text = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(tid): name for tid, name in re.findall(r"Thread (\d+) \([^)]*\): \"([^\"]*)\"",
                                                        text)}


class Profiler:
    """Starts and finishes profiles; a benchmark calls ``start`` at its window's start."""

    def __init__(self) -> None:
        self.exe = py_spy()
        self.sessions: list[Session] = []

    def start(self, label: str, pid: int, seconds: float) -> Session:
        """Begin profiling ``pid`` for about ``seconds``."""
        OUT.mkdir(parents=True, exist_ok=True)
        raw_path = OUT / f"profile-{label}.raw"
        proc = None
        if self.exe is not None:
            proc = subprocess.Popen(
                [self.exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                 "--rate", "100", "--format", "raw", "--threads", "--output", str(raw_path),
                 "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        session = Session(label, pid, seconds, thread_names(pid), thread_times(pid), proc,
                          raw_path)
        self.sessions.append(session)
        return session

    def finish(self, session: Session) -> list[str]:
        """Stop recording; write and return the summary lines."""
        times1 = thread_times(session.pid)
        names = {**session.names, **thread_names(session.pid)}
        if session.proc is not None:
            try:
                session.proc.wait(session.seconds + 15)
            except subprocess.TimeoutExpired:
                session.proc.kill()
                session.proc.wait(5)
        lines = [f"profile {session.label}: pid {session.pid}, ~{session.seconds:g} s window",
                 "", "CPU seconds by thread in the window (user / system):"]
        rows = []
        for tid, (user1, sys1) in times1.items():
            user0, sys0 = session.times0.get(tid, (0.0, 0.0))
            user, system = user1 - user0, sys1 - sys0
            if user + system > 0:
                rows.append((user + system, tid, user, system))
        for total, tid, user, system in sorted(rows, reverse=True):
            lines.append(f"  {names.get(tid, '?'):<24} tid {tid:<8} {user:6.2f} / {system:6.2f}"
                         f"  ({total / session.seconds * 100:5.1f}% of a core)")
        lines += ["", *summarize(session.raw_path)]
        session.summary = lines
        session.raw_path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        return lines

    def close(self) -> None:
        """End any recorder still running."""
        for session in self.sessions:
            if session.proc is not None and session.proc.poll() is None:
                session.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    session.proc.wait(5)


def summarize(raw_path: Path, top: int = 15) -> list[str]:
    """The functions with the most samples in a py-spy raw (collapsed) profile."""
    if not raw_path.exists():
        return ["(no py-spy samples: pip install py-spy into the venv for function profiles)"]
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    framebus_lines: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = []
        for frame in frames[1:]:
            match = _FRAME.match(frame)
            if match is None:
                continue
            short = f"{match['func']} ({Path(match['file']).name}:{match['line'] or '?'})"
            names.append((match["func"], match["file"], short))
        if not names:
            continue
        self_counts[names[-1][2]] += count
        seen: set[str] = set()
        for func, file, _short in names:
            key = f"{func} ({Path(file).name})"
            if key not in seen:
                inclusive[key] += count
                seen.add(key)
        for _func, file, short in reversed(names):  # the innermost framebus frame
            if file.startswith("framebus/") or "/framebus/" in file:
                framebus_lines[short] += count
                break
    if not total:
        return ["(py-spy recorded no samples)"]
    out = [f"py-spy: {total} samples of running threads"]
    out.append("by thread:")
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in threads.most_common(8)]
    out.append("self (innermost Python frame):")
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in self_counts.most_common(top)]
    out.append("inclusive:")
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out.append("innermost framebus line:")
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in framebus_lines.most_common(top)]
    return out
