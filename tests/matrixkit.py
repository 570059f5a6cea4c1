"""The fault matrix's shared rig and helpers, for the ``tests/test_faults_*.py`` modules.

Each fault test injects one fault at a time into a running daemon (a subprocess), measures
detection and recovery, checks that a healthy camera and subscriber alongside lose nothing, and
that no reader ever gets a torn frame. Each measurement is recorded for docs/RELIABILITY.md
(``tests/reliability.py`` renders it).

The rig (module scope: one per test module): RTSP server ``a`` serves the victim cameras
(``victim`` directly, ``proxied`` through the fault proxy, ``sized`` for the size change), RTSP
server ``b`` serves ``healthy`` alone, so killing or pausing ``a`` cannot touch it.
Subscriptions are made per test over the HTTP API and removed afterwards. The fixtures
``matrix_rig`` and ``matrix`` are re-exported by ``conftest.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultkit import STREAMING, CheckedReader, Rig, camera_config, rig
from faultproxy import FaultProxy
from rtspserver import Mount, RtspServer
from waiting import wait_for

W, H = 320, 240  # the test clips' size (small: everything fits 2 cores)
SIZES = ((320, 240), (480, 360))
FRAME_INTERVAL_S = 0.04  # the test clips run at 25 fps


def matrix_cameras(servers: dict[str, RtspServer],
                   proxy: FaultProxy | None) -> dict[str, dict[str, Any]]:
    assert proxy is not None
    return {"healthy": camera_config(servers["b"].url("healthy")),
            "victim": camera_config(servers["a"].url("victim")),
            "proxied": camera_config(proxy.url("proxied"))}


@pytest.fixture(scope="module")
def matrix_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    mounts = {"a": [Mount("victim", width=W, height=H), Mount("proxied", width=W, height=H),
                    Mount("sized", size_change=SIZES, seconds=1.0)],
              "b": [Mount("healthy", width=W, height=H)]}
    with rig(tmp_path_factory.mktemp("matrix"), mounts, matrix_cameras,
             proxy_to=("a", "proxied")) as the_rig:
        yield the_rig


@pytest.fixture
def matrix(matrix_rig: Rig) -> Rig:
    """The shared rig, healed from whatever the previous test did."""
    assert matrix_rig.daemon.alive, matrix_rig.daemon.lines[-20:]
    server = matrix_rig.servers["a"]
    if not server.running:
        server.restart()
    else:
        server.resume()  # harmless when it is not paused
    assert matrix_rig.proxy is not None
    matrix_rig.proxy.forward()
    matrix_rig.wait_streaming()
    return matrix_rig


def assert_daemon_healthy(the_rig: Rig) -> None:
    """Alive, no traceback in its log, every configured camera streaming."""
    assert the_rig.daemon.alive, the_rig.daemon.lines[-20:]
    assert not the_rig.daemon.logged("Traceback"), the_rig.daemon.lines[-40:]
    the_rig.wait_streaming()


def stable_recovery(the_rig: Rig, camera: str, reader: CheckedReader, healed_ns: int,
                    settle_s: float = 2.0, timeout: float = 30) -> float:
    """Seconds from ``healed_ns`` until the reader got the first frame of the camera's final,
    stable session (streaming with no reconnect for ``settle_s``). If that session began
    before ``healed_ns`` (it survived the fault), until the first frame published after it."""
    def session() -> tuple[str, int, int]:
        status = the_rig.camera(camera)
        return status["state"], sum(status["reconnects"].values()), status["epoch"]
    since, last = time.monotonic(), session()

    def stable() -> int | None:
        nonlocal since, last
        now = session()
        if now != last or now[0] != STREAMING:
            since, last = time.monotonic(), now
            return None
        return now[2] if time.monotonic() - since >= settle_s else None
    epoch = wait_for(stable, timeout, f"{camera} to stream steadily again")
    wait_for(lambda: any(f["epoch"] == epoch and f["pub"] >= healed_ns
                         for f in list(reader.frames)), timeout, f"a frame of epoch {epoch}")
    first = min((f for f in list(reader.frames) if f["epoch"] == epoch),
                key=lambda f: int(f["t"]))
    if first["t"] < healed_ns:
        first = next(f for f in list(reader.frames) if f["pub"] >= healed_ns)
    return (int(first["t"]) - healed_ns) / 1e9
