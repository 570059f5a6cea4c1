"""The fault matrix: inject one fault at a time into a running daemon (a subprocess), measure
detection and recovery, check that a healthy camera and subscriber alongside lose nothing, and
that no reader ever gets a torn frame. Each measurement is recorded for docs/RELIABILITY.md
(``tests/reliability.py`` renders it).

The bounded subset (no ``soak`` mark) runs in ``make test``; the long versions and the rest of
the matrix are marked ``soak`` (``make soak``).

The rig (module scope): RTSP server ``a`` serves the victim cameras (``victim`` directly,
``proxied`` through the fault proxy, ``sized`` for the size change), RTSP server ``b`` serves
``healthy`` alone, so killing or pausing ``a`` cannot touch it. Subscriptions are made per
test over the HTTP API and removed afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fanoutkit import ReaderProcess
from faultkit import (
    STREAMING,
    CheckedReader,
    DaemonProcess,
    Rig,
    camera_config,
    recovery_time,
    rig,
    scenario,
    seconds_since,
    write_daemon_config,
)
from faultproxy import FaultProxy
from reliability import record
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import timed, wait_for

from framebus.client import FrameRequestError, request_frame

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


# -- the fault proxy itself ---------------------------------------------------------------------


class ByteServer:
    """A loopback TCP server that answers each ``GO`` with ``payload`` (the proxy's target)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    while conn.recv(2) == b"GO":
                        conn.sendall(self.payload)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def receive(sock: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes (the socket's timeout bounds each wait)."""
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return bytes(data)


def test_faultproxy_forwards_blackholes_corrupts_and_stops_by_itself() -> None:
    payload = bytes(random.Random(7).randrange(256) for _ in range(200_000))
    target = ByteServer(payload)
    try:
        with FaultProxy(("127.0.0.1", target.sock.getsockname()[1]), lifetime=60) as proxy, \
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"GO")
            assert receive(client, len(payload)) == payload  # forward: byte for byte
            proxy.corrupt(after_bytes=0, every_bytes=1000)
            client.sendall(b"GO")
            damaged = receive(client, len(payload))
            flipped = sum(a != b for a, b in zip(damaged, payload, strict=True))
            assert 100 <= flipped <= 300 and flipped == proxy.stats.corrupted_bytes
            proxy.blackhole()
            client.sendall(b"GO")
            client.settimeout(0.5)  # a deliberate observation window: nothing may arrive
            with pytest.raises(TimeoutError):
                client.recv(1)
            client.settimeout(5)
            proxy.forward()  # the partition heals: the held request goes through
            assert receive(client, len(payload)) == payload
        with FaultProxy(("127.0.0.1", target.sock.getsockname()[1]), lifetime=0.3) as short:
            wait_for(lambda: not short.running, 5, "the proxy to stop by itself")
    finally:
        target.close()


# -- camera faults ------------------------------------------------------------------------------


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


# -- reader faults ------------------------------------------------------------------------------


def test_reader_killed_mid_frame(matrix: Rig) -> None:
    with scenario(matrix, "killed") as sc:
        sc.watch("victim", format="gray")  # a sibling subscriber of the same camera
        name, path = sc.subscribe("victim", format="bgr24", pipe_size=65536)  # 230 KB frames
        sc.begin()
        partial = ReaderProcess(path, "--partial", "100000")
        try:
            wait_for(lambda: "PARTIAL" in partial.lines, 20, "a reader half-way into a frame")
            killed = time.monotonic_ns()
            partial.kill()
        finally:
            if partial.proc.poll() is None:
                partial.kill()
        detection = timed(lambda: matrix.subscription(name)["disconnects"] >= 1, 10,
                          "the daemon to count the disconnect")
        after = sc.reader(path)
        after.wait_frames(3)
        recovery = (after.frames[0]["t"] - after.opened[0]) / 1e9
        delivered = sc.end()
        torn = sc.stop_readers()
        status = matrix.subscription(name)
    record("reader_killed_mid_frame", detection_s=detection, recovery_s=recovery,
           unaffected=delivered, torn=torn, **sc.details(),
           kill_to_first_frame_s=(after.frames[0]["t"] - killed) / 1e9,
           notes="recovery counts from the new reader's open (its process start-up excluded)")
    assert torn == 0
    assert delivered >= 0.95
    assert status["dropped"].get("reader_gone", 0) >= 1  # the cut message was forgotten
    assert after.frames[0]["w"] == 320
    assert_daemon_healthy(matrix)


@pytest.mark.soak
def test_reader_stalled(matrix: Rig) -> None:
    with scenario(matrix, "stalled") as sc:
        sibling = sc.watch("victim", format="gray")
        name, path = sc.subscribe("victim", format="gray", pipe_size=65536)
        stalled = sc.reader(path)
        stalled.wait_frames(5)
        start = sc.begin()
        stalled.pause()
        try:
            detection = timed(
                lambda: matrix.subscription(name)["dropped"].get("slow_reader", 0) > 0, 10,
                "drops for the stopped reader")
            until = sibling.reader.last_seq() + round((5.0 - seconds_since(start))
                                                      / FRAME_INTERVAL_S)
            wait_for(lambda: sibling.reader.last_seq() >= until, 30, "5 s of frames")
        finally:
            stalled.resume()
        healed = time.monotonic_ns()
        recovery = recovery_time(stalled, healed)
        delivered = sc.end()
        status = matrix.subscription(name)
        torn = sc.stop_readers()
    record("reader_stalled", detection_s=detection, recovery_s=recovery, unaffected=delivered,
           torn=torn, **sc.details(), dropped=status["dropped"])
    assert torn == 0
    assert delivered >= 0.95
    assert status["disconnects"] == 0  # a slow reader is never disconnected
    assert_daemon_healthy(matrix)


def reopening(the_rig: Rig, cycles: int, max_delay_us: int, fault: str) -> None:
    with scenario(the_rig, "reopen") as sc:
        sc.watch("victim", format="gray")  # a sibling subscriber of the same camera
        # 230 KB frames through a 64 KiB pipe: the daemon is mid-message most of the time
        name, path = sc.subscribe("victim", format="bgr24", pipe_size=65536)
        sc.begin()
        cycling = sc.reader(path, "--cycles", str(cycles), "--reopen-delay-us",
                            str(max_delay_us))
        wait_for(lambda: cycling.proc.poll() is not None, 30 + cycles * 0.5,
                 f"{cycles} open/read/close cycles")
        delivered = sc.end()
        # a reopen that races the daemon's reaction to the close finds part of a message in
        # the pipe: the daemon then closes instead of writing after it, and the reader sees
        # that part end in EOF (dropped, never delivered) instead of a spliced frame
        torn = sc.stop_readers(allow_truncated=True)
        status = the_rig.subscription(name)
    summary = cycling.summary
    assert summary is not None
    by_open: dict[int, int] = {}
    for f in cycling.frames:
        by_open.setdefault(f["open"], f["t"])
    latencies = [(by_open[i + 1] - t) / 1e9 for i, t in enumerate(cycling.opened)
                 if i + 1 in by_open]
    record(fault, detection_s=None, recovery_s=statistics.median(latencies),
           unaffected=delivered, torn=torn, **sc.details(), cycles=cycles,
           frames=summary["frames"],
           disconnects_seen=status["disconnects"], worst_open_to_frame_s=max(latencies),
           notes=f"{cycles} cycles: {summary['frames']} whole frames, the daemon saw "
                 f"{status['disconnects']} disconnects; open → first frame median "
                 f"{statistics.median(latencies) * 1000:.0f} ms, worst "
                 f"{max(latencies) * 1000:.0f} ms"
                 + (f"; {sc.truncated} partial message(s) ended by EOF and dropped (the "
                    "reopen raced the daemon)" if sc.truncated else ""))
    assert summary["opens"] == cycles
    assert summary["frames"] >= 0.9 * cycles  # an open that met a clean EOF reads none
    assert delivered >= 0.95
    assert_daemon_healthy(the_rig)
    assert torn == 0, summary["errors"][:3]
    assert sc.truncated <= max(1, cycles // 100)  # rare: only a reopen within microseconds


def test_reader_reopening_100_times(matrix: Rig) -> None:
    reopening(matrix, 100, 0, "reader_reopen_100")


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_reader_reopening_1000_times(matrix: Rig) -> None:
    reopening(matrix, 1000, 300, "reader_reopen_1000")


def test_fifo_deleted_while_in_use(matrix: Rig) -> None:
    with scenario(matrix, "unlinked") as sc:
        name, path = sc.subscribe("victim", format="gray")
        first = sc.reader(path)
        first.wait_frames(5)
        sc.begin()
        path.unlink()
        first.wait_more(10)  # the open reader does not notice: same descriptor, same pipe
        first.stop()
        left = time.monotonic_ns()
        detection = timed(lambda: matrix.subscription(name)["disconnects"] >= 1, 10,
                          "the daemon to count the disconnect")
        second = sc.reader(path)  # waits for the path to (re)appear
        second.wait_frames(3, timeout=10)
        recovery = (second.frames[0]["t"] - left) / 1e9
        delivered = sc.end()
        torn = sc.stop_readers()
    record("fifo_deleted", detection_s=detection, recovery_s=recovery, unaffected=delivered,
           torn=torn, **sc.details(),
           notes="recovery counts from the first reader leaving and includes the second "
                 "reader's process start-up")
    assert torn == 0
    assert delivered >= 0.95
    assert path.exists() and path.is_fifo()  # re-created by the daemon, as a FIFO
    assert_daemon_healthy(matrix)


@pytest.mark.parametrize("how", ["reload", "api"])
def test_subscriber_replaced_while_its_reader_is_slow(matrix: Rig, how: str) -> None:
    name = f"replaced-{how}"
    options = {"camera": "victim", "format": "bgr24", "pipe_size": 65536}
    path = matrix.fifo_dir / f"{name}.fifo"
    with scenario(matrix, "replaced") as sc:
        if how == "reload":
            matrix.write_config(subscribers={name: options})
            matrix.daemon.reload()
        else:
            assert matrix.api.json("POST", "/v1/subscriptions", {"name": name, **options})[0] == 201
        try:
            slow = sc.reader(path)
            slow.wait_frames(5)
            sc.begin()
            slow.pause()  # a slow reader: the pipe fills, a 230 KB message stays in flight
            wait_for(lambda: matrix.subscription(name)["dropped"].get("slow_reader", 0) > 0, 10,
                     "a message in flight and one pending")
            if how == "reload":
                matrix.write_config(subscribers={name: {**options, "format": "rgb24"}})
                matrix.daemon.reload()
            else:
                matrix.unsubscribe(name)
                assert matrix.api.json("POST", "/v1/subscriptions",
                                       {"name": name, **options})[0] == 201
            healthy = sc.watched[0].reader
            until = healthy.last_seq() + round(3.0 / FRAME_INTERVAL_S)  # past RETIRE_S (2 s)
            wait_for(lambda: healthy.last_seq() >= until, 30, "3 s of healthy frames")
            slow.resume()
            healed = time.monotonic_ns()
            slow.wait_more(10)
            recovery = recovery_time(slow, healed)
            delivered = sc.end()
            torn = sc.stop_readers()
        finally:
            if how == "reload":
                matrix.write_config(subscribers={})
                matrix.daemon.reload()
            else:
                matrix.unsubscribe(name)
    errors = (slow.summary or {}).get("errors", [])
    record(f"subscriber_replaced_{how}", detection_s=None, recovery_s=recovery,
           unaffected=delivered, torn=torn, **sc.details(), errors=errors,
           notes="the successor subscriber adopts the open FIFO, so the in-flight message "
                 "finishes first and the reader stays connected")
    assert torn == 0, errors[:2]
    assert delivered >= 0.95
    assert_daemon_healthy(matrix)


# -- control plane faults ------------------------------------------------------------------------


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


# -- secrets ---------------------------------------------------------------------------------------

SECRET_1 = "c4m-0ne:s3cr3t pa55@x"  # a colon, a space and an @: URL-encoding changes them
SECRET_2 = "c4m-tw0/p%ss#w0rd"
SECRET_WRONG = "wr0ng-gue55:zz top"


def secret_forms(secret: str, user: str) -> list[bytes]:
    """Every way a password could leak: raw, URL-encoded, inside a Basic-auth token."""
    forms = {secret, quote(secret, safe=""), quote(secret),
             base64.b64encode(f"{user}:{secret}".encode()).decode()}
    return [form.encode() for form in forms]


def leaks(texts: dict[str, bytes], forms: list[bytes]) -> list[str]:
    """Where any form of any secret appears."""
    return [where for where, text in texts.items() if any(form in text for form in forms)]


def all_cmdlines() -> dict[str, bytes]:
    """/proc/*/cmdline of every process (what any local user can read)."""
    found: dict[str, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[f"/proc/{entry.name}/cmdline"] = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # the process ended meanwhile
    return found


@pytest.mark.soak
def test_passwords_never_leak_through_faults(tmp_path: Path) -> None:
    mounts = {"a": [Mount("cam1", user="viewer", password=SECRET_1, width=W, height=H),
                    Mount("cam2", user="viewer2", password=SECRET_2, width=W, height=H)],
              "b": [Mount("healthy", width=W, height=H)]}

    def cameras(servers: dict[str, RtspServer], proxy: FaultProxy | None) -> dict[str, Any]:
        assert proxy is not None
        return {"healthy": camera_config(servers["b"].url("healthy")),
                "cam1": camera_config(servers["a"].url("cam1"), username="viewer",
                                      password_file=str(tmp_path / "cam1.secret")),
                "cam2": camera_config(proxy.url("cam2"), username="viewer2",
                                      password_env="FRAMEBUS_TEST_CAM2_PASSWORD"),
                "wrong": camera_config(servers["a"].url("cam1"), username="viewer",
                                       password_file=str(tmp_path / "wrong.secret"))}
    forms = [*secret_forms(SECRET_1, "viewer"), *secret_forms(SECRET_2, "viewer2"),
             *secret_forms(SECRET_WRONG, "viewer")]
    texts: dict[str, bytes] = {}
    with rig(tmp_path, mounts, cameras, proxy_to=("a", "cam2"),
             env={"FRAMEBUS_TEST_CAM2_PASSWORD": SECRET_2},
             files={"cam1.secret": SECRET_1, "wrong.secret": SECRET_WRONG},
             args=("--log-level", "DEBUG"), expect_failing=("wrong",)) as the_rig:
        api, server, proxy = the_rig.api, the_rig.servers["a"], the_rig.proxy
        assert proxy is not None
        wait_for(lambda: the_rig.state("wrong") == "auth_failed", 20, "the wrong password")
        readers = []
        for camera in ("cam1", "cam2"):
            _, path = the_rig.subscribe(camera, "secret", format="gray")
            readers.append(CheckedReader(path))
        try:
            for reader in readers:
                reader.wait_frames(3)
            # faults: the server killed and restarted, paused, the network cut and corrupted
            server.kill()
            wait_for(lambda: the_rig.state("cam1") != STREAMING, 10, "cam1 down")
            server.restart()
            the_rig.wait_streaming()
            server.pause()
            try:
                wait_for(lambda: the_rig.state("cam1") != STREAMING, 10, "cam1 stalled")
            finally:
                server.resume()
            the_rig.wait_streaming()
            proxy.blackhole()
            try:
                wait_for(lambda: the_rig.state("cam2") != STREAMING, 10, "cam2 stalled")
            finally:
                proxy.forward()
            the_rig.wait_streaming()
            proxy.corrupt(after_bytes=16 * 1024, every_bytes=64)
            try:
                wait_for(lambda: the_rig.camera("cam2")["reconnects"].get("eof", 0) > 0, 20,
                         "cam2 to reconnect on the corrupted stream")
            finally:
                proxy.forward()
            the_rig.wait_streaming()
            # a reload that fails (unreadable password file), then one that works
            the_rig.write_config({**the_rig.cameras, "cam3": camera_config(
                server.url("cam1"), username="viewer",
                password_file=str(tmp_path / "missing.secret"))})
            the_rig.daemon.reload()
            the_rig.write_config({k: v for k, v in the_rig.cameras.items() if k != "cam3"})
            the_rig.daemon.reload()
            # every API answer, good and bad
            requests: list[tuple[str, str, bytes | None]] = [
                ("GET", "/v1/cameras", None), ("GET", "/v1/subscriptions", None),
                ("GET", "/metrics", None), ("GET", "/v1/cameras/nope", None),
                ("GET", "/v1/cameras/wrong/snapshot.jpg", None),
                ("GET", "/v1/cameras/cam1/snapshot.jpg", None),
                ("GET", "/v1/cameras/cam2/snapshot.png?width=64", None),
                ("POST", "/v1/subscriptions", b"{not json"),
                ("POST", "/v1/subscriptions",
                 f'{{"name": "x", "camera": "cam1", "password": "{SECRET_1}"}}'.encode()),
                ("POST", "/v1/subscriptions", b'{"name": "y", "camera": "cam1", '
                                              b'"fifo": "/etc/passwd"}'),
                ("POST", "/v1/cameras/wrong/snapshot-to-fifo", b'{"fifo": "/tmp/x.fifo"}'),
                ("DELETE", "/v1/subscriptions/nope", None),
                *[("GET", f"/v1/cameras/{name}", None) for name in the_rig.cameras],
            ]
            for method, target, body in requests:
                status, headers, reply = api.request(method, target, body)
                texts[f"{method} {target} -> {status}"] = (
                    reply + repr(headers).encode() if not target.endswith((".jpg", ".png"))
                    else repr(headers).encode())
            for name in api.json("GET", "/v1/subscriptions")[1]["subscriptions"]:
                texts[f"GET /v1/subscriptions/{name['name']}"] = api.request(
                    "GET", f"/v1/subscriptions/{name['name']}")[2]
            frame = request_frame("cam1", url=api.url, fifo_dir=the_rig.fifo_dir,
                                  format="gray", timeout=5)
            assert frame.camera == "cam1"
            with pytest.raises(FrameRequestError) as refused:  # longer than wait_timeout (5 s)
                request_frame("wrong", url=api.url, fifo_dir=the_rig.fifo_dir, timeout=8)
            texts["request_frame(wrong) exception"] = str(refused.value).encode()
            texts.update(all_cmdlines())  # while everything runs
            for reader in readers:
                reader.stop()
                assert reader.torn == 0
                texts[f"reader {reader.fifo.name}"] = "\n".join(reader.lines).encode()
        finally:
            for reader in readers:
                if reader.proc.poll() is None:
                    reader.kill()
        assert the_rig.daemon.stop() == 0
        texts["daemon stderr"] = "\n".join(the_rig.daemon.lines).encode()
        texts["rtsp server a stderr"] = server.stderr_text().encode()
    assert texts["daemon stderr"].count(b"auth_failed") >= 1
    assert any(b"DEBUG" in line for line in texts["daemon stderr"].splitlines())
    found = leaks(texts, forms)
    print(f"\nMEASURED secrets: scanned {len(texts)} texts "
          f"({sum(len(t) for t in texts.values())} bytes, "
          f"{sum(k.startswith('/proc/') for k in texts)} command lines): {len(found)} leaks")
    assert found == [], f"a password appears in: {found}"


# -- least privilege -------------------------------------------------------------------------------


def closed_to_others(path: str) -> str:
    """The first directory on the way to ``path`` (symlinks resolved) that users other than its
    owner and group cannot traverse, as ``dir (mode owner:group)``; empty if there is none."""
    real = Path(os.path.realpath(path))
    for directory in [*reversed(real.parents), real]:
        info = directory.stat()
        needed = 0o001 if directory.is_dir() else 0o004
        if not info.st_mode & needed:
            owner = pwd.getpwuid(info.st_uid).pw_name
            group = grp.getgrgid(info.st_gid).gr_name
            return f"{directory} ({stat.filemode(info.st_mode)} {owner}:{group})"
    return ""


def python_for(uid: int, gid: int) -> tuple[str, dict[str, str], str]:
    """An interpreter the user can run with framebus importable: (path, env, note).

    This checkout's own (the venv's) if the user can reach it; otherwise a system Python of
    the same version given the venv's site-packages and the checkout on PYTHONPATH (skips if
    there is none), with a note saying why."""
    candidates: list[tuple[str, dict[str, str], str]] = []
    blocked = closed_to_others(sys.executable)
    if not blocked:
        candidates.append((sys.executable, {}, ""))
    system = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    paths = sysconfig.get_paths()
    root = str(Path(__file__).resolve().parent.parent)
    candidates.append((system, {"PYTHONPATH": os.pathsep.join(
        dict.fromkeys([paths["purelib"], paths["platlib"], root]))},
        f"{sys.executable} is behind {blocked}, so the daemon ran as {system} with the venv's "
        "site-packages on PYTHONPATH"))
    failures = []
    for python, env, note in candidates:
        probe = subprocess.run(
            [python, "-c", "import sys; assert sys.version_info[:2] == "
                           f"{tuple(sys.version_info[:2])}; import av, framebus.daemon"],
            user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=60,
            cwd="/", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env})
        if probe.returncode == 0:
            return python, env, note
        failures.append(f"{python}: {probe.stderr.strip()[-300:]}")
    pytest.skip(f"no Python that uid {uid} can run imports framebus ({blocked or 'venv'}; "
                + "; ".join(failures) + ")")


@pytest.mark.soak
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to start the daemon as another user")
def test_daemon_runs_as_an_unprivileged_user(rtsp_server_factory: RtspServerFactory) -> None:
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")
    uid, gid = user.pw_uid, user.pw_gid
    python, env, note = python_for(uid, gid)
    tests_blocked = closed_to_others(str(Path(__file__).resolve()))
    assert not tests_blocked, f"{user.pw_name} cannot read the checkout: {tests_blocked}"
    server = rtsp_server_factory([Mount("cam", width=W, height=H)])
    # not under pytest's tmp_path: /tmp/pytest-of-root is 0700, nobody cannot get through
    root = Path(tempfile.mkdtemp(prefix="framebus-unprivileged-"))
    daemon: DaemonProcess | None = None
    reader: CheckedReader | None = None
    try:
        os.chmod(root, 0o755)
        fifos = root / "fifos"
        fifos.mkdir(mode=0o750)
        os.chown(fifos, uid, gid)  # the only place the daemon writes
        config = write_daemon_config(root / "framebus.yaml", fifos,
                                     {"cam": camera_config(server.url("cam"))},
                                     {"sub": {"camera": "cam", "format": "gray"}})
        config.chmod(0o644)
        daemon = DaemonProcess(config, env, user=uid, group=gid, python=python)
        api = daemon.api()
        wait_for(lambda: api.json("GET", "/v1/cameras/cam")[1]["state"] == STREAMING, 30,
                 "streaming as an unprivileged user")
        reader = CheckedReader(fifos / "sub.fifo", user=uid, group=gid, python=python, env=env)
        reader.wait_frames(10)
        status = {line.split(":")[0]: line.split(":", 1)[1].split()
                  for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                  if line.startswith(("Uid", "Gid", "Groups", "CapEff"))}
        fifo = (fifos / "sub.fifo").stat()
        written = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                         if p.stat().st_uid == uid)
        reader.stop()
        assert reader.torn == 0
        assert daemon.stop() == 0
    finally:
        if reader is not None and reader.proc.poll() is None:
            reader.kill()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nMEASURED unprivileged daemon: {status}; FIFO {fifo.st_uid}:{fifo.st_gid} "
          f"{stat.filemode(fifo.st_mode)}; files owned by {user.pw_name}: {written}"
          + (f"; NOTE {note}" if note else ""))
    assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4
    assert status.get("Groups", []) == []
    assert int(status["CapEff"][0], 16) == 0
    assert (fifo.st_uid, fifo.st_gid) == (uid, gid)
    assert written == ["fifos", "fifos/sub.fifo"]  # it wrote nothing but its FIFO
    assert not any("Traceback" in line for line in daemon.lines)
