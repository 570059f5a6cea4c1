"""A consumer process for the shm tests: reads a FIFO with framebus.client and checks every
pixel of every frame against the pattern its seq implies (tests/shmkit.py).

    python shm_reader_proc.py FIFO [--partial BYTES] [--every N]

Prints a JSON progress line every N frames and a last one when its stdin is closed:
``{"frames", "bad", "stale", "not_intact", "seq", "size", "writeable", "segments"}``. ``bad``
counts frames whose pixels do not match their seq (torn or overwritten), ``not_intact`` frames
whose slot stamp changed while they were checked. With --partial it reads exactly BYTES raw
bytes (the middle of a message), prints ``{"partial": true}`` and waits to be killed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import numpy as np
from reader_proc import read_partial
from shmkit import pattern

from framebus.client import Subscriber


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fifo")
    parser.add_argument("--partial", type=int, default=0)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()
    if args.partial:
        read_partial(args.fifo, args.partial)
        print(json.dumps({"partial": True, "frames": 0}), flush=True)
        sys.stdin.read()  # the test kills us here (a reader stuck mid-message)
        return
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    counts = {"frames": 0, "bad": 0, "not_intact": 0, "seq": 0, "size": [0, 0],
              "writeable": False}
    with Subscriber(args.fifo, timeout=0.2, reopen=True) as sub:
        while not stop.is_set():
            try:
                frame = sub.read()
            except TimeoutError:
                continue
            assert frame is not None
            h = frame.header
            good = np.array_equal(frame.array, pattern(h.seq, h.width, h.height))
            counts["bad"] += not good
            counts["not_intact"] += not frame.intact()
            counts["frames"] += 1
            counts["seq"], counts["size"] = h.seq, [h.width, h.height]
            counts["writeable"] = bool(frame.array.flags.writeable)
            counts["shm"] = h.shm is not None
            if counts["frames"] % args.every == 0:
                print(json.dumps({**counts, "stale": sub.stats.stale,
                                  "segments": sub._segments.opened}), flush=True)
    print(json.dumps({**counts, "stale": sub.stats.stale, "segments": sub._segments.opened,
                      "end": True}), flush=True)


if __name__ == "__main__":
    main()
