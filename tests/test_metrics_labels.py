"""Metric label sets a Prometheus operator can rely on (issue 21), against a real daemon:

* ``framebus_conversions_total`` has a series per rendition some subscriber wants now, there at
  0 from its first subscriber and gone with its last one, so its series stay bounded however
  many sizes were ever subscribed;
* ``framebus_subscriber_payload_bytes_total`` counts the pixels delivered on shm too, where
  ``sent_bytes`` is the headers only;
* every ``camera`` label of a subscriber series names one camera, a multi-camera FIFO's own
  series (connected, disconnects, latency, info) included, so joins on camera work;
* the Grafana dashboard provisions (a data-source variable) and shows a multi-camera
  subscriber's lines per camera, filtered by ``$camera``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from apikit import ApiClient
from fanoutkit import ReaderProcess, running_daemon
from rtspserver import Mount, RtspServer
from test_metrics_standard import DASHBOARD, Values, closed_port, one, pick, values_of
from waiting import wait_for

from framebus.daemon import Daemon

GRAY_BYTES = 320 * 180  # a gray frame of the 320x180 mounts: the payload of each message


@dataclass
class Rig:
    daemon: Daemon
    api: ApiClient

    def values(self) -> Values:
        status, _, raw = ApiClient(self.daemon, token="").request("GET", "/metrics")
        assert status == 200
        return values_of(raw.decode())

    def values_when(self, condition: Callable[[Values], bool], timeout: float,
                    what: str) -> Values:
        """The first scrape whose values meet ``condition``."""
        def met() -> Values | None:
            values = self.values()
            return values if condition(values) else None
        found = wait_for(met, timeout, what)
        assert found is not None
        return found


def conversions(values: Values, camera: str) -> dict[tuple[str, str, str], float]:
    """(format, width, height) -> count of one camera's conversion series."""
    return {(labels["format"], labels["width"], labels["height"]): value
            for key, value in pick(values, "framebus_conversions_total", camera=camera).items()
            for labels in [dict(key)]}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Two streaming cameras and one that never connects; a FIFO subscriber of both cameras,
    an shm and a FIFO subscriber of one (each with a reader), one of the dark camera."""
    server = RtspServer([Mount("lobby", width=320, height=180),
                         Mount("yard", width=320, height=180)]).start()
    try:
        cameras = {"lobby": {"url": server.url("lobby"), "idle_decode": "all"},
                   "yard": {"url": server.url("yard"), "idle_decode": "all"},
                   "dark": {"url": f"rtsp://127.0.0.1:{closed_port()}/x",
                            "backoff": {"initial": "30s"}}}
        subscribers = {"pair": {"cameras": ["lobby", "yard"], "format": "gray"},
                       "det": {"camera": "lobby", "format": "gray", "transport": "shm"},
                       "plain": {"camera": "lobby", "format": "gray"},
                       "waiting": {"camera": "dark", "format": "bgr24", "width": 64}}
        with running_daemon(cameras, subscribers, tmp_path_factory.mktemp("fifos"),
                            http={"listen": "127.0.0.1:0"}) as daemon:
            fifos = daemon.config.fifo_dir
            readers = [ReaderProcess(fifos / f"{name}.fifo") for name in ("pair", "det", "plain")]
            try:
                for reader in readers:
                    reader.wait_frames(5)
                yield Rig(daemon, ApiClient(daemon))
            finally:
                for reader in readers:
                    reader.kill()
    finally:
        server.close()


def test_a_conversion_series_exists_at_zero_before_any_frame(rig: Rig) -> None:
    assert conversions(rig.values(), "dark") == {("bgr24", "64", ""): 0.0}


def test_conversion_series_go_with_the_last_subscriber_of_their_rendition(rig: Rig) -> None:
    before = conversions(rig.values(), "lobby")
    assert set(before) == {("gray", "", "")}  # pair, det and plain share one rendition
    widths = [96 + 16 * i for i in range(6)]
    for width in widths:
        status, body = rig.api.json("POST", "/v1/subscriptions", {
            "name": f"w{width}", "camera": "lobby", "format": "bgr24", "width": width})
        assert status == 201, body
    status, body = rig.api.json("POST", "/v1/subscriptions",
                                {"name": "twin", "camera": "lobby", "format": "gray"})
    assert status == 201, body
    subscribed = conversions(rig.values(), "lobby")
    assert set(subscribed) == {("gray", "", ""), *(("bgr24", str(w), "") for w in widths)}
    for width in widths:
        assert rig.api.json("DELETE", f"/v1/subscriptions/w{width}")[0] == 200
    assert rig.api.json("DELETE", "/v1/subscriptions/twin")[0] == 200

    after = conversions(rig.values_when(lambda v: set(conversions(v, "lobby")) == {
        ("gray", "", "")}, 10, "the removed renditions' series to go"), "lobby")
    # the rendition others still want kept its count through "twin" leaving
    assert after[("gray", "", "")] >= subscribed[("gray", "", "")] > 0
    assert set(rig.daemon.store.conversions) == {
        (camera, sub.spec.rendition) for sub in rig.daemon.fanout.subscribers.values()
        for camera in sub.spec.all_cameras}


def test_a_rendition_wanted_again_resumes_its_count(rig: Rig) -> None:
    # a counter that went back would be a reset to Prometheus (and fails the soak's check)
    spec = {"name": "again", "camera": "lobby", "format": "bgr24", "width": 80}
    key = ("bgr24", "80", "")
    assert rig.api.json("POST", "/v1/subscriptions", spec)[0] == 201
    counted = conversions(rig.values_when(lambda v: conversions(v, "lobby").get(key, 0) > 0,
                                          10, "frames converted to 80 wide"), "lobby")[key]
    assert rig.api.json("DELETE", "/v1/subscriptions/again")[0] == 200
    rig.values_when(lambda v: key not in conversions(v, "lobby"), 10, "the series to go")
    assert rig.api.json("POST", "/v1/subscriptions", spec)[0] == 201
    try:
        assert conversions(rig.values(), "lobby")[key] >= counted
    finally:
        assert rig.api.json("DELETE", "/v1/subscriptions/again")[0] == 200


def test_shm_payload_bytes_count_the_pixels_and_sent_bytes_the_headers(rig: Rig) -> None:
    def sent(values: Values, subscriber: str) -> float:
        return one(values, "framebus_subscriber_frames_sent_total", subscriber=subscriber)
    values = rig.values_when(lambda v: sent(v, "det") >= 20 and sent(v, "plain") >= 20, 30,
                             "20 frames to det and plain")
    later = rig.values()
    # a scrape reads sent, then payload_bytes; a frame counts in sent, then in payload_bytes:
    # so the payload lies between that of the frames sent one scrape and the next
    for subscriber in ("det", "plain"):
        payload = one(values, "framebus_subscriber_payload_bytes_total", subscriber=subscriber)
        assert (sent(values, subscriber) - 1) * GRAY_BYTES <= payload <= sent(
            later, subscriber) * GRAY_BYTES, subscriber
    det_written = one(values, "framebus_subscriber_sent_bytes_total", subscriber="det")
    assert 0 < det_written < sent(values, "det") * 1024  # headers only: the pixels are in shm
    assert one(later, "framebus_subscriber_sent_bytes_total", subscriber="plain") >= one(
        values, "framebus_subscriber_payload_bytes_total", subscriber="plain")  # and headers


def test_a_multi_camera_subscriber_labels_each_series_with_one_camera(rig: Rig) -> None:
    def both_read(values: Values) -> bool:
        return all(one(values, "framebus_subscriber_latency_seconds_count", subscriber="pair",
                       camera=camera) >= 5 for camera in ("lobby", "yard"))
    values = rig.values_when(both_read, 30, "frames of both cameras through pair")
    later = rig.values()
    cameras = {dict(key)["camera"] for key in pick(values, "framebus_camera_state")}
    families = {name for name, _ in values if name.startswith("framebus_subscriber_")}
    assert {"framebus_subscriber_connected", "framebus_subscriber_disconnects_total",
            "framebus_subscriber_info", "framebus_subscriber_latency_seconds_bucket",
            "framebus_subscriber_payload_bytes_total"} <= families
    for name in families:
        labelled = {dict(key)["camera"] for key in pick(values, name)}
        assert labelled <= cameras, (name, labelled - cameras)  # never "lobby,yard"
        if "_shm_" not in name:  # pair is a FIFO subscriber: no shm series
            assert {dict(key)["camera"] for key in pick(values, name, subscriber="pair")} == {
                "lobby", "yard"}, name
    for camera in ("lobby", "yard"):
        key = {"subscriber": "pair", "camera": camera}
        assert one(values, "framebus_subscriber_connected", **key) == 1.0
        assert one(values, "framebus_subscriber_info", **key, transport="fifo") == 1.0
        # the camera's own latency: one observation per frame of it fully written (counted
        # just after sent, and read after it: between this scrape's sent and the next's)
        count = one(values, "framebus_subscriber_latency_seconds_count", **key)
        frames = one(values, "framebus_subscriber_frames_sent_total", **key)
        assert frames - 1 <= count <= one(later, "framebus_subscriber_frames_sent_total", **key)
    single = pick(values, "framebus_subscriber_latency_seconds_count", subscriber="plain")
    assert [dict(key)["camera"] for key in single] == ["lobby"]


def test_the_dashboard_provisions_and_shows_subscribers_per_camera() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    # provisioning has no import step to fill ${DS_PROMETHEUS}: a data-source variable does
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}", variable["name"]
    assert 'camera=~"$camera"' in variables["subscriber"]["query"]["query"]
    subscriber_targets = [target for panel in dashboard["panels"]
                          for target in panel.get("targets", [])
                          if "framebus_subscriber_" in target["expr"]]
    assert len(subscriber_targets) >= 6
    for target in subscriber_targets:
        assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
        selectors = re.findall(r"framebus_subscriber_\w+(\{[^}]*\})", target["expr"])
        assert selectors and all('camera=~"$camera"' in s for s in selectors), target["expr"]
        # a multi-camera subscriber has a line per camera: each needs its own legend
        assert "{{camera}}" in target["legendFormat"], target
        for grouping in re.findall(r"by \(([^)]*)\)", target["expr"]):
            assert "camera" in grouping, target["expr"]
