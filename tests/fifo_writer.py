"""A separate writer process for client tests: deterministic frames in random chunk sizes.

    python fifo_writer.py FIFO SEED START COUNT SPECS [--die-mid-frame]

SPECS is a comma list of fmt:WxH[:padding]; frame i uses spec i % len(SPECS). With
--die-mid-frame the process writes half of one more frame and exits without closing cleanly.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from framegen import make_frame

from framebus.wire import PixelFormat, encode_message


def parse_specs(text: str) -> list[tuple[PixelFormat, int, int, int]]:
    specs = []
    for item in text.split(","):
        fmt, size, *padding = item.split(":")
        width, height = (int(v) for v in size.split("x"))
        specs.append((PixelFormat.from_name(fmt), width, height, int(padding[0]) if padding else 0))
    return specs


def main() -> None:
    path, seed, start, count, spec_text = sys.argv[1:6]
    die = "--die-mid-frame" in sys.argv
    specs = parse_specs(spec_text)
    rng = random.Random(int(seed))
    fd = os.open(path, os.O_WRONLY)  # blocks until the reader opens: that is the point
    for index in range(int(start), int(start) + int(count) + (1 if die else 0)):
        fmt, width, height, padding = specs[index % len(specs)]
        data = encode_message(*make_frame(int(seed), index, fmt, width, height, padding))
        if die and index == int(start) + int(count):
            data = data[: len(data) // 2]
        pos = 0
        while pos < len(data):
            pos += os.write(fd, data[pos : pos + rng.randint(1, 70_000)])
    if die:
        os._exit(3)
    os.close(fd)


if __name__ == "__main__":
    main()
