"""The fault matrix, camera faults: the RTSP server killed and restarted, paused, the network
blackholed and the stream corrupted (through the fault proxy), the camera changing its size
mid-stream. Each test injects one fault into a running daemon (a subprocess), measures
detection and recovery, checks that a healthy camera and subscriber alongside lose nothing and
that no reader ever gets a torn frame, and records the measurement for docs/RELIABILITY.md
(``tests/reliability.py`` renders it). The rig is described in ``tests/matrixkit.py``.

The bounded subset (no ``soak`` mark) runs in ``make test``; the long versions and the size
change are marked ``soak`` (``make soak``).
"""

from __future__ import annotations

import itertools
import statistics
import time

import pytest
from faultkit import STREAMING, Rig, camera_config, recovery_time, scenario, seconds_since
from matrixkit import FRAME_INTERVAL_S, SIZES, assert_daemon_healthy, stable_recovery
from reliability import record
from waiting import timed, wait_for


def server_killed(the_rig: Rig, rounds: int, fault: str) -> None:
    server = the_rig.servers["a"]
    with scenario(the_rig, "kill") as sc:
        _, path = sc.subscribe("victim", format="gray")
        victim = sc.reader(path)
        victim.wait_frames(5)
        detections, recoveries = [], []
        sc.begin()
        for _ in range(rounds):
            epoch = the_rig.camera("victim")["epoch"]
            server.kill()
            detections.append(timed(lambda: the_rig.state("victim") != STREAMING, 10,
                                    "the victim camera to leave streaming"))
            server.restart()
            healed = time.monotonic_ns()
            recoveries.append(recovery_time(victim, healed))
            assert the_rig.camera("victim")["epoch"] > epoch  # consumers see a new epoch
        delivered = sc.end()
        subscription = the_rig.subscription(sc.names[-1])
        torn = sc.stop_readers()
    record(fault, detection_s=max(detections), recovery_s=max(recoveries),
           unaffected=delivered, torn=torn, **sc.details(), rounds=rounds,
           detections=detections, recoveries=recoveries)
    assert torn == 0
    assert delivered >= 0.95
    assert subscription["disconnects"] == 0  # the subscriber stayed connected throughout
    assert_daemon_healthy(the_rig)


def test_rtsp_server_killed_and_restarted(matrix: Rig) -> None:
    server_killed(matrix, 1, "server_killed")


@pytest.mark.soak
def test_rtsp_server_killed_and_restarted_10_times(matrix: Rig) -> None:
    server_killed(matrix, 10, "server_killed_x10")


def test_rtsp_server_paused_and_resumed(matrix: Rig) -> None:
    server = matrix.servers["a"]
    stall = matrix.cameras["victim"]["stall_timeout"]
    with scenario(matrix, "pause") as sc:
        _, path = sc.subscribe("victim", format="gray")
        victim = sc.reader(path)
        victim.wait_frames(5)
        sc.begin()
        server.pause()
        try:
            detection = timed(lambda: matrix.state("victim") != STREAMING, 10,
                              "the stall watchdog")
            reason = matrix.camera("victim")["reason"]
        finally:
            server.resume()
        healed = time.monotonic_ns()
        recovery = recovery_time(victim, healed)
        delivered = sc.end()
        torn = sc.stop_readers()
    record("server_paused", detection_s=detection, recovery_s=recovery, unaffected=delivered,
           torn=torn, **sc.details(), reason=reason)
    assert torn == 0
    assert delivered >= 0.95
    assert detection >= float(stall.rstrip("s")) * 0.9  # it was the watchdog, not an error
    assert_daemon_healthy(matrix)


def blackhole(the_rig: Rig, outage_s: float, fault: str) -> None:
    proxy = the_rig.proxy
    assert proxy is not None
    with scenario(the_rig, "blackhole") as sc:
        _, path = sc.subscribe("proxied", format="gray")
        victim = sc.reader(path)
        victim.wait_frames(5)
        start = sc.begin()
        healthy = sc.watched[0]
        proxy.blackhole()
        try:
            detection = timed(lambda: the_rig.state("proxied") != STREAMING, 10,
                              "the proxied camera to leave streaming")
            # the outage lasts until this many frames of the healthy camera went by
            until = the_rig.last_seq("healthy") + round(
                (outage_s - seconds_since(start)) / FRAME_INTERVAL_S)
            wait_for(lambda: healthy.reader.last_seq() >= until, outage_s + 30,
                     f"{outage_s:g}s of healthy frames during the blackhole")
            attempts = the_rig.camera("proxied")["reconnects"]
        finally:
            proxy.forward()
        healed = time.monotonic_ns()
        recovery = recovery_time(victim, healed)
        delivered = sc.end()
        torn = sc.stop_readers()
    record(fault, detection_s=detection, recovery_s=recovery, unaffected=delivered, torn=torn,
           outage_s=outage_s, reconnects=attempts, **sc.details())
    assert torn == 0
    assert delivered >= 0.95
    assert_daemon_healthy(the_rig)


