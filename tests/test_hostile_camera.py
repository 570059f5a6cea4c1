"""A hostile camera costs the daemon a small, bounded amount of memory, however large a picture
it declares (issue 22, hole 12).

The test RTSP server serves a clip whose SPS declares 16000x16000 (framebus/testsrc/hostile.py:
a real 64x64 picture behind a rewritten SPS; 16000x16000 is about the most FFmpeg itself
accepts). Before the fix, ``av.open()``'s probe decoded it at the declared size: the daemon's
peak RSS rose by about 1.1 GB at the first attempt, and every retry paid it again. Now the
probe never decodes and every decoder refuses pictures over ``max_pixels`` (framebus/opening.py),
so the hostile camera is refused with its reason while a normal camera in the same daemon
keeps streaming. Measured on 2 cores, peak RSS over 4 refusals, before -> after: declared at
the probe +1197 MB -> +2 MB; declared after the probe, to the streaming decoder +676 MB ->
+82 MB (its per-macroblock tables).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from faultkit import DaemonProcess, camera_config, rig
from rtspserver import Mount, RtspServer, media_cache_dir
from waiting import wait_for

from framebus.testsrc.hostile import (
    ensure_declared_size_clip,
    ensure_growing_clip,
    rewrite_sps_size,
    split_annexb,
)
from framebus.testsrc.media import ensure_clip

DECLARED = (16000, 16000)
RETRIES = 4
# the daemon's peak RSS may rise by at most this much while the hostile camera is retried.
# Declared at the probe: measured a few MB (before the fix: 1.2 GB at every attempt). Declared
# later, to the streaming decoder: it allocates its per-macroblock tables for the declared
# size before max_pixels refuses the picture, about 80 MB at 16000x16000, FFmpeg's own limit.
PROBE_BOUND_MB = 100
DECODE_BOUND_MB = 200


def status_kb(pid: int, key: str) -> int:
    """A figure in kB from /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class RssSampler:
    """VmRSS of a process every 10 ms, in a thread: the peak of each retry window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.window = 0
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                rss = status_kb(self.pid, "VmRSS")
            except (OSError, AssertionError):
                return  # the daemon is gone
            self.peaks[self.window] = max(rss, self.peaks.get(self.window, 0))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def reset_peak(daemon: DaemonProcess) -> None:
    """Make VmHWM the current RSS (clear_refs 5, Linux >= 4.0), so the peak measured is the
    hostile camera's, not the start-up's."""
    # without it the start-up peak only makes the measured growth smaller
    with contextlib.suppress(OSError):
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")


def too_large(camera: dict[str, Any]) -> int:
    """How often the camera was refused for its size."""
    return int(camera["reconnects"].get("too_large", 0))


def test_the_rewritten_sps_declares_the_size_and_nothing_else(tmp_path: Path) -> None:
    clip = ensure_clip(tmp_path, "h264", 64, 64, 25, 1.0, 25)
    sps = [unit for unit in split_annexb(clip.read_bytes()) if unit[0] & 0x1F == 7]
    assert sps and all(rewrite_sps_size(unit, 64, 64) == unit for unit in sps)  # bit-exact
    lying = ensure_declared_size_clip(tmp_path, *DECLARED)
    # FFmpeg believes it (the parser reads the size; max_pixels keeps this test cheap)
    with av.open(str(lying), options={"max_pixels": "4096", "skip_frame": "all"}) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height) == DECLARED


@dataclass
class Measured:
    """What a hostile camera cost while it was refused ``RETRIES`` times."""

    growth_mb: float  # VmHWM over the baseline
    per_retry: list[int]  # peak VmRSS over the baseline while refusal i was the last, MB
    elapsed: float
    camera: dict[str, Any]
    ok: dict[str, Any]  # the normal camera at the end
    ok_frames: int  # frames the normal camera published meanwhile
    logged: int  # log lines about the refusal


def measure(clip: Path, tmp_path: Path, what: str) -> Measured:
    """Run a daemon with a normal camera, add a camera on ``clip`` (by reload), wait until it
    was refused for its size RETRIES times; measure the daemon's RSS all along."""
    mounts = {"a": [Mount("ok", width=320, height=240), Mount("huge", path=clip)]}

    def cameras(servers: dict[str, RtspServer], _: object) -> dict[str, Any]:
        return {"ok": camera_config(servers["a"].url("ok"))}

    with rig(tmp_path, mounts, cameras) as the_rig:
        daemon, server = the_rig.daemon, the_rig.servers["a"]
        # the open timeout is long enough for the old, decoding probe to finish (about 3 s
        # on 2 cores), so before the fix the attempts end as too_large too, not as timeouts
        hostile = camera_config(server.url("huge"), open_timeout="15s",
                                backoff={"initial": "200ms", "max": "1s", "jitter": 0.1,
                                         "auth_failure": "1s"})
        reset_peak(daemon)
        baseline_kb = status_kb(daemon.pid, "VmHWM")
        seq_before = the_rig.last_seq("ok")
        started = time.monotonic()
        with RssSampler(daemon.pid) as sampler:
            the_rig.write_config({**the_rig.cameras, "hostile": hostile})
            daemon.reload()

            def refused() -> bool:
                sampler.window = min(too_large(the_rig.camera("hostile")), RETRIES)
                return sampler.window >= RETRIES
            wait_for(refused, 120, f"{RETRIES} too_large refusals", poll=0.05)
        elapsed = time.monotonic() - started
        measured = Measured(
            growth_mb=(status_kb(daemon.pid, "VmHWM") - baseline_kb) / 1024,
            per_retry=[round((sampler.peaks.get(i, baseline_kb) - baseline_kb) / 1024)
                       for i in range(RETRIES)],
            elapsed=elapsed, camera=the_rig.camera("hostile"), ok=the_rig.camera("ok"),
            ok_frames=the_rig.last_seq("ok") - seq_before,
            logged=daemon.count("camera hostile: unsupported"))
        print(f"\nMEASURED hostile camera, {what}: peak RSS +{measured.growth_mb:.0f} MB over "
              f"{RETRIES} refusals in {elapsed:.1f} s; peak RSS per attempt (MB over the "
              f"baseline): {measured.per_retry}; camera ok: {measured.ok_frames} frames "
              "meanwhile")
    return measured


