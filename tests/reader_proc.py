"""A consumer process for fan-out tests: reads a FIFO with framebus.client, checks each frame,
prints one JSON line per frame to stdout.

    python reader_proc.py FIFO [--count N] [--reopen] [--partial BYTES]

With --partial it instead reads exactly BYTES raw bytes, prints "PARTIAL", and waits to be
killed (a reader dying mid-frame).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import av

from framebus.client import Subscriber
from framebus.wire import PixelFormat


def check(frame: object) -> list[int]:
    """The shape the frame's numpy view has (and, for jpeg, the decoded picture's size)."""
    header = frame.header  # type: ignore[attr-defined]
    if header.format is PixelFormat.JPEG:
        picture = av.CodecContext.create("mjpeg", "r").decode(av.Packet(bytes(frame.payload)))[0]  # type: ignore[attr-defined]
        return [picture.height, picture.width]
    return list(frame.planes[0].shape)  # type: ignore[attr-defined]


def read_partial(fifo: str, count: int) -> int:
    """Open the FIFO and read exactly ``count`` raw bytes (the middle of a message); the
    descriptor stays open, so the daemon sees a reader that stopped there."""
    fd = os.open(fifo, os.O_RDONLY)
    got = b""
    while len(got) < count:
        got += os.read(fd, count - len(got))
    return fd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fifo")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--reopen", action="store_true")
    parser.add_argument("--partial", type=int, default=0)
    args = parser.parse_args()
    if args.partial:
        read_partial(args.fifo, args.partial)
        print("PARTIAL", flush=True)
        time.sleep(3600)  # the test kills us here (a reader stuck mid-frame)
        return
    seen = 0
    with Subscriber(args.fifo, timeout=60, reopen=args.reopen) as sub:
        for frame in sub:
            h = frame.header
            print(json.dumps({"seq": h.seq, "missed": h.missed, "epoch": h.epoch,
                              "w": h.width, "h": h.height, "fmt": str(h.format),
                              "shape": check(frame), "latency_ns": frame.latency_ns,
                              "camera": h.camera}), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    print(json.dumps({"end": True, "truncated": sub.stats.truncated}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
