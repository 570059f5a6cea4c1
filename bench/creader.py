"""Consumers that are docs/examples/reader.c (``-l``: each line ends with the frame's
publish-to-read latency), for the rows that separate the daemon's share of the latency from
the Python client's. Each reader's stdout goes to a file, flushed per frame, so a window is
a range of lines: counted at its start and at its end, with no process of ours waking per
frame to collect them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, BenchError, Children, Samples

READER_C = ROOT / "docs" / "examples" / "reader.c"


def build(workdir: Path) -> Path | None:
    """Compile reader.c as its header says; None without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    exe = workdir / "fbus-reader"
    subprocess.run([gcc, "-std=c99", "-Wall", "-Werror", "-O2", "-o", str(exe), str(READER_C)],
                   check=True, capture_output=True, timeout=120)
    return exe


class CReaders:
    """One C reader process per FIFO, writing its lines to ``<fifo>.lines``."""

    def __init__(self, children: Children, exe: Path, fifos: list[Path]) -> None:
        self.outputs = [fifo.with_suffix(".lines") for fifo in fifos]
        self.procs = []
        for fifo, output in zip(fifos, self.outputs, strict=True):
            with output.open("wb") as sink:  # the child keeps its own descriptor
                self.procs.append(children.popen([str(exe), "-l", str(fifo)], stdout=sink))

    def lines(self) -> list[int]:
        """Whole lines each reader has written so far."""
        return [output.read_bytes().count(b"\n") for output in self.outputs]

    def wait_first(self, timeout: float) -> None:
        """Until every reader has printed a frame (BenchError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not all(self.lines()):
            for proc in self.procs:
                if proc.poll() is not None:
                    raise BenchError(f"C reader exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise BenchError(f"a C reader had no frame within {timeout:g} s")
            time.sleep(0.05)

    def samples(self, start: list[int], end: list[int]) -> list[Samples]:
        """The frames between two ``lines()`` counts, per reader (``t`` is the line's index:
        only the order is known here, the latency is the reader's own)."""
        found = []
        for output, first, last in zip(self.outputs, start, end, strict=True):
            rows = output.read_bytes().split(b"\n")[first:last]
            fields = [row.split() for row in rows]
            found.append(Samples(list(range(first, last)), [int(f[1]) for f in fields],
                                 [int(f[-1]) for f in fields], [int(f[6]) for f in fields]))
        return found
