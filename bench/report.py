"""Results: ``bench/results.json``, the README's benchmark table, and PNG plots in bench/out/.

Running one benchmark merges its result into the recorded results.json, so the file and the
README table always hold the latest result of every benchmark (each with its own date). A run
that is not recorded (``make bench`` without ``RECORD=1``) writes the merged document to
``SCRATCH`` instead, outside what git tracks, and leaves the README alone.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

from bench.common import OUT, ROOT, BenchResult

RESULTS = ROOT / "bench" / "results.json"
SCRATCH = ROOT / ".cache" / "bench" / "results.json"  # an unrecorded run's (ignored by git)
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> dict[str, Any]:
    """Core count, CPU model, Python, kernel."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_at_start": os.getloadavg()}


def load_results() -> dict[str, Any]:
    """The current results.json (empty structure if missing or unreadable)."""
    try:
        data: dict[str, Any] = json.loads(RESULTS.read_text())
        if isinstance(data.get("benchmarks"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"benchmarks": {}}


def save_results(results: list[BenchResult], total_s: float, started: dict[str, Any],
                 path: Path = RESULTS) -> dict[str, Any]:
    """Merge ``results`` into the recorded results.json and write that to ``path``; return
    the whole document."""
    data = load_results()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    data["machine"] = started
    data["updated"] = now
    data["last_run"] = {"date": now, "benchmarks": [r.name for r in results],
                        "seconds": round(total_s, 1)}
    for result in results:
        entry = result.to_json()
        entry["date"] = now
        entry["cores"] = started["cores"]
        data["benchmarks"][result.name] = entry
    checks = [c for b in data["benchmarks"].values() for c in b["checks"]
              if c["met"] is not None]
    data["summary"] = {"targets": len(checks), "met": sum(1 for c in checks if c["met"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return data


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    text = (f"{value:,.0f}" if magnitude >= 100 else f"{value:.2f}" if magnitude >= 1
            else f"{value:.3f}")
    return f"{text} {unit}".strip()


ORDER = ("fanout", "latency", "decode", "serve_many", "idle", "scale", "slow_reader", "remote")


def readme_table(data: dict[str, Any]) -> str:
    """The markdown that goes between the README markers."""
    machine_info = data.get("machine", {})
    benches = data["benchmarks"]
    names = [n for n in ORDER if n in benches] + [n for n in benches if n not in ORDER]
    lines = [
        f"Last updated {data.get('updated', '?')} on {machine_info.get('cores', '?')} cores "
        f"({machine_info.get('cpu', '?')}, Python {machine_info.get('python', '?')}); "
        f"{data['summary']['met']} of {data['summary']['targets']} targets met. "
        "Ratios are framebus ÷ the baseline measured in the same run.",
        "",
        "| # | benchmark | measure | framebus | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        number = ORDER.index(name) + 1 if name in ORDER else ""
        bench = benches[name]
        if bench.get("error"):
            lines.append(f"| {number} | {name} | failed: {bench['error'][:80]} | | | | | |")
            continue
        for check in bench["checks"]:
            baseline = ""
            if check["baseline"] is not None:
                baseline = f"{_num(check['baseline'], check['unit'])} ({check['baseline_name']})"
            ratio = "" if check["ratio"] is None else f"{check['ratio']:.2f}x"
            met = {True: "yes", False: "**no**", None: ""}[check["met"]]
            lines.append(f"| {number} | {name} | {check['what']} | "
                         f"{_num(check['value'], check['unit'])} | {baseline} | {ratio} | "
                         f"{check['target']} | {met} |")
    last = data.get("last_run", {})
    lines += ["", f"Last `make bench` run: {', '.join(last.get('benchmarks', []))} in "
              f"{last.get('seconds', '?')} s. Per-benchmark dates, tables and notes: "
              "[bench/results.json](bench/results.json)."]
    return "\n".join(lines)


def update_readme(data: dict[str, Any]) -> bool:
    """Rewrite the README between the markers; False if the markers are missing."""
    try:
        text = README.read_text()
    except OSError:
        return False
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _m: f"{BEGIN}\n{readme_table(data)}\n{END}", text, count=1)
    if new != text:
        README.write_text(new)
    return True


def plots(results: list[BenchResult]) -> list[Path]:
    """PNG plots of whatever the given results carry; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    OUT.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        if "latency_ms" in result.plots:
            series: dict[str, list[float]] = result.plots["latency_ms"]
            fig, ax = plt.subplots(figsize=(7, 4))
            for label, values in series.items():
                ordered = sorted(values)
                if not ordered:
                    continue
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.plot(ordered, ys, label=f"{label} (n={len(ordered)})")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="x", which="minor", labelsize=7)
            ax.set_xlabel("publish to whole frame at the consumer (ms, log)")
            ax.set_ylabel("fraction of frames")
            ax.axvline(1.0, color="grey", linestyle=":", label="p50 target 1 ms")
            ax.axvline(5.0, color="grey", linestyle="--", label="p99 target 5 ms")
            if "framebus shm" in series:
                ax.axvline(0.5, color="tab:green", linestyle=":", label="shm p50 target 0.5 ms")
                ax.axvline(2.0, color="tab:green", linestyle="--", label="shm p99 target 2 ms")
            ax.set_title("Latency, 8 cameras x 25 fps x 4 subscribers, 720p bgr24")
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
            written.append(_save(fig, "latency.png"))
            plt.close(fig)
        if "scale" in result.plots:
            rows: list[tuple[int, float, float, float, float]] = result.plots["scale"]
            cams = [r[0] for r in rows]
            fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
            left.plot(cams, [r[1] for r in rows], marker="o", label="cores per camera")
            left.plot(cams, [r[4] for r in rows], marker="s", label="daemon cores")
            left.set_xlabel("cameras (720p25, 2 subscribers each)")
            left.set_ylabel("CPU cores")
            left.legend()
            left.grid(True, alpha=0.3)
            right.plot(cams, [r[2] for r in rows], marker="o", color="green")
            right.axhline(99.5, color="grey", linestyle="--", label="target 99.5%")
            right.set_xlabel("cameras")
            right.set_ylabel("delivered / published (%)")
            right.legend()
            right.grid(True, alpha=0.3)
            fig.suptitle("Scale")
            written.append(_save(fig, "scale.png"))
            plt.close(fig)
        if "fanout_gbps" in result.plots:
            bars: dict[str, float] = result.plots["fanout_gbps"]
            fig, ax = plt.subplots(figsize=(9, 4))
            colors = ["tab:gray" if "bare" in k else "tab:orange" if "ZeroMQ" in k
                      else "tab:purple" if "iceoryx2" in k
                      else "tab:green" if "shm" in k else "tab:blue" for k in bars]
            fig.set_size_inches(9, max(4.0, 0.25 * len(bars)))
            ax.barh(list(bars), list(bars.values()), color=colors)
            ax.set_xscale("log")
            ax.set_xlabel("GB/s delivered to readers (sum over readers, log)")
            ax.set_title("Fan-out throughput, bgr24 frames")
            ax.invert_yaxis()
            ax.grid(True, axis="x", alpha=0.3)
            written.append(_save(fig, "fanout.png"))
            plt.close(fig)
    return written


def _save(fig: Any, name: str) -> Path:
    path = OUT / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