def test_network_blackhole(matrix: Rig) -> None:
    blackhole(matrix, 3.0, "network_blackhole")


@pytest.mark.soak
def test_network_blackhole_long(matrix: Rig) -> None:
    blackhole(matrix, 20.0, "network_blackhole_long")


def corrupted(the_rig: Rig, seconds: float, every_bytes: int, fault: str) -> None:
    proxy = the_rig.proxy
    assert proxy is not None
    with scenario(the_rig, "corrupt") as sc:
        _, path = sc.subscribe("proxied", format="gray")
        victim = sc.reader(path)
        victim.wait_frames(5)
        before = the_rig.camera("proxied")
        start = sc.begin()
        healthy = sc.watched[0]

        def noticed() -> bool:
            now = the_rig.camera("proxied")
            return bool(now["state"] != STREAMING
                        or now["decode_errors"] > before["decode_errors"]
                        or now["reconnects"] != before["reconnects"])
        detection: float | None = None
        proxy.corrupt(after_bytes=16 * 1024, every_bytes=every_bytes)
        try:
            until = the_rig.last_seq("healthy") + round(seconds / FRAME_INTERVAL_S)

            def corruption_over() -> bool:
                nonlocal detection
                if detection is None and noticed():
                    detection = seconds_since(start)
                return healthy.reader.last_seq() >= until
            wait_for(corruption_over, seconds + 30, f"{seconds:g}s of corrupted stream")
        finally:
            proxy.forward()
        healed = time.monotonic_ns()
        corrupted_bytes = proxy.stats.corrupted_bytes
        recovery = stable_recovery(the_rig, "proxied", victim, healed)
        after = the_rig.camera("proxied")
        delivered = sc.end()
        torn = sc.stop_readers()
    errors = after["decode_errors"] - before["decode_errors"]
    reconnects = sum(after["reconnects"].values()) - sum(before["reconnects"].values())
    record(fault, detection_s=detection, recovery_s=recovery, unaffected=delivered, torn=torn,
           **sc.details(), seconds=seconds, every_bytes=every_bytes,
           corrupted_bytes=corrupted_bytes, decode_errors=errors, reconnects=reconnects,
           notes=f"1 byte in {every_bytes} flipped for {seconds:g} s: {corrupted_bytes} bytes, "
                 f"{errors} decode errors, {reconnects} reconnects")
    assert corrupted_bytes > 0
    assert torn == 0  # damaged pictures maybe, damaged messages never
    assert delivered >= 0.95
    assert_daemon_healthy(the_rig)


def test_corrupted_stream(matrix: Rig) -> None:
    corrupted(matrix, 3.0, 256, "stream_corrupted")


@pytest.mark.soak
def test_corrupted_stream_long(matrix: Rig) -> None:
    corrupted(matrix, 20.0, 64, "stream_corrupted_long")


@pytest.mark.soak
def test_camera_changes_size_mid_stream(matrix: Rig) -> None:
    base = dict(matrix.cameras)
    matrix.write_config({**base, "sized": camera_config(matrix.servers["a"].url("sized"))})
    matrix.daemon.reload()
    try:
        matrix.wait_streaming("sized")
        with scenario(matrix, "size") as sc:
            _, path = sc.subscribe("sized", format="gray")  # native size: it changes
            _, scaled_path = sc.subscribe("sized", format="gray", width=160, height=120)
            reader, scaled = sc.reader(path), sc.reader(scaled_path)
            sc.begin()

            def switches() -> int:
                sizes = [(f["w"], f["h"]) for f in list(reader.frames)]
                return sum(a != b for a, b in itertools.pairwise(sizes))
            wait_for(lambda: switches() >= 6, 30, "six size changes at the reader")
            delivered = sc.end()
            torn = sc.stop_readers()
        frames = reader.frames
        gaps = [(b["t"] - a["t"]) / 1e9 for a, b in itertools.pairwise(frames)
                if (a["w"], a["h"]) != (b["w"], b["h"])]
        epochs: dict[int, set[tuple[int, int]]] = {}
        for f in frames:
            epochs.setdefault(f["epoch"], set()).add((f["w"], f["h"]))
    finally:
        matrix.write_config(base)
        matrix.daemon.reload()
    record("size_change", detection_s=None, recovery_s=max(gaps), unaffected=delivered,
           torn=torn, **sc.details(), switches=len(gaps), gaps=gaps,
           notes=f"largest gap at a size switch {max(gaps):.3f} s "
                 f"(frame interval {FRAME_INTERVAL_S:.2f} s), median "
                 f"{statistics.median(gaps):.3f} s over {len(gaps)} switches")
    assert torn == 0
    assert delivered >= 0.95
    assert {size for sizes in epochs.values() for size in sizes} == set(SIZES)
    assert all(len(sizes) == 1 for sizes in epochs.values())  # no epoch spans two sizes
    assert {(f["w"], f["h"]) for f in scaled.frames} == {(160, 120)}
    assert_daemon_healthy(matrix)
