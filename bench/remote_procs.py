"""The processes of the across-hosts benchmark (:mod:`bench.remote`):
``python -m bench.remote_procs KIND ...``, each run inside a network namespace.

Like :mod:`bench.procs`, each records one sample per frame (CLOCK_MONOTONIC ns, seq, age,
bytes), prints ``{"first": t}`` at its first and all samples on SIGUSR1. The age is the wall
clock at the consumer minus the frame's capture wall clock (the namespaces share one clock).

``remote TARGET --connect EP [--sleep S]``
    a framebus remote consumer (:class:`framebus.remote.RemoteSubscriber`), sleeping ``S``
    seconds after each frame when asked (a slow consumer).
``zmq-pub ENDPOINT --source URL``
    an imagezmq-style sender: decodes ``URL`` with PyAV, converts each frame to an nv12
    ndarray and sends it on a ZeroMQ PUB socket bound to ``ENDPOINT`` (imagezmq's
    ``send_image``: a JSON part with the metadata, then the array, zero-copy; default HWM).
``zmq-sub ENDPOINT [--sleep S]``
    imagezmq's ``ImageHub`` in PUB/SUB mode: a SUB socket with default HWM receiving both
    parts.
``zenoh-put ENDPOINT --source URL --fps F``
    the bare zenoh put loop: the first 25 frames of ``URL``, converted to nv12 once, put on
    ``bench/bare`` ``F`` times a second by a publisher configured as the bridge's is.
``zenoh-sub ENDPOINT``
    a bare zenoh subscriber of ``bench/bare``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import numpy as np

from bench.procs import Log, run_recorded

BARE_KEY = "bench/bare"
ATTACHMENT = bytes(256)  # about the bridge's attachment (prefix + header)


def nv12_frames(url: str) -> Iterator[tuple[int, np.ndarray]]:
    """(capture wall clock ns, nv12 array) of each frame ``url`` decodes, as it decodes."""
    import av

    if url.startswith("lavfi:"):
        container = av.open(url.removeprefix("lavfi:"), format="lavfi")
    else:
        container = av.open(url)
    with container:
        for frame in container.decode(video=0):
            yield time.time_ns(), frame.reformat(format="nv12").to_ndarray()


def remote(target: str, connect: str, sleep: float, log: Log) -> None:
    """Read a camera across hosts with framebus.remote."""
    from framebus.remote.cli_support import parse_target
    from framebus.remote.consumer import RemoteSubscriber
    from framebus.remote.settings import RemoteConfig

    host, camera, rendition = parse_target(target)
    config = RemoteConfig(connect=[connect])
    with RemoteSubscriber(camera, host=host, rendition=rendition, config=config) as sub:
        while True:
            frame = sub.read(timeout=None)
            if frame is None:
                return
            header = frame.header
            log.add(time.monotonic_ns(), header.seq, time.time_ns() - header.capture_time_ns,
                    len(frame.payload))
            if sleep:
                time.sleep(sleep)


def zmq_pub(endpoint: str, source: str, log: Log) -> None:
    """Send every decoded frame, imagezmq's way."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    try:
        for seq, (capture_ns, array) in enumerate(nv12_frames(source), 1):
            sock.send_json({"seq": seq, "t": capture_ns, "dtype": str(array.dtype),
                            "shape": array.shape}, zmq.SNDMORE)
            sock.send(array.data, copy=False)
            log.add(time.monotonic_ns(), seq, 0, array.nbytes)
    finally:
        sock.close(0)
        context.term()


def zmq_sub(endpoint: str, sleep: float, log: Log) -> None:
    """Receive frames, imagezmq's way (default high-water marks: ZeroMQ queues)."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        while True:
            meta = cast("dict[str, Any]", sock.recv_json())  # pyzmq types it as a JSON union
            data = sock.recv(copy=False)
            np.frombuffer(data.buffer, dtype=meta["dtype"]).reshape(meta["shape"])
            log.add(time.monotonic_ns(), meta["seq"], time.time_ns() - meta["t"],
                    len(data.buffer))
            if sleep:
                time.sleep(sleep)
    finally:
        sock.close(0)
        context.term()


def zenoh_put(endpoint: str, source: str, fps: float, log: Log) -> None:
    """Put ready-made frames at ``fps``, as bare as zenoh gets from Python."""
    from framebus.remote.session import import_zenoh, zenoh_config
    from framebus.remote.settings import RemoteConfig

    zenoh = import_zenoh()
    frames = []
    for _, array in nv12_frames(source):
        frames.append(array.tobytes())
        if len(frames) == 25:
            break
    session = zenoh.open(zenoh_config(RemoteConfig(listen=[endpoint]), publisher=True))
    publisher = session.declare_publisher(BARE_KEY,
                                          congestion_control=zenoh.CongestionControl.DROP)
    interval = 1.0 / fps
    next_at = time.monotonic()
    seq = 0
    try:
        while True:
            seq += 1
            payload = frames[seq % len(frames)]
            publisher.put(payload, attachment=ATTACHMENT)
            log.add(time.monotonic_ns(), seq, 0, len(payload))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        publisher.undeclare()
        session.close()


def zenoh_sub(endpoint: str, log: Log) -> None:
    """Count what the bare put loop sends."""
    from framebus.remote.session import import_zenoh, zenoh_config
    from framebus.remote.settings import RemoteConfig

    zenoh = import_zenoh()
    session = zenoh.open(zenoh_config(RemoteConfig(connect=[endpoint])))
    seq = [0]

    def on_sample(sample: Any) -> None:
        seq[0] += 1
        log.add(time.monotonic_ns(), seq[0], 0, len(sample.payload))

    subscriber = session.declare_subscriber(BARE_KEY, on_sample)
    try:
        threading.Event().wait()
    finally:
        subscriber.undeclare()
        session.close()


def main(argv: list[str] | None = None) -> int:
    """Run one process until SIGUSR1, then print its samples."""
    parser = argparse.ArgumentParser(prog="python -m bench.remote_procs")
    sub = parser.add_subparsers(dest="kind", required=True)
    rem = sub.add_parser("remote")
    rem.add_argument("target")
    rem.add_argument("--connect", required=True)
    rem.add_argument("--sleep", type=float, default=0.0)
    pub = sub.add_parser("zmq-pub")
    pub.add_argument("endpoint")
    pub.add_argument("--source", required=True)
    zsub = sub.add_parser("zmq-sub")
    zsub.add_argument("endpoint")
    zsub.add_argument("--sleep", type=float, default=0.0)
    put = sub.add_parser("zenoh-put")
    put.add_argument("endpoint")
    put.add_argument("--source", required=True)
    put.add_argument("--fps", type=float, required=True)
    zen = sub.add_parser("zenoh-sub")
    zen.add_argument("endpoint")
    args = parser.parse_args(argv)


    def work(log: Log) -> None:
        if args.kind == "remote":
            remote(args.target, args.connect, args.sleep, log)
        elif args.kind == "zmq-pub":
            zmq_pub(args.endpoint, args.source, log)
        elif args.kind == "zmq-sub":
            zmq_sub(args.endpoint, args.sleep, log)
        elif args.kind == "zenoh-put":
            zenoh_put(args.endpoint, args.source, args.fps, log)
        else:
            zenoh_sub(args.endpoint, log)

    return run_recorded(work)


if __name__ == "__main__":
    sys.exit(main())
