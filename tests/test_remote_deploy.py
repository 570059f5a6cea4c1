"""Deployment files for framebus across hosts (issue 20), checked without a cluster or a fleet:
the Kubernetes DaemonSet (docs/remote/), the fleet's Prometheus scrape configuration with its
file_sd targets, and the bridge's alerting rules (docs/prometheus/) under promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DAEMONSET = ROOT / "docs" / "remote" / "kubernetes-daemonset.yaml"
PROMETHEUS = ROOT / "docs" / "prometheus"
FLEET = PROMETHEUS / "prometheus-fleet.yml"
FLEET_TARGETS = PROMETHEUS / "file_sd" / "framebus-fleet.json"
RULES = PROMETHEUS / "framebus-remote.rules.yml"
RULES_TEST = PROMETHEUS / "framebus-remote.rules_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian package prometheus)")


def walk(node: Any) -> Any:
    """Every (key, value) pair of a parsed YAML document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=ROOT)


# -- Kubernetes -------------------------------------------------------------------------------


def test_the_daemonset_runs_daemon_and_bridge_side_by_side_unprivileged() -> None:
    docs = [doc for doc in yaml.safe_load_all(DAEMONSET.read_text()) if doc]
    assert [doc["kind"] for doc in docs] == ["DaemonSet"]
    pod = docs[0]["spec"]["template"]["spec"]
    assert docs[0]["spec"]["selector"]["matchLabels"].items() <= \
        docs[0]["spec"]["template"]["metadata"]["labels"].items()
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"daemon", "bridge"}
    assert containers["daemon"]["args"][:3] == ["run", "-c", "/etc/framebus/framebus.yaml"]
    assert containers["bridge"]["args"][:3] == ["bridge", "-c", "/etc/framebus/framebus.yaml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {name: {m["mountPath"]: m for m in c["volumeMounts"]}
              for name, c in containers.items()}

    # /run/framebus (FIFOs, shm segments, control.sock) shared, in memory
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    for name in containers:
        assert mounts[name]["/run/framebus"]["name"] == "run"
    # the config from a ConfigMap; the TLS key for the bridge only, camera passwords for the
    # daemon only
    assert "configMap" in volumes["config"]
    assert mounts["bridge"]["/etc/framebus/tls"]["name"] == "tls"
    assert "secret" in volumes["tls"]
    secrets = {name: {m["name"] for m in c["volumeMounts"] if "secret" in volumes[m["name"]]}
               for name, c in containers.items()}
    assert secrets == {"daemon": {"cameras"}, "bridge": {"tls"}}
    assert all(m.get("readOnly") for c in mounts.values() for path, m in c.items()
               if m["name"] in ("config", "tls", "cameras"))

    # nothing privileged: non-root, read-only root, no capabilities, no escalation
    assert not any(value is True for key, value in walk(docs[0])
                   if key in ("privileged", "hostPID", "hostIPC", "allowPrivilegeEscalation"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in containers.values():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"requests", "limits"} <= container["resources"].keys()
        assert "memory" in container["resources"]["limits"]
    # the bridge: another user than the daemon's, in its group (as framebus-bridge.service)
    bridge_user = containers["bridge"]["securityContext"]["runAsUser"]
    assert bridge_user != pod["securityContext"]["runAsUser"]
    assert "runAsGroup" not in containers["bridge"]["securityContext"]

    # liveness: the daemon's open /healthz route, the bridge's /metrics
    assert 'Route("GET", re.compile(r"/healthz"), h.health, open=True)' in \
        (ROOT / "framebus" / "control.py").read_text()
    assert containers["daemon"]["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8470}
    assert containers["bridge"]["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": 8471}
    # zenoh gossip hands out the addresses the bridge listens on: the node's, reachable
    assert pod["hostNetwork"] is True


# -- Prometheus -------------------------------------------------------------------------------


def test_the_fleet_targets_name_a_daemon_and_bridge_per_host() -> None:
    groups = json.loads(FLEET_TARGETS.read_text())
    for group in groups:
        role = group["labels"]["__framebus_role"]
        assert role in ("daemon", "bridge")
        port = {"daemon": "8470", "bridge": "8471"}[role]
        assert all(target.endswith(f":{port}") for target in group["targets"])
    hosts = {role: {g["labels"].get("host") for g in groups
                    if g["labels"]["__framebus_role"] == role} for role in ("daemon", "bridge")}
    assert hosts["bridge"] <= hosts["daemon"]  # a bridge runs beside a daemon


@needs_promtool
def test_the_fleet_scrape_config_passes_promtool() -> None:
    # checks the file_sd file's targets and labels and the rule files it names, too
    check = promtool("check", "config", str(FLEET))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "framebus-remote.rules.yml" in check.stdout


@needs_promtool
@pytest.mark.parametrize(("job", "role", "port"), [("framebus", "daemon", "8470"),
                                                   ("framebus-bridge", "bridge", "8471")])
def test_each_job_scrapes_its_role_with_a_host_label(job: str, role: str, port: str) -> None:
    # file SD answers at once; promtool then waits --timeout for more
    found = promtool("check", "service-discovery", "--timeout=5s", str(FLEET), job)
    assert found.returncode == 0, found.stderr
    kept = [t["labels"] for t in json.loads(found.stdout) if t["labels"]]
    wanted = [g for g in json.loads(FLEET_TARGETS.read_text())
              if g["labels"]["__framebus_role"] == role]
    assert sorted(t["instance"] for t in kept) == sorted(t for g in wanted for t in g["targets"])
    for labels in kept:
        assert labels["job"] == job and labels["instance"].endswith(f":{port}")
        # from the file, else the address without its port
        assert labels["host"] and not re.search(r":\d+$", labels["host"])


@needs_promtool
def test_the_remote_rules_pass_promtool_and_their_unit_tests() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL or "promtool", "test", "rules", RULES_TEST.name],
                          cwd=RULES_TEST.parent, capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    tested = {case["alertname"] for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in group["alert_rule_test"]}
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    assert tested == {rule["alert"] for rule in rules}  # every rule has a test
    assert all({"summary", "description"} <= rule["annotations"].keys() for rule in rules)
    exprs = " ".join(rule["expr"] for rule in rules)
    assert 'up{job="framebus-bridge"} == 0' in exprs
    assert 'absent(up{job="framebus-bridge"})' in exprs
