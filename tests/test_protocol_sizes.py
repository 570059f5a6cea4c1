"""The sizes PROTOCOL.md section 12 gives for shm segments are the sizes real segments have:
the formulas are read from the document itself and compared with segment files the real store
and fan-out loop make, for several formats, odd sizes and subscriber counts."""

from __future__ import annotations

import math
import re
import struct
import time
from pathlib import Path

import pytest
from shmkit import PatternPublisher, running_loop

from framebus.fanout import SubscriberSpec
from framebus.rendition import Rendition
from framebus.wire import PixelFormat

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_HEADER = struct.Struct("<4sIQQQI")
STAMP_LENGTH_AT = 24  # the stamp's length field, from the slot's start


def spec_formulas() -> dict[str, str]:
    """``slot_size``, ``slot_count`` and ``file_size`` as PROTOCOL.md writes them."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    found = dict(re.findall(r"^(slot_size|slot_count|file_size)\s+=\s+(.+)$", text, re.M))
    assert set(found) == {"slot_size", "slot_count", "file_size"}, found
    return found


def sizes(payload_bytes: int, n: int) -> dict[str, int]:
    """Evaluate the document's formulas (its ``ceil``, ``log2`` and ``/`` are the
    mathematical ones)."""
    names: dict[str, object] = {"ceil": math.ceil, "log2": math.log2,
                                "payload_bytes": payload_bytes, "n": n}
    out = {}
    for name, formula in spec_formulas().items():
        out[name] = int(eval(formula, {"__builtins__": {}}, names))  # our own document
        names[name] = out[name]
    return out


def test_the_documents_example_follows_its_formulas() -> None:
    text = " ".join((ROOT / "docs" / "PROTOCOL.md").read_text().split())  # lines wrap anywhere
    one, two = sizes(6220800, 1), sizes(6220800, 2)
    assert f"`slot_size` {one['slot_size']}" in text
    assert f"file size {one['file_size']} bytes" in text
    assert f"{two['slot_count']} slots, {two['file_size']} bytes" in text
    assert f"`4096 + 5 * 4096 = {sizes(4, 1)['file_size']}`" in text  # the worked example


@pytest.mark.parametrize(("fmt", "width", "height"), [
    ("bgr24", 160, 120), ("yuv420p", 161, 121), ("nv12", 320, 240), ("gray", 7, 5)])
@pytest.mark.parametrize("subscribers", [1, 3])
def test_real_segments_have_the_documented_sizes(tmp_path: Path, fmt: str, width: int,
                                                 height: int, subscribers: int) -> None:
    rendition = Rendition(PixelFormat.from_name(fmt))
    with running_loop() as (store, loop):
        for i in range(subscribers):
            loop.add(SubscriberSpec(f"s{i}", "cam", rendition, tmp_path / f"s{i}.fifo",
                                    transport="shm"))
        with PatternPublisher(store, size=(width, height)):
            deadline = time.monotonic() + 30
            while store.latest("cam") is None and time.monotonic() < deadline:
                time.sleep(0.01)  # published: its copy in shared memory is written and stamped
            segments = list(tmp_path.glob("fbshm-*"))
            assert len(segments) == 1, segments
            data = segments[0].read_bytes()
    magic, version, slot_size, slot_count, first_slot, _pid = SEGMENT_HEADER.unpack_from(data)
    assert (magic, version, first_slot) == (b"FBSM", 1, 4096)
    payload_bytes = int.from_bytes(data[first_slot + STAMP_LENGTH_AT:][:8], "little")
    assert payload_bytes > 0  # the first slot holds a frame: its stamp's length is shm_length
    documented = sizes(payload_bytes, subscribers)
    assert (slot_size, slot_count, len(data)) == (
        documented["slot_size"], documented["slot_count"], documented["file_size"])
    assert not any(data[36:4096])  # the rest of the header page is written 0
