"""Benchmark 8, across hosts: framebus's zenoh bridge against ZeroMQ over a veth pair.

Two network namespaces on one switch (:func:`framebus.testsrc.netns.hosts`): ``cam`` runs
the daemon (camera ``gen``: flat 1280x720 frames from lavfi, exported as native nv12) and
``framebus bridge`` listening on the veth; ``gpu`` runs the consumers, each its own process
(:mod:`bench.remote_procs`).

* Max rate: the camera unpaced (lavfi as fast as it draws), 1 and 4 framebus remote
  consumers, against imagezmq's way of doing it: one process decoding the same source,
  converting to nv12 and sending each frame on a ZeroMQ PUB socket over TCP on the same veth
  to 1 and 4 SUB processes (default high-water marks, so ZeroMQ queues where framebus drops).
* Paced 25 fps: bridge CPU per exported stream (one fast remote consumer) against a bare
  zenoh put loop of the same frames at 25 fps with the bridge's publisher settings; a local
  shm reader's delivered fraction while the bridge exports; then a slow remote consumer
  (200 ms a frame): its frame age p99 against 2 frame intervals + one transfer (the fast
  consumer's median age), beside ZeroMQ's age with a slow SUB (which grows with the queue).

Needs root (``ip netns``); the result says why when it cannot run.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    BenchError,
    BenchResult,
    Children,
    Context,
    Recorder,
    Samples,
    collect,
    end_processes,
    fmt,
    info,
    measure,
    percentile,
    ratio_check,
    ratio_text,
    sched_seconds,
    value_check,
    wait_first,
)
from framebus.testsrc import netns

LIMIT_S = 300
FPS = 25
SLOW_SLEEP_S = 0.2
WINDOW_S = 8.0
SETTLE_S = 1.0
PORT, ZMQ_PORT = 7447, 5555
# every pixel of frame N at one level (cheap to draw at 720p: drawn small, scaled flat)
FLAT = ("lavfi:color=c=black:s=160x90:r=25,geq=lum='mod(N*37\\,256)':cb=128:cr=128,"
        "scale=1280:720:flags=neighbor")
PACED = FLAT + ",realtime"
FRAME_BYTES = 1280 * 720 * 3 // 2


@dataclass
class Flow:
    """What the consumers of one case got inside the window."""

    samples: list[Samples]
    seconds: float

    @property
    def fps_each(self) -> float:
        """Mean frames/s per consumer."""
        return statistics.fmean(s.frames for s in self.samples) / self.seconds

    def ages_ms(self) -> list[float]:
        """Every frame's age at its consumer, ms."""
        return [age / 1e6 for s in self.samples for age in s.latency]

    def age(self, q: float) -> float:
        """An age percentile, ms."""
        return percentile(self.ages_ms(), q)


