"""Metrics operators already use: the standard process_* and python_info series, build info,
series that exist at 0 from the first scrape, camera failure reasons, input figures, HTTP
request counts by route template; the alert rules under promtool and the Grafana dashboard
against what a live daemon exports."""

from __future__ import annotations

import errno
import json
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import pytest
import yaml
from apikit import ApiClient
from camerakit import GarbageServer
from fanoutkit import ReaderProcess, running_daemon
from prometheus_client.parser import text_string_to_metric_families
from rtspserver import Mount, RtspServer
from waiting import wait_for

import framebus
from framebus.daemon import Daemon
from framebus.failures import RECONNECT_REASONS, failure_reason
from framebus.metrics import DROP_REASONS, SHM_FAILURE_REASONS

DOCS = Path(__file__).resolve().parent.parent / "docs"
ALERTS = DOCS / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCS / "prometheus" / "alerts_test.yml"
DASHBOARD = DOCS / "grafana" / "framebus.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def values_of(text: str) -> Values:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def pick(values: Values, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    return {key: value for (sample, key), value in values.items()
            if sample == name and labels.items() <= dict(key).items()}


def one(values: Values, name: str, **labels: str) -> float:
    found = pick(values, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


@dataclass
class Rig:
    daemon: Daemon
    api: ApiClient

    def scrape(self) -> str:
        status, headers, raw = ApiClient(self.daemon, token="").request("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain"), status
        return raw.decode()

    def values(self) -> Values:
        return values_of(self.scrape())


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One daemon for the whole module: a camera that streams (with a FIFO reader and an shm
    subscriber), one nobody subscribes to (idle), and cameras that cannot connect: a closed
    port, a missing mount, a server speaking garbage, one that never answers."""
    server = RtspServer([Mount("cam", width=320, height=180, gop=10)]).start()
    silent = socket.create_server(("127.0.0.1", 0))  # completes handshakes, never answers
    port = closed_port()
    try:
        with GarbageServer() as garbage:
            url = server.url("cam")
            cameras: dict[str, dict[str, Any]] = {
                "cam": {"url": url, "idle_decode": "all"},
                "lonely": {"url": url},  # idle_decode: keyframes (the default), no subscriber
                "closed": {"url": f"rtsp://127.0.0.1:{port}/nothing"},
                "missing": {"url": url.replace("/cam", "/no-such-mount")},
                "garbage": {"url": garbage.url},
                "silent": {"url": f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x",
                           "open_timeout": "1s"},
            }
            subscribers = {"sub": {"camera": "cam", "format": "gray"},
                           "det": {"camera": "cam", "transport": "shm"}}
            with running_daemon(cameras, subscribers, tmp_path_factory.mktemp("fifos"),
                                http={"listen": "127.0.0.1:0"}) as daemon:
                reader = ReaderProcess(daemon.config.fifo_dir / "sub.fifo")
                try:
                    reader.wait_frames(5)
                    yield Rig(daemon, ApiClient(daemon))
                finally:
                    reader.kill()
    finally:
        silent.close()
        server.close()


# -- without a daemon -------------------------------------------------------------------------


@needs_promtool
def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    cases = [case for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
             for case in group["alert_rule_test"]]
    defined = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
               for rule in group["rules"]}
    # every rule has a case where it fires and one where it does not
    assert {case["alertname"] for case in cases if case["exp_alerts"]} == defined
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == defined


@pytest.mark.parametrize(("exc", "timed_out", "reason"), [
    (av.error.HTTPNotFoundError(-1, "Server returned 404 Not Found"), False, "not_found"),
    (av.error.FileNotFoundError(errno.ENOENT, "No such file or directory"), False, "not_found"),
    (av.error.ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), False,
     "refused"),
    (av.error.TimeoutError(errno.ETIMEDOUT, "Connection timed out"), False, "timeout"),
    (av.error.ExitError(-1, "Immediate exit requested"), False, "timeout"),
    (av.error.InvalidDataError(-1, "Invalid data found when processing input"), True,
     "timeout"),  # FFmpeg's RTSP open, interrupted by PyAV's timeout, says invalid data
    (av.error.InvalidDataError(-1, "Invalid data found when processing input"), False,
     "protocol"),
    (av.error.HTTPForbiddenError(-1, "Server returned 403 Forbidden"), False, "protocol"),
    (av.error.HTTPServerError(-1, "Server returned 5XX Server Error reply"), False, "protocol"),
    (av.error.OSError(errno.EHOSTUNREACH, "No route to host"), False, "error"),
    (av.error.ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), False,
     "error"),
    (RuntimeError("anything else"), False, "error"),
])
def test_failure_reasons_come_from_the_exception(exc: BaseException, timed_out: bool,
                                                 reason: str) -> None:
    assert failure_reason(exc, timed_out) == reason
    assert reason in RECONNECT_REASONS


# -- a live daemon ----------------------------------------------------------------------------


def test_the_standard_process_and_build_series_are_there(rig: Rig) -> None:
    values = rig.values()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        assert one(values, name) > 0, name
    python = pick(values, "python_info")
    assert len(python) == 1 and dict(next(iter(python)))["version"] == platform.python_version()
    assert not [name for name, _ in values if name.startswith("framebus_process_")]
    build = pick(values, "framebus_build_info")
    assert list(build.values()) == [1.0]
    labels = dict(next(iter(build)))
    assert labels == {"version": framebus.__version__, "python": platform.python_version(),
                      "pyav": av.__version__, "ffmpeg": labels["ffmpeg"]}
    assert re.fullmatch(r"(n?\d+(\.\d+)+.*|lavf \d+\.\d+)", labels["ffmpeg"]), labels


def test_every_known_label_set_exists_at_zero(rig: Rig) -> None:
    values = rig.values()
    for camera in rig.daemon.config.cameras:
        reasons = pick(values, "framebus_camera_reconnects_total", camera=camera)
        assert {dict(key)["reason"] for key in reasons} == set(RECONNECT_REASONS), camera
    never_failed = pick(values, "framebus_camera_reconnects_total", camera="cam")
    assert set(never_failed.values()) == {0.0}, never_failed
    for subscriber in ("sub", "det"):
        drops = pick(values, "framebus_subscriber_frames_dropped_total", subscriber=subscriber)
        assert {dict(key)["reason"] for key in drops} >= set(DROP_REASONS), subscriber
    failures = pick(values, "framebus_subscriber_shm_failures_total", subscriber="det")
    assert {dict(key)["reason"]: value for key, value in failures.items()} == dict.fromkeys(
        SHM_FAILURE_REASONS, 0.0)
    durations = pick(values, "framebus_http_request_duration_seconds_count")
    routes = {dict(key)["route"] for key in durations}
    assert {"/v1/cameras/{name}/snapshot-to-fifo", "/v1/subscriptions/{name}", "other"} <= routes
    assert one(values, "framebus_http_request_duration_seconds_count",
               route="/v1/cameras/{name}/snapshot-to-fifo") == 0.0


def test_failing_cameras_say_why_and_have_no_frame_age(rig: Rig) -> None:
    expected = {"closed": "refused", "missing": "not_found", "garbage": "protocol",
                "silent": "timeout"}

    def failed() -> Values | None:
        values = rig.values()
        done = all(one(values, "framebus_camera_reconnects_total", camera=camera,
                       reason=reason) >= 1 for camera, reason in expected.items())
        return values if done else None
    values = wait_for(failed, 30, "every failing camera to fail once for its reason")
    assert values is not None
    for camera, reason in expected.items():
        counted = {dict(key)["reason"]: value for key, value in pick(
            values, "framebus_camera_reconnects_total", camera=camera).items() if value}
        assert set(counted) == {reason}, (camera, counted)  # never the generic "error"
        assert one(values, "framebus_camera_frame_age_seconds", camera=camera) == float("inf")
        assert one(values, "framebus_camera_state", camera=camera, state="streaming") == 0.0
        assert one(values, "framebus_camera_idle", camera=camera) == 0.0
        assert one(values, "framebus_camera_input_bytes_total", camera=camera) == 0.0
        assert one(values, "framebus_camera_declared_fps", camera=camera) == 0.0
    assert 0 <= one(values, "framebus_camera_frame_age_seconds", camera="cam") < 5


def test_input_figures_grow_and_the_declared_rate_is_read(rig: Rig) -> None:
    before = rig.values()
    first = one(before, "framebus_camera_input_bytes_total", camera="cam")
    packets = one(before, "framebus_camera_packets_total", camera="cam")
    assert first > 0 and packets > 0

    def more() -> Values | None:
        values = rig.values()
        return values if one(values, "framebus_camera_input_bytes_total",
                             camera="cam") > first else None
    grown = wait_for(more, 10, "more input bytes")
    assert grown is not None
    assert one(grown, "framebus_camera_packets_total", camera="cam") > packets
    assert one(grown, "framebus_camera_declared_fps", camera="cam") == 25.0
    stats = rig.daemon.cameras.cameras["cam"].stats
    assert stats.input_bytes >= one(grown, "framebus_camera_input_bytes_total", camera="cam")


def test_offered_is_sent_plus_dropped_plus_in_flight(rig: Rig) -> None:
    values = rig.values()
    offered = one(values, "framebus_subscriber_frames_offered_total", subscriber="sub")
    sent = one(values, "framebus_subscriber_frames_sent_total", subscriber="sub")
    dropped = sum(pick(values, "framebus_subscriber_frames_dropped_total",
                       subscriber="sub").values())
    assert sent > 0 and 0 <= offered - sent - dropped <= 2, (offered, sent, dropped)


def test_a_camera_nobody_subscribes_to_is_idle_until_someone_does(rig: Rig) -> None:
    def idle(camera: str, expected: float) -> bool:
        values = rig.values()
        streaming = one(values, "framebus_camera_state", camera=camera, state="streaming")
        return streaming == 1.0 and one(values, "framebus_camera_idle", camera=camera) == expected
    wait_for(lambda: idle("lonely", 1.0), 20, "camera lonely streaming, idle")
    assert idle("cam", 0.0)
    status, body = rig.api.json("POST", "/v1/subscriptions",
                                {"name": "company", "camera": "lonely", "format": "gray"})
    assert status == 201, body
    try:
        wait_for(lambda: idle("lonely", 0.0), 10, "camera lonely no longer idle")
    finally:
        assert rig.api.json("DELETE", "/v1/subscriptions/company")[0] == 200
    wait_for(lambda: idle("lonely", 1.0), 10, "camera lonely idle again")


def test_http_requests_are_counted_by_route_template(rig: Rig) -> None:
    before = rig.values()

    def count(values: Values, route: str, method: str, status: int) -> float:
        return sum(pick(values, "framebus_http_requests_total", route=route, method=method,
                        status=str(status)).values())
    api, anonymous = rig.api, ApiClient(rig.daemon, token="")
    asked = [
        (api, "GET", "/v1/cameras/cam", "/v1/cameras/{name}", 200),
        (api, "GET", "/v1/cameras/nope", "/v1/cameras/{name}", 404),
        (api, "GET", "/v1/cameras/cam/snapshot.jpg?width=64", "/v1/cameras/{name}/snapshot.{kind}",
         200),
        (api, "GET", "/no/such/path/12345", "other", 404),
        (api, "PUT", "/v1/cameras", "/v1/cameras", 405),
        (api, "BREW", "/v1/cameras", "/v1/cameras", 405),  # counted as method "other"
        (anonymous, "GET", "/v1/subscriptions", "/v1/subscriptions", 401),  # from the head
    ]
    for client, method, path, _, status in asked:
        assert client.request(method, path)[0] == status, (method, path)
    after = rig.values()
    for _, method, _, route, status in asked:
        label = method if method != "BREW" else "other"
        assert count(after, route, label, status) >= count(before, route, label, status) + 1, (
            method, route, status)
    assert one(after, "framebus_http_request_duration_seconds_count",
               route="/v1/cameras/{name}") >= one(
        before, "framebus_http_request_duration_seconds_count", route="/v1/cameras/{name}") + 2
    assert count(after, "/metrics", "GET", 200) >= 2  # the scrapes before this one
    assert rig.daemon.control is not None
    templates = {route.template for route in rig.daemon.control.api.routes} | {"other"}
    routes = {dict(key)["route"] for key in pick(after, "framebus_http_requests_total")}
    assert routes <= templates, routes - templates  # never a raw path
    assert {dict(key)["method"] for key in pick(after, "framebus_http_requests_total")} <= {
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}


@needs_promtool
def test_promtool_finds_nothing_to_complain_about(rig: Rig) -> None:
    lint = subprocess.run([str(PROMTOOL), "check", "metrics"], input=rig.scrape().encode(),
                          capture_output=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr)


# -- the dashboard and the alerts name only what the daemon exports ---------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (good enough for the ones we write)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\$\{?\w+\}?", "1", expr)  # Grafana variables ($__rate_interval, ${x})
    expr = re.sub(r"\{[^{}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if match[2] is None and match[1].lower() not in PROMQL_WORDS:
            names.add(match[1])
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))
    for panel in panels(dashboard["panels"]):
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            continue
        query = variable["query"]["query"]
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert inner is not None, query
        exprs.append(inner[1])
    return exprs


def test_metric_names_helper() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate('
                        'framebus_http_request_duration_seconds_bucket{instance=~"$instance"}'
                        '[$__rate_interval])))') == {
        "framebus_http_request_duration_seconds_bucket"}
    assert metric_names('a_total{x="by (b)"} / on (c) group_left d > bool 1e3') == {
        "a_total", "d"}


def test_the_dashboard_and_the_alerts_use_only_exported_metrics(rig: Rig) -> None:
    rig.api.request("GET", "/v1/cameras")  # so the request counter has a series
    exported = {name for name, _ in rig.values()}
    # HELP/TYPE lines name families whose samples may be absent right now (no conversion yet)
    families = {line.split()[2] for line in rig.scrape().splitlines()
                if line.startswith("# TYPE ")}
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert {"framebus_camera_declared_fps", "framebus_camera_frame_age_seconds",
            "framebus_camera_reconnects_total", "framebus_camera_input_bytes_total",
            "framebus_subscriber_latency_seconds_bucket", "framebus_http_requests_total",
            "framebus_subscriber_frames_dropped_total"} <= used
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])  # up: Prometheus' own, per scrape target
            assert names and names <= exported | families | {"up"}, (rule["alert"], names)

