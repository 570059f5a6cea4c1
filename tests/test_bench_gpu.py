"""bench/gpu.py (issue 23): what it claims from what it measured, and its skip without a GPU.

The whole rehearsal (``bash bench/gpu.sh --cpu-rehearsal``, about 25 s on 2 idle cores) starts
an RTSP server and three daemons, too slow and load-bound for a test; these check the parts
that decide what the script says: a GPU figure only from cameras that decoded on cuda, frames
compared between legs, the fallback checks, and exit 77 with nothing measured."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import gpu, report, run

ROOT = Path(__file__).resolve().parent.parent
SIZES = gpu.Sizes(1, 640, 360, 0.0, 1.0, 1.0)


def camera(active: str | None, fps: float = 25.0, width: int = 640) -> dict[str, Any]:
    frame = {"width": width, "height": 360, "format": "yuv420p", "bytes": width * 540,
             "index": 3, "luma_mae": 0.0}
    return {"fps": fps, "full_rate": gpu.full_rate(fps), "frame": frame,
            "hwaccel": {"requested": "cuda", "active": active, "fallback": None}}


def data(sw_cores: float, cu_cores: float, active: str | None, width: int = 640,
         fps: float = 25.0) -> dict[str, Any]:
    def leg(cores: float, act: str | None, w: int, f: float) -> dict[str, Any]:
        return {"cameras": {"h264-0": camera(act, f, w), "h265-0": camera(act, f, w)},
                "daemon_cores": cores * 2, "cores_per_camera": cores}
    fallback = {"soft": {"state": "streaming", "fps": 25.0,
                         "hwaccel": {"requested": "cuda", "active": None, "fallback": "no GPU 99"}},
                "required": {"state": "unsupported", "reason": "hwaccel_required: ...",
                             "frames_decoded": 0, "reconnects_in_window": 0}, "observe_s": 1.0}
    return {"software": leg(sw_cores, None, 640, 25.0), "cuda": leg(cu_cores, active, width, fps),
            "fallback": fallback}


def checks(result: Any) -> dict[str, bool | None]:
    return {c.what.split(":")[0].split(",")[0]: c.met for c in result.checks}


def test_the_cpu_ratio_is_a_gpu_figure_only_when_every_camera_decoded_on_cuda() -> None:
    met = gpu.result_of(data(0.10, 0.02, "cuda"), SIZES, claim=True)
    assert checks(met)["CPU per camera"] is True
    assert all(c.met for c in met.checks)
    missed = gpu.result_of(data(0.10, 0.05, "cuda"), SIZES, claim=True)
    assert checks(missed)["CPU per camera"] is False
    fell_back = gpu.result_of(data(0.10, 0.02, None), SIZES, claim=True)
    assert checks(fell_back)["CPU per camera"] is None  # informational, never "met"
    assert checks(fell_back)["cameras decoding on cuda (hwaccel.active)"] is False
    rehearsal = gpu.result_of(data(0.10, 0.02, "cuda"), SIZES, claim=False)
    assert checks(rehearsal)["CPU per camera"] is None
    assert "cameras decoding on cuda (hwaccel.active)" not in checks(rehearsal)


def test_frames_of_another_size_or_a_slow_camera_fail_their_checks() -> None:
    result = checks(gpu.result_of(data(0.10, 0.02, "cuda", width=656, fps=20.0), SIZES, True))
    assert result["frames of the same size and format on both legs"] is False
    assert result["cuda"] is False  # cameras at full rate
    assert result["software"] is True


def test_a_failed_leg_is_reported_not_claimed() -> None:
    result = gpu.result_of({"error": "BenchTimeout: over 450 s"}, SIZES, claim=True)
    assert [c.met for c in result.checks] == [False]
    assert any("BenchTimeout" in note for note in result.notes)
    broken = data(0.10, 0.02, "cuda")
    broken["fallback"]["required"] |= {"state": "reconnecting", "reconnects_in_window": 6}
    found = checks(gpu.result_of(broken, SIZES, claim=True))
    assert found["hwaccel_required with device 99"] is True  # not streaming, but in a loop:
    assert found["hwaccel_required"] is False
    broken["fallback"]["required"] |= {"state": "streaming", "frames_decoded": 50,
                                       "reconnects_in_window": 0}
    found = checks(gpu.result_of(broken, SIZES, claim=True))
    assert found["hwaccel_required with device 99"] is False
    assert found["hwaccel_required"] is True


def test_gpu_runs_only_when_named() -> None:
    assert run.MODULES["gpu"] == "bench.gpu"
    assert "gpu" not in report.ORDER


@pytest.mark.skipif(gpu.driver()["reason"] is None, reason="this host has a GPU: it would run")
def test_without_a_gpu_the_script_says_so_measures_nothing_and_exits_77(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", "bench/gpu.sh", "--out", str(out)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == gpu.SKIPPED_EXIT, done.stdout + done.stderr
    assert "SKIPPED: no NVIDIA GPU/driver" in done.stdout
    written = json.loads(out.read_text())
    assert written["skipped"] and "legs" not in written and "software" not in written
