"""GPU decode (issue 23): software against ``hwaccel: cuda``, and the forced fallbacks.

``bash bench/gpu.sh [N]`` on a host with an NVIDIA GPU (about 3 minutes at N=8, every wait
bounded). It checks the driver (nvidia-smi, libcuda.so.1 with ``cuInit``, libnvcuvid.so.1,
PyAV's ``cuda`` device type; without them it writes ``{"skipped": reason}`` and exits 77),
serves N 1080p25 H.264 and N H.265 test streams on loopback, and runs the daemon twice over
the same 2N cameras, ``hwaccel: none`` then ``cuda``: the decoded rate per camera from
``frames_decoded`` at both ends of the window, daemon CPU per camera from /proc (same daemon,
same work but the decoder, so the ratio is what NVDEC saves), nvidia-smi's load mid-window,
and one yuv420p frame per camera through a FIFO subscriber, whose size and format must match
between the legs and whose luma must equal the clip's frame (the clips carry their frame
index in the picture), which catches a GPU path that crops, pads or scrambles. Last, the
forced fallbacks: ``hwaccel_device: "99"`` streams in software and says why, and with
``hwaccel_required: true`` does not stream and does not reconnect in a loop.

``--cpu-rehearsal`` runs the same plumbing small and without a GPU: its "cuda" leg falls
back, so its CPU ratio is software against software and never held to the target.
``python -m bench.run gpu`` runs the full measurement as a benchmark; without a GPU it is
recorded as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import av.codec.hwaccel
import numpy as np
import yaml

from bench.common import (
    ROOT,
    BenchError,
    BenchResult,
    Check,
    Children,
    Context,
    cpu_seconds,
    fmt,
    info,
    ratio_check,
    value_check,
)
from bench.rtsp import Mount, media_cache_dir, server
from framebus.apiclient import request
from framebus.client import Subscriber
from framebus.testsrc.media import read_counter

LIMIT_S = 450  # bench.run's deadline for this benchmark; gpu.sh's outer timeout is 480 s
OUT_DEFAULT = ROOT / ".cache" / "bench" / "gpu.json"
FPS = 25
TOLERANCE = 0.05  # "full rate": within 5 % of FPS
CPU_TARGET = 0.3  # cuda CPU per camera <= 0.3x software
STREAM_TIMEOUT_S = 60.0  # 2N cameras connecting at once, CUDA contexts made per camera
SKIPPED_EXIT = 77  # automake's "skipped": a harness tells it from a failure


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big one run is."""

    n: int  # cameras per codec
    width: int
    height: int
    warmup_s: float  # after every camera streams, before the window
    window_s: float
    observe_s: float  # the fallback leg's look for a reconnect loop


FULL = Sizes(8, 1920, 1080, 5.0, 20.0, 12.0)
REHEARSAL = Sizes(2, 640, 360, 2.0, 5.0, 6.0)


def _run(args: list[str], timeout: float = 20.0) -> str:
    """A command's stdout; '' if it is missing, fails or hangs (a wedged driver hangs)."""
    if shutil.which(args[0]) is None:
        return ""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def driver() -> dict[str, Any]:
    """What this host offers for NVDEC; ``reason`` is None when everything is there."""
    found: dict[str, Any] = {"hwdevices": list(av.codec.hwaccel.hwdevices_available())}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    found["gpus"] = [line.strip() for line in smi.splitlines() if line.strip()]
    problems = [] if smi else ["nvidia-smi is missing or lists no GPU"]
    for lib in ("libcuda.so.1", "libnvcuvid.so.1"):
        try:
            handle = ctypes.CDLL(lib)
        except OSError as exc:
            problems.append(f"{lib} does not load ({exc})")
            continue
        if lib == "libcuda.so.1":  # loading is not enough: cuInit fails without a usable GPU
            count = ctypes.c_int(0)
            err = handle.cuInit(0) or handle.cuDeviceGetCount(ctypes.byref(count))
            found["cuda_devices"] = count.value
            if err:
                problems.append(f"cuInit/cuDeviceGetCount failed (CUresult {err})")
    if "cuda" not in found["hwdevices"]:
        problems.append("PyAV's FFmpeg has no cuda device type")
    found["reason"] = "; ".join(problems) or None
    return found


