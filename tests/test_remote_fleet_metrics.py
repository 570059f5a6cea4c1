"""``framebus status --fleet`` from fake liveliness and status replies (gather, render, exit
status) and the bridge's ``framebus_remote_*`` metrics from a fake bridge, read back through
prometheus_client's parser (and promtool where installed). Pure: no zenoh session."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from framebus.errors import FramebusError
from framebus.remote.export import ExportStats
from framebus.remote.fleet import MAX_STATUS_BYTES, fleet_status, gather, render
from framebus.remote.metrics import DROP_REASONS, QUERY_OUTCOMES, RemoteCollector

# -- fleet -----------------------------------------------------------------------------------


@dataclass
class Payload:
    data: bytes

    def to_bytes(self) -> bytes:
        return self.data


@dataclass
class Sample:
    key_expr: str
    payload: Payload


@dataclass
class Reply:
    ok: Sample | None
    err: Any = None


def ok(key: str, data: bytes = b"") -> Reply:
    return Reply(Sample(key, Payload(data)))


@dataclass
class FakeSession:
    """What gather asks a zenoh session: liveliness tokens, then every host's _status."""

    tokens: list[Reply]
    statuses: list[Reply]
    asked: list[str] = field(default_factory=list)

    def liveliness(self) -> FakeSession:
        return self

    def get(self, key: str, timeout: float) -> list[Reply]:
        assert timeout > 0
        self.asked.append(key)
        return self.tokens if key == "framebus/**" else self.statuses


def camera(name: str, state: str = "streaming", reason: str | None = None) -> dict[str, Any]:
    streaming = state == "streaming"
    return {"name": name, "state": state, "reason": reason, "fps": 25.04 if streaming else None,
            "width": 1280 if streaming else None, "height": 720 if streaming else None,
            "frame_age_s": 0.012 if streaming else None}


def status(*cameras: dict[str, Any], exports: list[dict[str, Any]] | None = None) -> bytes:
    return json.dumps({"daemon": "ok", "error": None, "cameras": list(cameras),
                       "exports": exports or [], "unrelated": 1}).encode()


LOBBY = [{"camera": "lobby", "rendition": "nv12-1280x720", "matching": True},
         {"camera": "lobby", "rendition": "preview", "matching": False}]


def test_gather_joins_tokens_and_status_replies() -> None:
    session = FakeSession(
        tokens=[ok("framebus/cam1"), ok("framebus/cam1/lobby/nv12-1280x720"),
                ok("framebus/cam1/lobby"), ok("framebus/quiet"), ok("framebus/big"),
                ok("framebus/bad"), ok("framebus/list"), Reply(None, "an error")],
        statuses=[ok("framebus/cam1/_status", status(camera("lobby"), exports=LOBBY)),
                  ok("framebus/bad/_status", b"{not json"),
                  ok("framebus/big/_status", b" " * (MAX_STATUS_BYTES + 1)),
                  ok("framebus/list/_status", b"[1, 2]"),
                  ok("framebus/late/_status", status()), Reply(None, "refused")])
    data = gather(session, timeout=5)
    assert session.asked == ["framebus/**", "framebus/**", "framebus/*/_status"]  # agreed
    hosts = {host["host"]: host for host in data["hosts"]}
    assert [host["host"] for host in data["hosts"]] == sorted(hosts)
    assert hosts["cam1"] == {"host": "cam1", "daemon": "ok", "error": None,
                             "cameras": [camera("lobby")], "exports": LOBBY,
                             "alive_exports": ["framebus/cam1/lobby/nv12-1280x720"]}
    assert hosts["quiet"] == {"host": "quiet", "daemon": "no answer", "cameras": [],
                              "exports": [], "alive_exports": []}
    assert hosts["bad"]["error"] == "status reply is not JSON"
    assert hosts["big"]["error"] == "status reply too large"
    assert hosts["bad"]["daemon"] == hosts["big"]["daemon"] == hosts["list"]["daemon"] == (
        "no answer")
    assert hosts["late"]["daemon"] == "ok"  # a status reply names a host without its token


@dataclass
class JoiningSession(FakeSession):
    """A session just opened: each liveliness answer holds what had arrived by then."""

    answers: list[list[Reply]] = field(default_factory=list)

    def get(self, key: str, timeout: float) -> list[Reply]:
        if key == "framebus/**" and self.answers:
            self.tokens = self.answers.pop(0)
        return super().get(key, timeout)


def test_gather_asks_until_two_token_answers_agree() -> None:
    cam1, gpu1 = [ok("framebus/cam1")], [ok("framebus/cam1"), ok("framebus/gpu1")]
    session = JoiningSession(tokens=[], statuses=[], answers=[[], cam1, gpu1, gpu1])
    data = gather(session, timeout=5)
    assert [host["host"] for host in data["hosts"]] == ["cam1", "gpu1"]
    assert session.asked == ["framebus/**"] * 4 + ["framebus/*/_status"]
    lonely = JoiningSession(tokens=[], statuses=[])  # nobody: gives up after half the timeout
    began = time.monotonic()
    assert gather(lonely, timeout=0.6) == {"hosts": []}
    assert 0.3 <= time.monotonic() - began < 1.5


