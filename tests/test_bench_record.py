"""``make bench`` changes no tracked file unless asked to record (issue 21, newcomer finding
7): results go to .cache/bench/results.json; ``--record`` (``make bench RECORD=1``) writes
bench/results.json and the README table. Run with a stand-in benchmark, on copies."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import report, run
from bench.common import BenchResult, Check, Context

ROOT = Path(__file__).resolve().parent.parent
README = "intro\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\nend\n"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = {"results": tmp_path / "bench" / "results.json", "readme": tmp_path / "README.md",
             "scratch": tmp_path / ".cache" / "bench" / "results.json"}
    paths["results"].parent.mkdir()
    paths["results"].write_text(json.dumps({"benchmarks": {"old": {"checks": []}}}))
    paths["readme"].write_text(README)
    for module in (run, report):
        monkeypatch.setattr(module, "RESULTS", paths["results"], raising=False)
        monkeypatch.setattr(module, "SCRATCH", paths["scratch"], raising=False)
    monkeypatch.setattr(report, "README", paths["readme"])
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "plots", lambda _results: [])

    def stand_in(name: str, _ctx: Context) -> BenchResult:
        return BenchResult(name, "stand-in", checks=[Check("speed", 2.0, "x", met=True)],
                           table=[["what", "value"], ["speed", "2"]])
    monkeypatch.setattr(run, "run_one", stand_in)
    return paths


def test_a_plain_run_writes_only_the_scratch_results(places: dict[str, Path]) -> None:
    recorded = places["results"].read_text()
    assert run.main(["idle"]) == 0
    assert places["results"].read_text() == recorded and places["readme"].read_text() == README
    data = json.loads(places["scratch"].read_text())
    assert set(data["benchmarks"]) == {"old", "idle"}  # merged with the recorded results


def test_a_recording_run_writes_results_and_the_readme_table(places: dict[str, Path]) -> None:
    assert run.main(["idle", "--record"]) == 0
    assert set(json.loads(places["results"].read_text())["benchmarks"]) == {"old", "idle"}
    assert "old table" not in places["readme"].read_text()
    assert not places["scratch"].exists()


def test_the_makefile_records_only_when_asked() -> None:
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=True).stdout
    assert "--record" not in dry("bench") and "--record" in dry("bench", "RECORD=1")
    assert "FRAMEBUS_SCREENSHOT=.cache/status-page.png" in dry("screenshot")
    assert "FRAMEBUS_SCREENSHOT=docs/status-page.png" in dry("screenshot", "RECORD=1")