def nvidia_sample() -> dict[str, str]:
    """GPU and NVDEC load and which processes hold a CUDA context, now."""
    return {"gpu": _run(["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder,"
                         "memory.used", "--format=csv,noheader"], 10.0),
            "apps": _run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader"], 10.0)}


class Daemon:
    """``python -m framebus run`` with its API on a Unix socket (no TCP port to pick)."""

    def __init__(self, children: Children, workdir: Path, name: str,
                 cameras: dict[str, dict[str, Any]], subscribers: dict[str, dict[str, Any]]
                 ) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "api.sock"
        self.fifo_dir = self.dir / "fifos"
        config = {"fifo_dir": str(self.fifo_dir), "http": {"unix_socket": str(self.socket)},
                  "cameras": cameras, "subscribers": subscribers}
        (self.dir / "framebus.yaml").write_text(yaml.safe_dump(config))
        self.log = self.dir / "framebus.log"
        with open(self.log, "wb") as log:
            self.proc = children.popen(
                [sys.executable, "-m", "framebus", "run", "-c", str(self.dir / "framebus.yaml"),
                 "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 6) -> list[str]:
        """The log's last lines."""
        return self.log.read_text(errors="replace").splitlines()[-lines:]

    def alive(self) -> None:
        """BenchError with the log's tail if the daemon has exited."""
        if self.proc.poll() is not None:
            raise BenchError(f"daemon {self.dir.name} exited ({self.proc.returncode}): "
                             + " | ".join(self.tail()))

    def get(self, path: str) -> bytes:
        """A GET on the API (BenchError unless 200)."""
        status, body = request("GET", "http://localhost", str(self.socket), path, None, None,
                               5.0)
        if status != 200:
            raise BenchError(f"GET {path}: {status} {body[:200]!r}")
        return body

    def cameras(self) -> dict[str, dict[str, Any]]:
        """/v1/cameras by name."""
        return {c["name"]: c for c in json.loads(self.get("/v1/cameras"))["cameras"]}

    def metrics(self) -> list[str]:
        """The /metrics lines about decoders and fallbacks."""
        return [line for line in self.get("/metrics").decode().splitlines()
                if line.startswith(("framebus_camera_decoder", "framebus_camera_hwaccel"))]

    def sleep(self, seconds: float) -> None:
        """Sleep, checking every half second that the daemon still runs."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            self.alive()

    def wait(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Until the API answers and every named camera streams with a decoded frame."""
        end = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while time.monotonic() < end:
            self.sleep(0.5)
            if not self.socket.exists():
                continue
            seen = self.cameras()
            if all(seen[n]["state"] == "streaming" and seen[n]["frames_decoded"] for n in names):
                return seen
        states = {n: (c["state"], c["reason"]) for n, c in seen.items() if n in names}
        raise BenchError(f"{self.dir.name}: not every camera streaming after {timeout:g} s: "
                         f"{states} | {' | '.join(self.tail(3))}")


def read_frame(fifo: Path, refs: dict[int, np.ndarray]) -> dict[str, Any]:
    """One frame through a FIFO subscriber: size, format, and its luma against the clip's."""
    try:
        with Subscriber(fifo, timeout=5.0) as sub:  # 16 cameras: 80 s at worst
            frame = sub.read()
            if frame is None:
                return {"error": "EOF"}
            head = frame.header
            luma = frame.planes[0].copy()
    except (OSError, TimeoutError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    index = read_counter(luma)
    ref = refs.get(index)
    mae = None if ref is None or ref.shape != luma.shape else float(
        np.abs(luma.astype(np.int16) - ref.astype(np.int16)).mean())
    return {"width": head.width, "height": head.height, "format": str(head.format),
            "bytes": len(frame.payload), "index": index, "luma_mae": mae}


def references(clip: Path, frames: int) -> dict[int, np.ndarray]:
    """Every frame's luma of a clip, decoded here in software (the pixels both legs owe)."""
    refs: dict[int, np.ndarray] = {}
    with av.open(str(clip), format="hevc" if clip.suffix == ".h265" else "h264") as box:
        for i, decoded in enumerate(box.decode(video=0)):
            # the Y plane as decoded: a conversion to gray would stretch it to full range
            refs[i] = decoded.reformat(format="yuv420p").to_ndarray()[:decoded.height].copy()
            if i + 1 >= frames:
                break
    return refs


def leg(children: Children, workdir: Path, label: str, urls: dict[str, str],
        decode: dict[str, Any], sizes: Sizes, refs: dict[str, dict[int, np.ndarray]],
        gpu: bool) -> dict[str, Any]:
    """One daemon over every camera with ``decode`` settings: rates, CPU, frames.

    ``refs``: per camera, the luma planes of the clip it serves, by frame index."""
    cams = {n: {"url": u, "idle_decode": "all", **decode} for n, u in urls.items()}
    # max_fps 1: the subscriber's conversion costs the same little on both legs
    subs = {f"{n}-frame": {"camera": n, "format": "yuv420p", "max_fps": 1.0} for n in urls}
    daemon = Daemon(children, workdir, label, cams, subs)
    daemon.wait(list(urls), STREAM_TIMEOUT_S)
    daemon.sleep(sizes.warmup_s)
    before, cpu0, t0 = daemon.cameras(), cpu_seconds(daemon.proc.pid), time.monotonic()
    daemon.sleep(sizes.window_s / 2)
    sample = nvidia_sample() if gpu else {}
    daemon.sleep(sizes.window_s / 2)
    after, cpu1, t1 = daemon.cameras(), cpu_seconds(daemon.proc.pid), time.monotonic()
    seconds = t1 - t0
    cameras: dict[str, Any] = {}
    for name in urls:
        cam = after[name]
        fps = (cam["frames_decoded"] - before[name]["frames_decoded"]) / seconds
        cameras[name] = {
            "fps": round(fps, 2), "api_fps": cam["fps"], "full_rate": full_rate(fps),
            "state": cam["state"], "codec": cam["codec"], "width": cam["width"],
            "height": cam["height"], "decoder": cam.get("decoder"),
            "hwaccel": cam.get("hwaccel"),
            "frame": read_frame(daemon.fifo_dir / f"{name}-frame.fifo", refs[name])}
    cores = (cpu1 - cpu0) / seconds
    return {"cameras": cameras, "daemon_cores": cores, "cores_per_camera": cores / len(urls),
            "window_s": seconds, "nvidia_smi": sample, "pid": daemon.proc.pid,
            "metrics": daemon.metrics(), "log_tail": daemon.tail()}


def full_rate(fps: float) -> bool:
    """Decoded at the stream's rate (within TOLERANCE)."""
    return abs(fps - FPS) <= FPS * TOLERANCE


def fallback_leg(children: Children, workdir: Path, url: str, sizes: Sizes) -> dict[str, Any]:
    """``hwaccel_device: "99"``: falls back visibly; with ``hwaccel_required`` it refuses."""
    bad = {"url": url, "hwaccel": "cuda", "hwaccel_device": "99", "idle_decode": "all"}
    daemon = Daemon(children, workdir, "fallback", {
        "soft": bad, "required": {**bad, "hwaccel_required": True}}, {})
    daemon.wait(["soft"], STREAM_TIMEOUT_S)
    before, t0 = daemon.cameras(), time.monotonic()
    daemon.sleep(sizes.observe_s)
    after, seconds = daemon.cameras(), time.monotonic() - t0
    soft, req = after["soft"], after["required"]
    return {
        "soft": {"state": soft["state"], "decoder": soft.get("decoder"),
                 "hwaccel": soft.get("hwaccel"), "fps": round((
                     soft["frames_decoded"] - before["soft"]["frames_decoded"]) / seconds, 2)},
        "required": {"state": req["state"], "reason": req["reason"],
                     "decoder": req.get("decoder"), "hwaccel": req.get("hwaccel"),
                     "frames_decoded": req["frames_decoded"],
                     "reconnects_in_window": sum(req["reconnects"].values())
                     - sum(before["required"]["reconnects"].values())},
        "observe_s": round(seconds, 1),
        "metrics": daemon.metrics(), "log_tail": daemon.tail()}


def measure(workdir: Path, sizes: Sizes, gpu: bool) -> dict[str, Any]:
    """Every leg, one server for all; a leg that fails is recorded with its error."""
    mounts = [Mount(f"{codec}-{i}", codec=codec, width=sizes.width, height=sizes.height,
                    fps=FPS, seconds=4.0, gop=50)
              for codec in ("h264", "h265") for i in range(sizes.n)]
    data: dict[str, Any] = {}
    children = Children()
    srv = server(mounts)
    try:
        urls = {m.name: srv.url(m.name) for m in mounts}
        clips = {m.codec: m.clip(media_cache_dir()) for m in mounts}  # one clip per codec
        per_codec = {codec: references(path, FPS * 4) for codec, path in clips.items()}
        refs = {m.name: per_codec[m.codec] for m in mounts}
        for label, decode in (("software", {"hwaccel": "none"}), ("cuda", {"hwaccel": "cuda"})):
            try:
                data[label] = leg(children, workdir, label, urls, decode, sizes, refs, gpu)
            except BenchError as exc:
                data[label] = {"error": str(exc)}
            finally:
                children.close()
        try:
            data["fallback"] = fallback_leg(children, workdir, urls["h264-0"], sizes)
        except BenchError as exc:
            data["fallback"] = {"error": str(exc)}
    finally:
        children.close()
        srv.close()
    return data


def result_of(data: dict[str, Any], sizes: Sizes, claim: bool) -> BenchResult:
    """Checks and a table from what ``measure`` found; GPU targets only when ``claim``."""
    res = BenchResult("gpu", f"GPU decode: {sizes.n} H.264 + {sizes.n} H.265 cameras "
                      f"{sizes.width}x{sizes.height}@{FPS}, software vs hwaccel: cuda")
    total = 2 * sizes.n
    missing = {"error": data.get("error", "not run")}
    sw, cu, fb = (data.get(k, missing) for k in ("software", "cuda", "fallback"))
    res.table.append(["leg", "cameras at full rate", "min fps", "daemon cores",
                      "cores per camera", "decoding on cuda"])
    for label, part in (("software", sw), ("cuda", cu)):
        if "error" in part:
            res.notes.append(f"{label} leg failed: {part['error']}")
            continue
        cams = part["cameras"].values()
        res.table.append([label, f"{sum(c['full_rate'] for c in cams)} / {total}",
                          fmt(min(c["fps"] for c in cams), 1), fmt(part["daemon_cores"], 3),
                          fmt(part["cores_per_camera"], 4),
                          str(sum(active(c) == "cuda" for c in cams))])
        res.checks.append(value_check(f"{label}: cameras decoded at {FPS} fps (+-5 %)",
                                      sum(c["full_rate"] for c in cams), "cameras", ">=", total))
    if "error" not in sw and "error" not in cu:
        on_gpu = sum(active(c) == "cuda" for c in cu["cameras"].values())
        args = ("CPU per camera, cuda vs software", cu["cores_per_camera"], "cores",
                sw["cores_per_camera"], "hwaccel: none, same cameras")
        if claim and on_gpu == total:
            res.checks.append(ratio_check(*args, "<=", CPU_TARGET))
        else:  # a fallen-back camera decodes in software: no GPU figure to hold to a target
            res.checks.append(info(*args))
            res.notes.append(f"CPU ratio not held to <= {CPU_TARGET}x: {on_gpu} of {total} "
                             "cameras decoded on cuda" + ("" if claim else " (no GPU claimed)"))
        if claim:
            res.checks.append(value_check("cameras decoding on cuda (hwaccel.active)", on_gpu,
                                          "cameras", ">=", total))
        same = [n for n, c in sw["cameras"].items()
                if frame_key(c) is not None and frame_key(c) == frame_key(cu["cameras"][n])]
        res.checks.append(value_check("frames of the same size and format on both legs",
                                      len(same), "cameras", ">=", total))
        maes = [c["frame"].get("luma_mae") for p in (sw, cu) for c in p["cameras"].values()]
        worst = max((m for m in maes if m is not None), default=float("nan"))
        res.checks.append(value_check("frames matching the clip's luma (worst mean abs diff)",
                                      worst if None not in maes else float("nan"), "levels",
                                      "<=", 1.0))
    if "error" in fb:
        res.notes.append(f"fallback leg failed: {fb['error']}")
        res.checks.append(Check("forced fallback leg ran", 0, "", met=False))
    else:
        soft, req = fb["soft"], fb["required"]
        reason = (soft.get("hwaccel") or {}).get("fallback")
        res.checks.append(Check("hwaccel_device 99: streams in software, fallback reason shown",
                                soft["fps"], "fps", met=soft["state"] == "streaming"
                                and full_rate(soft["fps"]) and bool(reason)))
        res.checks.append(Check("hwaccel_required with device 99: not streaming",
                                req["frames_decoded"], "frames", met=req["state"] != "streaming"
                                and not req["frames_decoded"]))
        res.checks.append(value_check(f"hwaccel_required: reconnects in {fb['observe_s']} s",
                                      req["reconnects_in_window"], "reconnects", "<=", 1))
        res.notes.append(f"fallback reason: {reason!r}; required camera: {req['state']} "
                         f"({req['reason']})")
    res.details = data
    return res


def active(camera: dict[str, Any]) -> str | None:
    """The device a camera decodes on (None: software, or an API without the field)."""
    hw = camera.get("hwaccel")
    return hw.get("active") if isinstance(hw, dict) else None


def frame_key(camera: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must match between legs: the received frame's size, format and byte count."""
    frame = camera.get("frame", {})
    return None if "error" in frame else (frame["width"], frame["height"], frame["format"],
                                          frame["bytes"])


def run(ctx: Context) -> BenchResult:
    """For ``python -m bench.run gpu``: the full run, or a skipped result without a GPU."""
    found = driver()
    if found["reason"]:
        res = BenchResult("gpu", "GPU decode: skipped, no NVIDIA GPU/driver")
        res.notes.append(f"skipped: no NVIDIA GPU/driver here ({found['reason']}); nothing "
                         "measured. Run bash bench/gpu.sh on a GPU host.")
        res.details = {"skipped": found["reason"], "driver": found}
        return res
    data = measure(ctx.workdir, FULL, gpu=True)
    res = result_of(data, FULL, claim=True)
    res.details = {"driver": found, "sizes": dataclasses.asdict(FULL), **data}
    return res


def main(argv: list[str] | None = None) -> int:
    """``bash bench/gpu.sh [N] [--cpu-rehearsal] [--out PATH]``."""
    from bench.run import BenchTimeout, deadline, scratch_dir, show

    parser = argparse.ArgumentParser(prog="bash bench/gpu.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, help="cameras per codec (default 8; 2 "
                        "with --cpu-rehearsal)")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="no GPU needed: small sizes, the cuda leg falls back")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT, help="figures as JSON")
    args = parser.parse_args(argv)
    found = driver()
    print(f"driver: {', '.join(found['gpus']) or 'no GPU'}; cuda devices "
          f"{found.get('cuda_devices', '-')}; PyAV hwdevices {found['hwdevices']}")
    out: dict[str, Any] = {"driver": found, "mode": "cpu-rehearsal" if args.cpu_rehearsal
                           else "gpu", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    code = 0
    if found["reason"] and not args.cpu_rehearsal:
        print(f"SKIPPED: no NVIDIA GPU/driver: {found['reason']}. Nothing measured "
              "(--cpu-rehearsal rehearses the script without one).")
        out["skipped"] = found["reason"]
        code = SKIPPED_EXIT
    else:
        sizes = REHEARSAL if args.cpu_rehearsal else FULL
        sizes = dataclasses.replace(sizes, n=args.n or sizes.n)
        claim = found["reason"] is None and not args.cpu_rehearsal
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="framebus-gpu-", dir=scratch_dir()) as work:
            try:
                with deadline(LIMIT_S):
                    data = measure(Path(work), sizes, gpu=found["reason"] is None)
            except (BenchError, BenchTimeout) as exc:
                data = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                Children.close_all()
        res = result_of(data, sizes, claim)
        res.seconds = time.monotonic() - start
        if not claim:
            res.notes.append("rehearsal: no GPU figure here (the cuda leg fell back or the "
                             "sizes are small); the plumbing is what was checked")
        show(res)
        out |= {"sizes": dataclasses.asdict(sizes), "gpu_figures": claim,
                "checks": [c.to_json() for c in res.checks], "notes": res.notes, **data}
        failed = "error" in data or any(c.met is False for c in res.checks)
        code = 1 if failed else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