class Site:
    """The camera host: the daemon and ``framebus bridge`` in ``cam``."""

    def __init__(self, children: Children, workdir: Path, cam: netns.Host, url: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.fifo_dir = workdir / "run"
        self.fifo_dir.mkdir(exist_ok=True)
        config = {
            "fifo_dir": str(self.fifo_dir),
            "http": {"listen": "127.0.0.1:0", "unix_socket": str(self.fifo_dir / "ctl.sock")},
            "cameras": {"gen": {"url": url, "remote": [{"name": "hd", "format": "nv12"}]}},
            "subscribers": {"local": {"camera": "gen", "transport": "shm"}},
            "remote": {"host": "cam", "listen": [f"tcp/{cam.address}:{PORT}"],
                       "metrics_listen": "127.0.0.1:8471"},
        }
        path = workdir / "framebus.yaml"
        path.write_text(yaml.safe_dump(config))
        self.logs = [workdir / "daemon.log", workdir / "bridge.log"]
        self.procs: list[subprocess.Popen[Any]] = []
        for command, log_path in zip(("run", "bridge"), self.logs, strict=True):
            with open(log_path, "wb") as log:
                self.procs.append(children.popen(
                    cam.argv(sys.executable, "-m", "framebus", command, "-c", str(path),
                             "--log-level", "WARNING"), stdout=log, stderr=subprocess.STDOUT))

    @property
    def daemon_pid(self) -> int:
        """The daemon's pid (``ip netns exec`` execs, so it is python's)."""
        return self.procs[0].pid

    @property
    def bridge_pid(self) -> int:
        """The bridge's pid."""
        return self.procs[1].pid

    def alive(self) -> None:
        """BenchError with the log's tail if the daemon or the bridge has exited."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-6:]
                raise BenchError(f"{log.stem} exited ({proc.returncode}): " + " | ".join(tail))

    def stop(self) -> None:
        """End both: SIGTERM to the bridge, then the daemon; SIGKILL to either left after 5 s."""
        end_processes(reversed(self.procs), grace=5.0)


def _proc(children: Children, host: netns.Host, name: str, *args: str) -> Recorder:
    return Recorder(children, name, list(args), module="bench.remote_procs",
                    prefix=host.argv())


def _window(ctx: Context, recorders: list[Recorder], alive: Callable[[], None],
            pids: dict[str, int] | None = None) -> tuple[Flow, dict[str, float]]:
    """Wait for every first frame, settle, measure; the samples inside the window and the
    CPU cores each of ``pids`` used (schedstat: a 25 fps stream costs a few percent of a core,
    where 10 ms ticks vary by a third between runs)."""
    pids = pids or {}
    wait_first(recorders, 60.0, alive)
    time.sleep(SETTLE_S)
    cpu0 = {name: sched_seconds(pid) for name, pid in pids.items()}
    win = measure(ctx.seconds(WINDOW_S), {}, alive)
    cores = {name: (sched_seconds(pid) - cpu0[name]) / win.seconds for name, pid in pids.items()}
    samples = [s.window(win.t0, win.t1) for s in collect(recorders)]
    return Flow(samples, win.seconds), cores


@contextlib.contextmanager
def _site(children: Children, ctx: Context, cam: netns.Host, url: str,
          label: str) -> Iterator[Site]:
    site = Site(children, ctx.workdir / label, cam, url)
    try:
        yield site
    finally:
        site.stop()


def _consumer_cores(recs: list[Recorder], pids: dict[str, int]) -> dict[str, int]:
    return {**pids, **{f"consumer{i}": rec.pid for i, rec in enumerate(recs)}}


def _sum_consumers(cores: dict[str, float]) -> dict[str, float]:
    """Per-process cores with the consumers summed into one figure."""
    out = {k: v for k, v in cores.items() if not k.startswith("consumer")}
    out["consumers"] = sum(v for k, v in cores.items() if k.startswith("consumer"))
    return out


def framebus_max(ctx: Context, cam: netns.Host,
                 gpu: netns.Host) -> tuple[dict[int, Flow], dict[int, dict[str, float]]]:
    """Unpaced camera, 1 then 4 remote consumers: flows and cores per process."""
    flows, cores = {}, {}
    with Children() as children, _site(children, ctx, cam, FLAT, "max") as site:
        for n in (1, 4):
            recs = [_proc(children, gpu, f"fb{n}-{i}", "remote", "zenoh:cam/gen/hd",
                          "--connect", f"tcp/{cam.address}:{PORT}") for i in range(n)]
            flows[n], used = _window(ctx, recs, site.alive, _consumer_cores(
                recs, {"daemon": site.daemon_pid, "bridge": site.bridge_pid}))
            cores[n] = _sum_consumers(used)
    return flows, cores


def zmq_max(ctx: Context, cam: netns.Host, gpu: netns.Host, source: str = FLAT,
            readers: int = 1, sleep: float = 0.0) -> tuple[Flow, Flow, dict[str, float]]:
    """imagezmq's way: (the sender's own samples, what the SUB processes got, cores)."""
    endpoint = f"tcp://{cam.address}:{ZMQ_PORT}"
    with Children() as children:
        subs = [_proc(children, gpu, f"zmq-sub{i}", "zmq-sub", endpoint, "--sleep", str(sleep))
                for i in range(readers)]
        pub = _proc(children, cam, "zmq-pub", "zmq-pub", f"tcp://*:{ZMQ_PORT}",
                    "--source", source)

        def alive() -> None:
            if pub.proc.poll() is not None:
                raise BenchError("zmq-pub exited: " + " | ".join(pub.lines[-5:]))

        flow, used = _window(ctx, [*subs, pub], alive,
                             _consumer_cores(subs, {"sender": pub.pid}))
    return (Flow(flow.samples[-1:], flow.seconds), Flow(flow.samples[:-1], flow.seconds),
            _sum_consumers(used))


def framebus_paced(ctx: Context, cam: netns.Host,
                   gpu: netns.Host) -> tuple[Flow, Flow, Flow, dict[str, float]]:
    """25 fps: (fast remote, local shm reader, slow remote, cores of bridge and daemon)."""
    with Children() as children, _site(children, ctx, cam, PACED, "paced") as site:
        fifo = site.fifo_dir / "local.fifo"
        deadline = time.monotonic() + 30
        while not fifo.exists():
            site.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{fifo} did not appear")
            time.sleep(0.05)
        connect = f"tcp/{cam.address}:{PORT}"
        local = Recorder(children, "local", ["fb", str(fifo)], prefix=cam.argv())
        fast = _proc(children, gpu, "fast", "remote", "zenoh:cam/gen/hd", "--connect", connect)
        flow, cores = _window(ctx, [fast, local], site.alive,
                              {"bridge": site.bridge_pid, "daemon": site.daemon_pid})
        slow = _proc(children, gpu, "slow", "remote", "zenoh:cam/gen/hd", "--connect", connect,
                     "--sleep", str(SLOW_SLEEP_S))
        slow_flow, _ = _window(ctx, [slow], site.alive)
    return (Flow(flow.samples[:1], flow.seconds), Flow(flow.samples[1:], flow.seconds),
            slow_flow, cores)


def bare_put(ctx: Context, cam: netns.Host, gpu: netns.Host) -> tuple[Flow, float]:
    """The bare zenoh put loop at 25 fps to one subscriber: (received, loop's cores)."""
    with Children() as children:
        put = _proc(children, cam, "zenoh-put", "zenoh-put", f"tcp/{cam.address}:{PORT}",
                    "--source", FLAT, "--fps", str(FPS))
        sub = _proc(children, gpu, "zenoh-sub", "zenoh-sub", f"tcp/{cam.address}:{PORT}")

        def alive() -> None:
            if put.proc.poll() is not None:
                raise BenchError("zenoh-put exited: " + " | ".join(put.lines[-5:]))

        wait_first([put], 60.0, alive)
        flow, cores = _window(ctx, [sub, put], alive, {"put": put.pid})
    return Flow(flow.samples[:1], flow.seconds), cores["put"]


def _ms_per_frame(cores: dict[str, float], flow: Flow) -> dict[str, float]:
    """CPU ms each process spent per frame one consumer received (the profile of a max-rate
    case: where the cores went)."""
    fps = flow.fps_each
    return {name: used * 1000 / fps if fps else float("nan") for name, used in cores.items()}


def _pool(first: Flow, second: Flow) -> Flow:
    """Two runs of one case (equal windows) as one: per-consumer rates are their mean."""
    return Flow(first.samples + second.samples, (first.seconds + second.seconds) / 2)


def _growth_ms_per_s(samples: Samples) -> float:
    """How fast a consumer's frame age grows (least squares slope), ms per second."""
    if len(samples.t) < 2:
        return float("nan")
    xs = [t / 1e9 for t in samples.t]
    ys = [a / 1e6 for a in samples.latency]
    return statistics.linear_regression(xs, ys).slope


def run(ctx: Context) -> BenchResult:
    """Every case in two namespaces; ZeroMQ right next to the framebus case it is held to."""
    reason = netns.unavailable_reason()
    if reason is not None:
        raise BenchError(f"needs network namespaces: {reason}")
    result = BenchResult("remote", "Across hosts: zenoh bridge vs ZeroMQ over a veth pair "
                         "(720p nv12)")
    with netns.hosts(2) as (cam, gpu):
        gpu.wait_reachable(cam.address)
        # each baseline runs before and after the framebus case it is held to, and the two
        # are pooled: a change in the machine's load during the run moves both sides
        before = {n: zmq_max(ctx, cam, gpu, readers=n) for n in (1, 4)}
        fb, fb_cores = framebus_max(ctx, cam, gpu)
        after = {n: zmq_max(ctx, cam, gpu, readers=n) for n in (1, 4)}
        bare_before = bare_put(ctx, cam, gpu)
        fast, local, slow, cores = framebus_paced(ctx, cam, gpu)
        bare_after = bare_put(ctx, cam, gpu)
        _, zmq_slow, _ = zmq_max(ctx, cam, gpu, PACED, sleep=SLOW_SLEEP_S)
    zmq_sent = _pool(before[1][0], after[1][0])
    zmq = {n: _pool(before[n][1], after[n][1]) for n in (1, 4)}
    zmq_cores = {n: {k: (before[n][2][k] + after[n][2][k]) / 2 for k in before[n][2]}
                 for n in (1, 4)}
    bare = _pool(bare_before[0], bare_after[0])
    put_cores = (bare_before[1] + bare_after[1]) / 2
    result.table.append(["case", "consumers", "frames/s each", "vs ZeroMQ", "age p50 ms",
                         "age p99 ms", "ZeroMQ age p50 ms", "ZeroMQ age p99 ms"])
    for n in (1, 4):
        result.table.append([
            "max rate", str(n), fmt(fb[n].fps_each, 1),
            ratio_text(fb[n].fps_each / zmq[n].fps_each if zmq[n].fps_each else None),
            fmt(fb[n].age(50), 1), fmt(fb[n].age(99), 1), fmt(zmq[n].age(50), 1),
            fmt(zmq[n].age(99), 1)])
        result.checks.append(ratio_check(
            f"max rate, {n} remote consumer{'s' if n > 1 else ''}", fb[n].fps_each,
            "frames/s each", zmq[n].fps_each, f"ZeroMQ PUB/SUB over TCP, {n} SUB", ">=", 1.0))
    transfer_ms = fast.age(50)
    limit_ms = 2 * 1000 / FPS + transfer_ms
    result.table.append(["25 fps, fast", "1", fmt(fast.fps_each, 1), "-", fmt(fast.age(50), 1),
                         fmt(fast.age(99), 1), "-", "-"])
    result.table.append(["25 fps, slow (200 ms/frame)", "1", fmt(slow.fps_each, 1),
                         ratio_text(slow.fps_each / zmq_slow.fps_each
                                    if zmq_slow.fps_each else None),
                         fmt(slow.age(50), 1), fmt(slow.age(99), 1), fmt(zmq_slow.age(50), 1),
                         fmt(zmq_slow.age(99), 1)])
    result.checks.append(value_check(
        "slow consumer (200 ms a frame), age p99", slow.age(99), "ms", "<=", round(limit_ms, 1),
        zmq_slow.age(99), "ZeroMQ slow SUB, age p99"))
    zmq_growth = _growth_ms_per_s(zmq_slow.samples[0])
    result.checks.append(info("ZeroMQ slow SUB, age growth", zmq_growth, "ms/s"))
    result.checks.append(ratio_check(
        "bridge CPU per exported 25 fps 720p stream", cores["bridge"], "cores", put_cores,
        "bare zenoh put loop, same frames", "<=", 1.2))
    delivered = local.samples[0].frames / max(1, local.samples[0].expected()) * 100
    result.checks.append(value_check("local shm reader delivered while exporting", delivered,
                                     "%", ">=", 99.5))
    result.details = {
        "frame_bytes": FRAME_BYTES, "transfer_ms": transfer_ms, "limit_ms": limit_ms,
        "zeromq_sender_fps": zmq_sent.fps_each, "bridge_cores": cores["bridge"],
        "daemon_cores": cores["daemon"], "put_cores": put_cores,
        "bare_put_received_fps": bare.fps_each, "zeromq_slow_growth_ms_per_s": zmq_growth,
        "local_delivered_pct": delivered,
        **{f"max_rate_x{n}": {
            "framebus_fps_each": fb[n].fps_each, "zeromq_fps_each": zmq[n].fps_each,
            "framebus_cores": fb_cores[n], "zeromq_cores": zmq_cores[n],
            "framebus_cpu_ms_per_frame": _ms_per_frame(fb_cores[n], fb[n]),
            "zeromq_cpu_ms_per_frame": _ms_per_frame(zmq_cores[n], zmq[n])} for n in (1, 4)},
    }
    result.notes.append(
        f"{ctx.seconds(WINDOW_S):g} s window per case after {SETTLE_S:g} s; two namespaces on "
        "one veth switch, 2 cores shared by every process; ages are wall clock at the "
        "consumer minus the frame's capture wall clock (one clock: same kernel). The "
        "framebus path is daemon (decode, nv12, shm) -> bridge (copy, zenoh put) -> consumer; "
        "ZeroMQ's is one process that decodes and sends (imagezmq's send_image), default "
        "HWM 1000 per socket. ZeroMQ max-rate cases and the bare put loop run before and "
        "after the framebus cases and are pooled. CPU from schedstat (ns). Transfer time "
        "for the slow-consumer limit = the fast consumer's "
        f"median age at 25 fps ({fmt(transfer_ms, 1)} ms).")
    return result
