"""The shipped alert rules in a real Prometheus scraping a real daemon: every rule evaluates
without error against the series the daemon exports, a healthy daemon fires nothing, and a
daemon killed with SIGKILL fires FramebusDown while its camera alert stays silent (its
series are gone, which is why FramebusDown exists). The rules' ``for:`` durations are cut to
2 s so the test takes seconds; the expressions are the shipped ones."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prockit import free_port
from waiting import wait_for

from bench.common import end_processes

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.base + path + query, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        result = self.get("/query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.get("/alerts")["alerts"]
                if a["state"] == "firing"}

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("/rules")["groups"] for rule in group["rules"]]

    def up(self) -> bool:
        try:
            self.get("/status/buildinfo")
            return True
        except OSError:
            return False


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Prometheus]]:
    daemon_port, prom_port = free_port(), free_port()
    config = tmp_path / "framebus.yaml"
    config.write_text(yaml.safe_dump({
        "fifo_dir": str(tmp_path / "fifos"),
        "http": {"listen": f"127.0.0.1:{daemon_port}"},
        "cameras": {"gen": {"url": "lavfi:testsrc2=size=160x120:rate=10,realtime"}},
        "subscribers": {"det": {"camera": "gen"}},
    }))
    rules = tmp_path / "alerts.yml"
    rules.write_text(re.sub(r"for: \d+[smh]", "for: 2s", ALERTS.read_text()))
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "framebus",
                            "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]}],
    }))
    with open(tmp_path / "daemon.log", "wb") as dlog, \
            open(tmp_path / "prometheus.log", "wb") as plog:
        daemon = subprocess.Popen([sys.executable, "-m", "framebus", "run", "-c", str(config)],
                                  stdout=dlog, stderr=subprocess.STDOUT)
        assert PROMETHEUS is not None
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={prom_config}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=plog, stderr=subprocess.STDOUT)
        try:
            api = Prometheus(prom_port)
            wait_for(api.up, TIMEOUT_S, "Prometheus to answer", poll=0.2)
            yield daemon, api
        finally:
            end_processes([daemon, prom], grace=10.0)


def test_rules_evaluate_on_real_series_and_a_killed_daemon_fires_framebus_down(
        site: tuple[subprocess.Popen[bytes], Prometheus]) -> None:
    daemon, api = site
    wait_for(lambda: api.value('framebus_camera_state{camera="gen",state="streaming"}') == 1,
             TIMEOUT_S, "Prometheus to see the camera streaming", poll=0.5)
    # two evaluations after the streaming sample: every rule ran against the live series
    wait_for(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown"
                         for r in api.rules()), TIMEOUT_S, "every rule evaluated", poll=0.5)
    broken = [(r["name"], r.get("lastError")) for r in api.rules() if r["health"] != "ok"]
    assert not broken, broken
    # a subscriber without a reader is the only thing wrong here: nothing else may stay
    # firing (FramebusAbsent may have fired before the first scrape, with for: cut to 2 s)
    allowed = {"FramebusSubscriberNoReader"}
    try:
        wait_for(lambda: api.firing() <= allowed, TIMEOUT_S, "a healthy daemon's alerts to settle",
                 poll=0.5)
    except AssertionError:
        raise AssertionError(f"firing on a healthy daemon: {api.firing() - allowed}") from None
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    wait_for(lambda: "FramebusDown" in api.firing(), TIMEOUT_S, "FramebusDown to fire",
             poll=0.5)
    assert "FramebusCameraDown" not in api.firing()
    assert api.value('up{job="framebus"}') == 0
