"""Soak: the daemon (a subprocess) with 8 cameras for a long time while subscribers come and
go, snapshots and one-shot frame requests are made; memory, descriptors and threads must stay
flat, counters must stay consistent, no frame may be torn.

    FRAMEBUS_SOAK_SECONDS=1800 make soak        # the full soak (30 minutes by default)
    .venv/bin/python -m pytest -q -m soak tests/test_soak.py -k smoke   # the 60 s version

Both are marked ``soak`` (not part of ``make test``). Results are recorded for
docs/RELIABILITY.md (``tests/reliability.py``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apikit import ApiClient
from faultkit import (
    STREAMING,
    CheckedReader,
    DaemonProcess,
    camera_config,
    write_daemon_config,
)
from reliability import record_soak
from rtspserver import Mount, RtspServer
from waiting import wait_for

from framebus.client import request_frame

SOAK_SECONDS = float(os.environ.get("FRAMEBUS_SOAK_SECONDS", "1800"))
SMOKE_SECONDS = 60.0
CAMERAS = [f"c{i}" for i in range(8)]
FPS = 15
# (format, options) of the short-lived subscribers, in turn
RENDITIONS: list[dict[str, Any]] = [
    {"format": "gray"}, {"format": "bgr24", "width": 160}, {"format": "rgb24"},
    {"format": "yuv420p"}, {"format": "nv12", "width": 160}, {"format": "jpeg", "width": 160},
    {"format": "bgr24", "transport": "shm"}, {"format": "gray", "width": 160, "transport": "shm"},
]
MAX_SHORT_LIVED = 3  # short-lived subscribers at once
STEP_FRAMES = 30  # a step lasts at least this many frames of c0 (2 s at 15 fps)
COUNTER_KEYS = ("frames_sent", "bytes_sent", "disconnects")


@dataclass
class Checkpoint:
    """The daemon at a quiet moment: only the long-lived subscribers exist."""

    at_s: float
    rss: int
    fds: int
    threads: int
    names: dict[str, int] = field(default_factory=dict)  # thread names (comm) and counts


@dataclass
class ShortLived:
    """A subscriber that comes and goes."""

    name: str
    camera: str
    first_seq: int
    reader: CheckedReader


@dataclass
class Soak:
    """The running soak: daemon, API, readers and everything observed."""

    daemon: DaemonProcess
    api: ApiClient
    fifo_dir: Path
    started: float = field(default_factory=time.monotonic)
    short: list[ShortLived] = field(default_factory=list)
    finished: list[CheckedReader] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    added: int = 0
    snapshots: int = 0
    requests: int = 0
    problems: list[str] = field(default_factory=list)

    def last_seq(self, camera: str) -> int:
        status, body = self.api.json("GET", f"/v1/cameras/{camera}")
        assert status == 200, body
        return int(body["last_seq"] or 0)

    def seq_reached(self, camera: str, seq: int) -> Callable[[], bool]:
        """A condition: the daemon published ``seq`` of ``camera``."""
        return lambda: self.last_seq(camera) >= seq

    # -- subscribers coming and going --------------------------------------------------------

    def add_short_lived(self) -> None:
        camera = CAMERAS[self.added % len(CAMERAS)]
        name = f"soak-{self.added}"
        options = RENDITIONS[self.added % len(RENDITIONS)]
        first_seq = self.last_seq(camera)
        status, body = self.api.json("POST", "/v1/subscriptions",
                                     {"name": name, "camera": camera, **options})
        assert status == 201, body
        self.added += 1
        reader = CheckedReader(Path(body["fifo"]))
        self.short.append(ShortLived(name, camera, first_seq, reader))
        reader.wait_frames(3)

    def remove_short_lived(self) -> None:
        gone = self.short.pop(0)
        gone.reader.stop()
        self.finished.append(gone.reader)
        status, body = self.api.json("GET", f"/v1/subscriptions/{gone.name}")
        assert status == 200, body
        published = self.last_seq(gone.camera) - gone.first_seq
        offered = body["frames_sent"] + sum(body["dropped"].values())
        # a frame is offered at most once per connection, plus the newest one on (re)connect
        if offered > published + body["disconnects"] + 1:
            self.problems.append(f"{gone.name}: sent+dropped {offered} > published "
                                 f"{published} + connects {body['disconnects'] + 1}")
        if gone.reader.summary and gone.reader.summary["frames"] > body["frames_sent"]:
            self.problems.append(f"{gone.name}: reader got {gone.reader.summary['frames']} > "
                                 f"sent {body['frames_sent']}")
        status, body = self.api.json("DELETE", f"/v1/subscriptions/{gone.name}")
        assert status == 200, body

    # -- requests in between -----------------------------------------------------------------

    def snapshot_and_request(self, step: int) -> None:
        camera = CAMERAS[step % len(CAMERAS)]
        status, _, body = self.api.request("GET", f"/v1/cameras/{camera}/snapshot.jpg")
        assert status == 200 and body[:2] == b"\xff\xd8", (status, body[:200])
        self.snapshots += 1
        frame = request_frame(CAMERAS[(step + 3) % len(CAMERAS)], url=self.api.url,
                              fifo_dir=self.fifo_dir, format="gray", timeout=5,
                              token=self.api.token)
        assert frame.array.shape == (240, 320)
        self.requests += 1

    # -- counters only grow --------------------------------------------------------------------

    def check_counters(self) -> None:
        status, body = self.api.json("GET", "/v1/subscriptions")
        assert status == 200, body
        for sub in body["subscriptions"]:
            now = {key: int(sub.get(key, 0)) for key in COUNTER_KEYS}
            now.update({f"dropped.{k}": int(v) for k, v in sub.get("dropped", {}).items()})
            before = self.counters.get(sub["name"], {})
            for key, value in now.items():
                if value < before.get(key, 0):
                    self.problems.append(f"{sub['name']}.{key} went back: "
                                         f"{before[key]} -> {value}")
            self.counters[sub["name"]] = now
        status, _, exposition = self.api.request("GET", "/metrics")
        assert status == 200
        for line in exposition.decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, text = line.rsplit(" ", 1)
            if not series.startswith("framebus_") or not (
                    "_total" in series or "_bucket" in series or "_count" in series):
                continue
            number = float(text)
            if number < self.metrics.get(series, 0.0):
                self.problems.append(f"{series} went back: {self.metrics[series]} -> {number}")
            self.metrics[series] = number

    # -- quiet moments -------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        while self.short:
            self.remove_short_lived()

        def only_long_lived() -> bool:
            names = {s["name"] for s in self.api.json("GET", "/v1/subscriptions")[1][
                "subscriptions"]}
            return names == {"long0", "long1"}
        wait_for(only_long_lived, 20, "the short-lived subscribers to be gone")
        # no shm segment outlives its subscribers (their readers' last pins go within 2 s)
        wait_for(lambda: not list(self.fifo_dir.glob("fbshm-*")), 20,
                 "the short-lived subscribers' shm segments to be unlinked")
        last: tuple[int, int] | None = None
        since = time.monotonic()

        def quiet() -> tuple[int, int] | None:
            """The same (fds, threads) for a whole second. Only /proc is read here: an HTTP
            request would itself add a handler thread and a socket to the count."""
            nonlocal last, since
            now = (self.daemon.fds(), self.daemon.threads())
            if now != last:
                last, since = now, time.monotonic()
                return None
            return now if time.monotonic() - since >= 1.0 else None
        fds, threads = wait_for(quiet, 30, "a quiet moment", poll=0.1) or (0, 0)
        names: dict[str, int] = {}
        for task in Path(f"/proc/{self.daemon.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                names[comm] = names.get(comm, 0) + 1
        point = Checkpoint(time.monotonic() - self.started, self.daemon.rss_bytes(), fds,
                           threads, names)
        self.checkpoints.append(point)
        return point


def reader_at(reader: CheckedReader, seq: int) -> Callable[[], bool]:
    """A condition: the reader received ``seq`` or a newer frame."""
    return lambda: reader.last_seq() >= seq


@contextlib.contextmanager
def soak_daemon(root: Path) -> Iterator[tuple[Soak, dict[str, CheckedReader]]]:
    """The RTSP server with 8 cameras, the daemon, and the two long-lived readers."""
    server = RtspServer([Mount(name, width=320, height=240, fps=FPS) for name in CAMERAS])
    daemon: DaemonProcess | None = None
    long: dict[str, CheckedReader] = {}
    try:
        server.start()
        fifo_dir = root / "fifos"
        config = write_daemon_config(
            root / "framebus.yaml", fifo_dir,
            {name: {**camera_config(server.url(name)), "idle_decode": "keyframes"}
             for name in CAMERAS},
            {"long0": {"camera": "c0", "format": "gray"},
             "long1": {"camera": "c1", "format": "bgr24", "width": 160}})
        daemon = DaemonProcess(config)
        api = daemon.api()
        wait_for(lambda: all(api.json("GET", f"/v1/cameras/{c}")[1]["state"] == STREAMING
                             for c in CAMERAS), 60, "8 cameras streaming")
        long = {name: CheckedReader(fifo_dir / f"{name}.fifo", max_seconds=SOAK_SECONDS + 900)
                for name in ("long0", "long1")}
        for reader in long.values():
            reader.wait_frames(5)
        yield Soak(daemon, api, fifo_dir), long
    finally:
        for reader in long.values():
            if reader.proc.poll() is None:
                reader.kill()
        if daemon is not None:
            daemon.stop()
        server.close()


def run_soak(root: Path, seconds: float, label: str, checkpoint_every: float) -> None:
    with soak_daemon(root) as (soak, long):
        first_seq = {name: reader.frames[0]["seq"] for name, reader in long.items()}
        deadline = time.monotonic() + seconds
        next_checkpoint = time.monotonic() + checkpoint_every
        step = 0
        while time.monotonic() < deadline:
            step_start = soak.last_seq("c0")
            soak.add_short_lived()
            if len(soak.short) > MAX_SHORT_LIVED:
                soak.remove_short_lived()
            soak.snapshot_and_request(step)
            soak.check_counters()
            step += 1
            if time.monotonic() >= next_checkpoint:
                soak.checkpoint()
                next_checkpoint = time.monotonic() + checkpoint_every
            # a step lasts STEP_FRAMES frames of c0: subscribers come and go every few seconds
            wait_for(soak.seq_reached("c0", step_start + STEP_FRAMES), 60, "the next step")
        soak.checkpoint()
        soak.check_counters()
        end_seq = {"long0": soak.last_seq("c0"), "long1": soak.last_seq("c1")}
        for name, reader in long.items():
            wait_for(reader_at(reader, end_seq[name]), 20, f"{name} to catch up")
        delivered = {name: len({f["seq"] for f in reader.frames
                                if first_seq[name] < f["seq"] <= end_seq[name]})
                     / max(1, end_seq[name] - first_seq[name]) for name, reader in long.items()}
        for reader in long.values():
            reader.stop()
            soak.finished.append(reader)
        reconnects = {c["name"]: sum(c["reconnects"].values())
                      for c in soak.api.json("GET", "/v1/cameras")[1]["cameras"]}
        assert soak.daemon.stop() == 0
        log = list(soak.daemon.lines)
    elapsed = time.monotonic() - soak.started
    torn = sum(r.torn for r in soak.finished)
    truncated = sum(r.truncated for r in soak.finished)
    frames = sum(int((r.summary or {}).get("frames", 0)) for r in soak.finished)
    warmup = max(0.2 * seconds, 30.0)  # allocator arenas and caches fill up first
    steady = [c for c in soak.checkpoints if c.at_s >= warmup] or soak.checkpoints[-2:]
    # Compare the first half of the steady checkpoints with the second half: a leak raises the
    # floor. RSS is taken as medians of three checkpoints, since allocator arenas breathe.
    half = max(1, len(steady) // 2)
    early, late = steady[:half], steady[half:] or steady[-1:]
    rss_base = statistics.median(c.rss for c in early[:3])
    rss_final = statistics.median(c.rss for c in late[-3:])
    drift = (rss_final - rss_base) / rss_base
    floors = {key: (min(getattr(c, key) for c in early), min(getattr(c, key) for c in late))
              for key in ("fds", "threads")}
    result = {
        "seconds": elapsed, "cameras": len(CAMERAS), "subscribers_added": soak.added,
        "snapshots": soak.snapshots, "frame_requests": soak.requests, "frames_read": frames,
        "torn": torn, "truncated": truncated, "rss_drift": drift,
        "rss_baseline_mb": rss_base / 2**20, "rss_final_mb": rss_final / 2**20,
        "rss_max_mb": max(c.rss for c in steady) / 2**20,
        "fds_min": min(c.fds for c in steady), "fds_max": max(c.fds for c in steady),
        "threads_min": min(c.threads for c in steady),
        "threads_max": max(c.threads for c in steady), "floors_early_late": floors,
        "long_delivered": delivered, "checkpoints": [vars(c) for c in soak.checkpoints],
        "camera_reconnects": reconnects,
        "problems": soak.problems[:20],
    }
    record_soak(label, result)
    print(f"\nMEASURED soak {label}: {elapsed:.0f} s, {soak.added} subscribers added, "
          f"{frames} frames read, torn {torn}, RSS {rss_base / 2**20:.1f} -> "
          f"{rss_final / 2**20:.1f} MB ({drift:+.1%}), fds {result['fds_min']}-"
          f"{result['fds_max']}, threads {result['threads_min']}-{result['threads_max']} "
          f"(floor early/late {floors['threads']}), long-lived delivered "
          f"{', '.join(f'{v:.1%}' for v in delivered.values())}, a subscriber every "
          f"{elapsed / max(1, soak.added):.1f} s, camera reconnects {reconnects}")
    assert soak.problems == []
    assert torn == 0
    assert truncated == 0  # the daemon never leaves a message unfinished while it runs
    assert drift <= 0.05, result
    for key, (early_floor, late_floor) in floors.items():
        assert late_floor <= early_floor + 1, (key, floors)  # no upward trend
    # and no excursions either: a quiet daemon has a fixed set of threads and descriptors
    assert max(c.fds for c in steady) <= floors["fds"][0] + 1, result["checkpoints"]
    assert max(c.threads for c in steady) <= floors["threads"][0] + 1, result["checkpoints"]
    assert all(v >= 0.9 for v in delivered.values()), delivered
    assert soak.added >= seconds / 10
    assert not any("Traceback" in line for line in log), [line for line in log
                                                         if "Traceback" in line]


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 900)
def test_soak(tmp_path: Path) -> None:
    run_soak(tmp_path, SOAK_SECONDS, f"soak_{SOAK_SECONDS:.0f}s", checkpoint_every=60.0)


@pytest.mark.soak
@pytest.mark.timeout(SMOKE_SECONDS + 600)
def test_soak_smoke(tmp_path: Path) -> None:
    run_soak(tmp_path, SMOKE_SECONDS, "smoke_60s", checkpoint_every=10.0)