def check_refused(measured: Measured, bound_mb: float) -> None:
    """The bound held, the reason names max_pixels and the declared size, the camera backed
    off between attempts, and the normal camera streamed on."""
    camera, ok = measured.camera, measured.ok
    assert measured.growth_mb <= bound_mb, (measured.growth_mb, measured.per_retry)
    assert camera["state"] == "unsupported", camera
    assert "max_pixels" in camera["reason"], camera
    assert f"{DECLARED[0]}x{DECLARED[1]}" in camera["reason"], camera
    # it backs off (auth_failure, 1 s here) between attempts: no tight retry loop
    assert measured.elapsed >= 0.8 * (RETRIES - 1), measured.elapsed
    assert ok["state"] == "streaming", ok
    assert measured.ok_frames >= 10 * measured.elapsed, measured  # 25 fps served


def test_a_camera_declaring_a_huge_picture_costs_little_and_is_refused_with_its_reason(
        tmp_path: Path) -> None:
    clip = ensure_declared_size_clip(media_cache_dir(), *DECLARED)
    measured = measure(clip, tmp_path, f"{DECLARED[0]}x{DECLARED[1]} declared")
    check_refused(measured, PROBE_BOUND_MB)
    assert measured.camera["frames_decoded"] == 0, measured.camera
    assert measured.logged == 1  # one log line for the refusal, not one per attempt


def test_a_camera_that_grows_after_the_probe_is_refused_by_the_decoder(tmp_path: Path) -> None:
    clip = ensure_growing_clip(media_cache_dir(), *DECLARED)
    measured = measure(clip, tmp_path, f"64x64, then {DECLARED[0]}x{DECLARED[1]} declared")
    check_refused(measured, DECODE_BOUND_MB)
    assert measured.camera["frames_decoded"] > 0, measured.camera  # the honest part