FLEET = {"hosts": [
    {"host": "cam1", "daemon": "ok", "exports": LOBBY,
     "cameras": [camera("lobby"), camera("yard", "reconnecting", "connection refused")]},
    {"host": "cam2", "daemon": "unreachable", "error": "connect: /run/framebus/api.sock " * 9,
     "cameras": [], "exports": []},
]}


def test_render_one_row_per_host_and_camera() -> None:
    out = io.StringIO()
    render(FLEET, out)
    reason = ("connect: /run/framebus/api.sock " * 9)[:80].rstrip()
    assert out.getvalue().splitlines() == [
        "HOST  CAMERA  STATE               FPS   SIZE      AGE   EXPORTS                 REASON",
        "cam1  lobby   streaming           25.0  1280x720  0.0s  nv12-1280x720*,preview",
        "cam1  yard    reconnecting        0.0   -         -     -                       "
        "connection refused",
        "cam2  -       daemon unreachable  -     -         -     -                       " + reason,
    ]


def test_fleet_status_exit_codes() -> None:
    healthy = FakeSession([ok("framebus/cam1")],
                          [ok("framebus/cam1/_status", status(camera("lobby"), exports=LOBBY))])
    out = io.StringIO()
    assert fleet_status(healthy, 5, False, out) == 0
    assert "nv12-1280x720*" in out.getvalue()
    out = io.StringIO()
    assert fleet_status(healthy, 5, True, out) == 0
    assert json.loads(out.getvalue())["hosts"][0]["cameras"] == [camera("lobby")]
    down = FakeSession([ok("framebus/cam1")],
                       [ok("framebus/cam1/_status", status(camera("lobby"), camera("b", "down")))])
    assert fleet_status(down, 5, False, io.StringIO()) == 3
    silent = FakeSession([ok("framebus/cam1")], [])
    assert fleet_status(silent, 5, False, io.StringIO()) == 3
    with pytest.raises(FramebusError, match=r"no framebus host answered within 0\.2s"):
        fleet_status(FakeSession([], []), 0.2, False, io.StringIO())


# -- the bridge's metrics --------------------------------------------------------------------


@dataclass
class FakeExport:
    camera: str
    rendition: str
    matching: bool
    stats: ExportStats


@dataclass
class FakeBridge:
    exports: dict[str, FakeExport]


def scrape(bridge: FakeBridge) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    registry = CollectorRegistry()
    registry.register(RemoteCollector(cast(Any, bridge)))
    text = generate_latest(registry).decode()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    return text, values


def test_remote_collector_reports_every_series_of_every_export() -> None:
    lobby = ExportStats(puts=10, bytes=13_824_000, put_seconds=0.25, subscriptions=2)
    lobby.dropped.update({"upstream": 3, "max_fps": 40})
    lobby.queries.update({"cached": 5, "busy": 1, "no_frame": 2, "Bad Word!": 1})
    yard = ExportStats()
    bridge = FakeBridge({"a": FakeExport("lobby", "nv12-1280x720", True, lobby),
                         "b": FakeExport("yard", "preview", False, yard)})
    text, values = scrape(bridge)
    assert values[("framebus_remote_up", ())] == 1
    assert values[("framebus_remote_exports", ())] == 2
    a = (("camera", "lobby"), ("rendition", "nv12-1280x720"))
    b = (("camera", "yard"), ("rendition", "preview"))
    assert values[("framebus_remote_matching", a)] == 1
    assert values[("framebus_remote_matching", b)] == 0
    assert values[("framebus_remote_puts_total", a)] == 10
    assert values[("framebus_remote_bytes_total", a)] == 13_824_000
    assert values[("framebus_remote_put_blocked_seconds_total", a)] == 0.25
    for labels, stats in ((a, lobby), (b, yard)):
        for reason in DROP_REASONS:  # every reason from the first scrape, zeros included
            key = ("framebus_remote_dropped_total", tuple(sorted((*labels, ("reason", reason)))))
            assert values[key] == stats.dropped[reason]
        for outcome in QUERY_OUTCOMES:
            key = ("framebus_remote_queries_total",
                   tuple(sorted((*labels, ("outcome", outcome)))))
            assert values[key] == stats.queries[outcome]
    assert values[("framebus_remote_dropped_total", tuple(sorted((*a, ("reason", "max_fps")))))
                  ] == 40
    # the daemon's refusals are outcomes too; anything not a plain word never becomes a label
    assert values[("framebus_remote_queries_total", tuple(sorted((*a, ("outcome", "no_frame")))))
                  ] == 2
    assert "Bad Word" not in text
    assert len(values) == 2 + 2 * (4 + len(DROP_REASONS) + len(QUERY_OUTCOMES)) + 1
    lobby.puts += 1  # read at scrape time, not copied once
    assert scrape(bridge)[1][("framebus_remote_puts_total", a)] == 11
    promtool = shutil.which("promtool")
    if promtool is not None:  # Prometheus' own linter, where installed
        checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                                 capture_output=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_bridge_without_exports_is_still_up() -> None:
    _, values = scrape(FakeBridge({}))
    assert values == {("framebus_remote_up", ()): 1, ("framebus_remote_exports", ()): 0}
