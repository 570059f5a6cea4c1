"""A consumer process for the remote tests: reads a camera on another host (``--remote``,
through framebus.remote) or a local FIFO (``--fifo``, through framebus.client) and prints one
JSON line per frame, so the test can check rate, seq/missed, age and pixels from outside.

    python remote_reader_proc.py --remote zenoh:HOST/CAMERA/RENDITION --connect tcp/A:7447
    python remote_reader_proc.py --fifo /run/.../local.fifo [--sleep 0.2]

Each frame: ``{"seq", "missed", "age_ms", "uniform", "intact", "instance", "epoch", "w", "h",
"t"}``; ``age_ms`` is the wall clock now minus the header's capture clock; ``uniform`` is
True when every luma and every chroma byte of the frame has one value (the tests' cameras
draw flat frames whose level changes every frame, so a torn frame has two). Events (restart,
camera states) print ``{"ev": kind}``. First line ``{"ev": "open"}``. Exits on stdin EOF.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np

from framebus.client import Subscriber
from framebus.reading import Frame, StreamEvent

_lock = threading.Lock()


def emit(**item: Any) -> None:
    with _lock:
        sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()


def uniform(frame: Frame) -> bool:
    return all(int(np.min(plane)) == int(np.max(plane)) for plane in frame.planes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--remote")
    parser.add_argument("--fifo")
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--zenoh-config")
    parser.add_argument("--max-age", type=float)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    def on_event(event: StreamEvent) -> None:
        emit(ev=event.kind, camera=event.camera, instance=event.instance)

    reader: Any
    if args.remote:
        from framebus.remote.cli_support import parse_target
        from framebus.remote.consumer import RemoteSubscriber
        from framebus.remote.session import init_zenoh_log
        from framebus.remote.settings import RemoteConfig

        init_zenoh_log()  # its warnings (a refused link) into this process's log
        host, camera, rendition = parse_target(args.remote)
        config = RemoteConfig(connect=args.connect, zenoh_config=args.zenoh_config)
        reader = RemoteSubscriber(camera, host=host, rendition=rendition, config=config,
                                  max_age=args.max_age, on_event=on_event)
    else:
        reader = Subscriber(args.fifo, reopen=True, on_event=on_event)
    emit(ev="open")
    with reader:
        while not stop.is_set():
            try:
                frame = reader.read(timeout=0.2)
            except TimeoutError:
                continue
            if frame is None:
                break
            header = frame.header
            emit(seq=header.seq, missed=header.missed, instance=header.instance,
                 epoch=header.epoch, w=header.width, h=header.height,
                 age_ms=(time.time_ns() - header.capture_time_ns) / 1e6,
                 uniform=uniform(frame), intact=frame.intact(), t=time.monotonic())
            if args.sleep:
                stop.wait(args.sleep)
    if args.remote:
        stats = reader.stats
        emit(ev="stats", ring_dropped=stats.ring_dropped, too_old=stats.too_old,
             invalid=stats.invalid, restarts=stats.restarts)


if __name__ == "__main__":
    main()
