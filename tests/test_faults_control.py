"""The fault matrix, control-plane faults: twenty SIGHUP reloads in two seconds (on the shared
rig, ``tests/matrixkit.py``), and a camera whose password file turns wrong and is fixed again
(on a rig of its own). The measurements are recorded for docs/RELIABILITY.md
(``tests/reliability.py`` renders it). Both are marked ``soak`` (``make soak``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultkit import STREAMING, Rig, camera_config, recovery_time, rig, scenario, seconds_since
from faultproxy import FaultProxy
from matrixkit import FRAME_INTERVAL_S, H, W, assert_daemon_healthy
from reliability import record
from rtspserver import Mount, RtspServer
from waiting import wait_for


def reached(moment: float) -> Callable[[], bool]:
    """A condition: the monotonic clock has reached ``moment``."""
    return lambda: time.monotonic() >= moment


@pytest.mark.soak
def test_twenty_sighup_reloads_in_two_seconds(matrix: Rig) -> None:
    base = dict(matrix.cameras)
    keep: dict[str, Any] = {"keep": {"camera": "victim", "format": "gray"}}
    extra = camera_config(matrix.servers["a"].url("victim"))
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (base, keep),  # unchanged
        ({**base, "extra": extra}, {**keep, "flip": {"camera": "healthy", "format": "gray"}}),
        (base, {**keep, "flip": {"camera": "healthy", "format": "gray", "width": 160}}),
        ({**base, "extra": {**extra, "stall_timeout": "3s"}}, keep),
    ]
    final_cameras, final_subscribers = variants[19 % len(variants)]
    matrix.write_config(base, keep)
    matrix.daemon.reload()
    try:
        with scenario(matrix, "sighup") as sc:
            kept = sc.reader(matrix.fifo_dir / "keep.fifo")
            kept.wait_frames(5)
            threads, fds = matrix.daemon.threads(), matrix.daemon.fds()
            reloads_before = matrix.daemon.count("reloaded ")
            sc.begin()
            start = time.monotonic()
            for index in range(20):
                cameras, subscribers = variants[index % len(variants)]
                matrix.write_config(cameras, subscribers)
                os.kill(matrix.daemon.pid, signal.SIGHUP)
                # pace the storm: the next signal 0.1 s after this one (a deliberate rate)
                wait_for(reached(start + 0.1 * (index + 1)), 2, "the next SIGHUP slot")
            last = time.monotonic_ns()

            def settled() -> bool:
                cams = {c["name"] for c in matrix.api.json("GET", "/v1/cameras")[1]["cameras"]}
                subs = {s["name"] for s in matrix.api.json("GET", "/v1/subscriptions")[1][
                    "subscriptions"]}
                return cams == set(final_cameras) and subs >= set(final_subscribers) and all(
                    matrix.state(c) == STREAMING for c in final_cameras)
            wait_for(settled, 30, "the final configuration to be running")
            recovery = seconds_since(last)
            reloads = matrix.daemon.count("reloaded ") - reloads_before
            kept.wait_more(10)
            delivered = sc.end()
            kept_status = matrix.subscription("keep")
            # back to where the storm started: no thread or descriptor may be left over
            matrix.write_config(base, keep)
            matrix.daemon.reload()
            wait_for(lambda: matrix.daemon.threads() <= threads, 20, "threads back to before")
            wait_for(lambda: matrix.daemon.fds() <= fds, 20, "descriptors back to before")
            torn = sc.stop_readers()
    finally:
        matrix.write_config(base, {})
        matrix.daemon.reload()
    record("sighup_storm", detection_s=None, recovery_s=recovery, unaffected=delivered,
           torn=torn, **sc.details(), reloads_applied=reloads,
           notes=f"20 SIGHUPs in 2 s: {reloads} reloads applied (signals that arrive during "
                 "a reload coalesce); the unchanged subscriber never disconnected; threads "
                 "and descriptors back to their count before the storm")
    assert torn == 0
    assert delivered >= 0.95
    assert kept_status["disconnects"] == 0  # an unchanged subscriber is left alone
    assert 1 <= reloads <= 20
    assert_daemon_healthy(matrix)


# -- authentication --------------------------------------------------------------------------------

PASSWORD = "right-Pa55:w0rd"
WRONG = "wrong-Pa55:w0rd"


@pytest.mark.soak
def test_authentication_failure_and_fix(tmp_path: Path) -> None:
    mounts = {"a": [Mount("locked", user="viewer", password=PASSWORD, width=W, height=H)],
              "b": [Mount("healthy", width=W, height=H)]}
    secret = tmp_path / "secret.txt"

    def cameras(servers: dict[str, RtspServer], _: FaultProxy | None) -> dict[str, Any]:
        return {"healthy": camera_config(servers["b"].url("healthy")),
                "locked": camera_config(servers["a"].url("locked"), username="viewer",
                                        password_file=str(secret))}
    with rig(tmp_path, mounts, cameras, files={"secret.txt": PASSWORD}) as the_rig, \
            scenario(the_rig, "auth") as sc:
        _, path = sc.subscribe("locked", format="gray")
        victim = sc.reader(path)
        victim.wait_frames(5)
        sc.begin()
        secret.write_text(WRONG)
        hup = time.monotonic()
        the_rig.daemon.reload()
        wait_for(lambda: the_rig.state("locked") == "auth_failed", 20, "auth_failed")
        detection = time.monotonic() - hup  # from the SIGHUP (the camera restarts at reload)
        failures = the_rig.camera("locked")["reconnects"].get("auth_failed", 0)
        # stay refused for 3 s of healthy frames: retries must be paced by backoff.auth_failure
        healthy = sc.watched[0].reader
        until = healthy.last_seq() + round(3.0 / FRAME_INTERVAL_S)
        wait_for(lambda: healthy.last_seq() >= until, 30, "3 s of healthy frames")
        retries = the_rig.camera("locked")["reconnects"].get("auth_failed", 0) - failures
        secret.write_text(PASSWORD)
        healed = time.monotonic_ns()
        the_rig.daemon.reload()
        recovery = recovery_time(victim, healed)
        delivered = sc.end()
        torn = sc.stop_readers()
        logged = the_rig.daemon.count("auth_failed")
    record("auth_failure", detection_s=detection, recovery_s=recovery, unaffected=delivered,
           torn=torn, **sc.details(), retries_in_3s=retries,
           notes=f"{retries} retries in 3 s with backoff.auth_failure 1 s; the transition "
                 f"logged {logged} time(s)")
    assert torn == 0
    assert delivered >= 0.95
    assert retries <= 4
    assert logged == 1
    lines = "\n".join(the_rig.daemon.lines)
    assert PASSWORD not in lines and WRONG not in lines
