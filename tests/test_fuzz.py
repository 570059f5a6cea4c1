"""Hostile input: the wire reader and the config loader, with generated and mutated inputs.

`make test` runs a bounded number of examples; `make soak` runs the full counts (100,000 for
the wire reader).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tracemalloc
from pathlib import Path

import pytest
from framegen import make_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framebus.cli import main
from framebus.errors import ProtocolError
from framebus.framing import FrameReader
from framebus.wire import PixelFormat, ShmLocation, encode_header, encode_message

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "framebus.yaml"
LIMIT = 1 << 20  # the reader's payload limit in these tests
SEEDS = [encode_message(*make_frame(9, i, fmt, 13, 7, 1)) for i, fmt in enumerate(PixelFormat)]


def _shm_seed(index: int, fmt: PixelFormat) -> bytes:
    """A revision 1.1 shm message: header only, naming a slot."""
    header, payload = make_frame(9, index, fmt, 13, 7, 1)
    location = ShmLocation(f"fbshm-7-{index}", 4160, len(payload), index + 1)
    return encode_header(dataclasses.replace(header, shm=location), 0)


SEEDS += [_shm_seed(i, fmt) for i, fmt in enumerate(PixelFormat) if fmt.is_raw]


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Valid messages, then bytes flipped, cut, spliced, or replaced by noise."""
    base = b"".join(draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(["flip", "cut", "splice", "noise", "grow"]))
    if kind == "flip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "splice":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.binary(max_size=64)) + base[at:]
    if kind == "grow":  # lengths in the prefix set to huge or odd values
        data = bytearray(base)
        data[6:8] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
        data[8:16] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        return bytes(data)
    return draw(st.binary(max_size=512))


def read_all(data: bytes, chunk: int) -> int:
    reader = FrameReader(max_payload_len=LIMIT)
    count = 0
    try:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
            while reader.next_message() is not None:
                count += 1
        reader.close()
    except ProtocolError:
        pass  # the only exception allowed
    return count


def check_reader(data: bytes, chunk: int) -> None:
    tracemalloc.start()
    try:
        read_all(data, chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT + 64 * 1024 + 4 * len(data)  # never an allocation past the limits


@settings(max_examples=1500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_streams(), chunk=st.integers(1, 600))
def test_wire_reader_survives_hostile_input(data: bytes, chunk: int) -> None:
    check_reader(data, chunk)


@pytest.mark.soak
@settings(max_examples=100_000, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_streams(), chunk=st.integers(1, 600))
def test_wire_reader_survives_100k_hostile_inputs(data: bytes, chunk: int) -> None:
    read_all(data, chunk)


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """The shipped example with lines dropped, duplicated, or values and keys replaced."""
    lines = EXAMPLE.read_text().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "value", "key", "indent", "noise"]))
        line = lines[index]
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, line)
        elif action == "value" and ":" in line:
            key = line.split(":", 1)[0]
            junk = draw(st.sampled_from(["soon", "-1", "[1, 2]", "{}", "''", "0x10", "null",
                                         "99999999999", "'rtsp://u:p@h/x'", "[unclosed",
                                         "!!python/object:os.system", "~", "yes"]))
            lines[index] = f"{key}: {junk}"
        elif action == "key" and ":" in line:
            lines[index] = line.replace(line.strip().split(":", 1)[0], draw(
                st.text("abcxyz_", min_size=1, max_size=8)), 1)
        elif action == "indent":
            lines[index] = " " * draw(st.integers(0, 7)) + line.lstrip()
        else:
            lines[index] = line + draw(st.text(max_size=12))
        if not lines:
            break
    return "\n".join(lines) + "\n"


def check_config_text(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["check-config", str(path)])  # an escaping exception fails the test
    if code != 0:
        assert code == 2, stderr.getvalue()
        lines = stderr.getvalue().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "front.pass").write_text("x\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_configs())
def test_mutated_configs_exit_0_or_2_with_one_line(text: str, tmp_path: Path,
                                                    credentials: None) -> None:
    check_config_text(text, tmp_path)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_arbitrary_text_as_config_exits_0_or_2(text: str, tmp_path: Path) -> None:
    check_config_text(text, tmp_path)


@pytest.mark.soak
@settings(max_examples=5000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_configs())
def test_many_mutated_configs(text: str, tmp_path: Path, credentials: None) -> None:
    check_config_text(text, tmp_path)
