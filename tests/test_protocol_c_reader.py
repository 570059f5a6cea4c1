"""The spec suffices: docs/examples/reader.c, written from docs/PROTOCOL.md alone, reads what
framebus.wire writes, through a real FIFO, in random chunk sizes, and rejects what it must.

Revision 1.1 (shm payloads) is tested in test_protocol_c_reader_shm.py with the helpers here."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import select
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from framegen import make_frame

from framebus.wire import (
    HEADER_LEN,
    PREFIX,
    PREFIX_LEN,
    FrameHeader,
    PixelFormat,
    encode_header,
    encode_message,
    plane_shapes,
)

READER_C = Path(__file__).resolve().parent.parent / "docs" / "examples" / "reader.c"
TIMEOUT_S = 30.0  # bound on every wait: open, each write, the reader's exit
SIZES = [(1, 1), (3, 5), (7, 3), (33, 17), (641, 359)]  # odd sizes; the last exceeds a pipe
PADDINGS = [0, 1, 3, 2, 5]

Frame = tuple[FrameHeader, bytes]


def compile_reader(directory: Path) -> Path:
    """Build docs/examples/reader.c as the spec's readers would (skip without gcc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed, so docs/examples/reader.c cannot be compiled")
    exe = directory / "reader"
    cmd = [gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe), str(READER_C)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, f"{' '.join(cmd)} failed:\n{built.stderr}"
    return exe


@pytest.fixture(scope="module")
def reader_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_reader(tmp_path_factory.mktemp("c-reader"))


def expected_line(header: FrameHeader, payload_len: int) -> str:
    """What reader.c prints for one frame."""
    return (f"{header.camera} {header.seq} {header.epoch} {header.missed} {header.format} "
            f"{header.width}x{header.height} {payload_len} {int(header.keyframe)}")


def with_appended_fields(header: FrameHeader, payload: bytes, extra: bytes) -> bytes:
    """A message from a later minor revision: header_len grown by fields v1 does not know."""
    encoded = encode_header(header, len(payload))
    magic, version, header_len, payload_len = PREFIX.unpack_from(encoded)
    grown = PREFIX.pack(magic, version, header_len + len(extra), payload_len)
    return grown + encoded[PREFIX_LEN:] + extra + payload


def all_formats(seed: int) -> list[Frame]:
    """Every format at every odd size, with nonzero row padding for most."""
    frames: list[Frame] = []
    for fmt in PixelFormat:
        for (width, height), padding in zip(SIZES, PADDINGS, strict=True):
            frames.append(make_frame(seed, len(frames), fmt, width, height, padding))
    return frames


def open_writer(fifo: Path, proc: subprocess.Popen[Any], deadline: float) -> int:
    """Open the FIFO for writing once the reader has it open (ENXIO until then)."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if proc.poll() is not None:
            pytest.fail(f"reader exited ({proc.returncode}) before opening {fifo}")
        if time.monotonic() > deadline:
            pytest.fail(f"reader did not open {fifo} in {TIMEOUT_S} s")
        time.sleep(0.01)


def write_in_chunks(fd: int, data: bytes, rng: random.Random, deadline: float) -> None:
    """Write ``data`` in random chunk sizes; stop quietly if the reader has gone."""
    pos = 0
    while pos < len(data):
        size = rng.randint(1, 9) if rng.random() < 0.3 else rng.randint(10, 70_000)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            pytest.fail(f"reader stopped reading: {pos} of {len(data)} bytes written")
        try:
            pos += os.write(fd, data[pos : pos + size])
        except BlockingIOError:
            continue
        except BrokenPipeError:
            return  # the reader exited (e.g. on a protocol error): nobody left to read


def run_reader(
    exe: Path, tmp_path: Path, data: bytes, seed: int, args: Sequence[str] = ()
) -> tuple[int, list[str], str]:
    """Feed ``data`` to the C reader through a real FIFO; return (exit code, lines, stderr)."""
    fifo = tmp_path / "subscriber.fifo"
    os.mkfifo(fifo)
    return run_fed(exe, fifo, lambda fd, deadline: write_in_chunks(
        fd, data, random.Random(seed), deadline), args)


def run_fed(exe: Path, fifo: Path, feed: Callable[[int, float], None],
            args: Sequence[str] = (), cwd: Path | None = None,
            path: str | None = None) -> tuple[int, list[str], str]:
    """Run the C reader on ``fifo`` (named ``path`` on its command line, from ``cwd``), let
    ``feed(fd, deadline)`` write into it, close (EOF for the reader, at a boundary or not) and
    return (exit code, lines, stderr); the reader is killed if it outlives TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    proc = subprocess.Popen(
        [str(exe), *args, path or str(fifo)], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )
    try:
        fd = open_writer(fifo, proc, deadline)
        try:
            feed(fd, deadline)
        finally:
            os.close(fd)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out.splitlines(), err


def pixel_crc(header: FrameHeader, payload: bytes) -> int:
    """What ``reader -c`` prints: CRC-32 of each plane's rows, through offsets and strides."""
    if header.format is PixelFormat.JPEG:
        return zlib.crc32(payload)
    crc = 0
    shapes = plane_shapes(header.format, header.width, header.height)
    for plane, shape in zip(header.planes, shapes, strict=True):
        for y in range(shape.rows):
            start = plane.offset + y * plane.stride
            crc = zlib.crc32(payload[start : start + shape.row_bytes], crc)
    return crc


def checked_line(frame: Frame) -> str:
    header, payload = frame
    return f"{expected_line(header, len(payload))} {pixel_crc(header, payload):08x}"


class LiveReader:
    """The C reader on a FIFO fed message by message, its output read line by line."""

    def __init__(self, exe: Path, directory: Path, args: Sequence[str] = (),
                 stdout: int = subprocess.PIPE) -> None:
        fifo = directory / "subscriber.fifo"
        os.mkfifo(fifo)
        self.deadline = time.monotonic() + TIMEOUT_S
        # a relative FIFO path: the segments are in the reader's working directory
        self.proc = subprocess.Popen([str(exe), *args, fifo.name], cwd=directory,
                                     stdout=stdout, stderr=subprocess.PIPE)
        self.fd = open_writer(fifo, self.proc, self.deadline)
        self.rng = random.Random(71)
        self._out = b""

    def __enter__(self) -> LiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.proc.returncode is None:  # not finished: kill it, reap it, close its pipes
            self.proc.kill()
            self.proc.communicate(timeout=TIMEOUT_S)

    def send(self, data: bytes) -> None:
        write_in_chunks(self.fd, data, self.rng, self.deadline)

    def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._out:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
                pytest.fail(f"no line from the reader in {TIMEOUT_S} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                _, err = self.proc.communicate(timeout=TIMEOUT_S)
                pytest.fail(f"reader exited ({self.proc.returncode}): {err.decode()}")
            self._out += chunk
        line, self._out = self._out.split(b"\n", 1)
        return line.decode()

    def finish(self) -> tuple[int, str]:
        """EOF for the reader; its exit code and stderr."""
        os.close(self.fd)
        self.fd = -1
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        return self.proc.returncode, err.decode()


def test_c_reader_reads_every_format_in_random_chunks(reader_exe: Path, tmp_path: Path) -> None:
    frames = all_formats(seed=11)
    gray, gray_payload = make_frame(12, 500, PixelFormat.GRAY, 5, 3, padding=2)
    frames += [
        # a 64-byte name has no terminating NUL; u64 fields use their whole range
        (dataclasses.replace(gray, camera="c" * 64, seq=2**64 - 1, epoch=2**63, missed=2**40),
         gray_payload),
        (dataclasses.replace(gray, camera="kamera-øst-北門"), gray_payload),
    ]
    random.Random(13).shuffle(frames)
    messages = [encode_message(header, payload) for header, payload in frames]
    expected = [expected_line(header, len(payload)) for header, payload in frames]

    # messages from a later minor revision: appended header fields, up to the 4096-byte limit
    for extra in (b"future-field-bytes", random.Random(14).randbytes(4096 - HEADER_LEN)):
        header, payload = make_frame(15, len(messages), PixelFormat.NV12, 9, 7, padding=1)
        at = len(messages) // 2
        messages.insert(at, with_appended_fields(header, payload, extra))
        expected.insert(at, expected_line(header, len(payload)))

    code, lines, err = run_reader(reader_exe, tmp_path, b"".join(messages), seed=16)

    assert (code, err) == (0, "")
    assert lines == expected


@pytest.mark.parametrize(
    ("cut", "stage"),
    [(5, "prefix"), (PREFIX_LEN + 100, "header"), (-1, "payload")],
    ids=["in-prefix", "in-header", "in-payload"],
)
def test_c_reader_rejects_a_message_cut_by_eof(
    reader_exe: Path, tmp_path: Path, cut: int, stage: str
) -> None:
    frames = all_formats(seed=21)[:4]
    whole = b"".join(encode_message(header, payload) for header, payload in frames)
    last = encode_message(*make_frame(21, 99, PixelFormat.BGR24, 7, 5, padding=3))

    code, lines, err = run_reader(reader_exe, tmp_path, whole + last[:cut], seed=22)

    assert code == 3
    assert "truncated" in err
    assert f"{stage} has" in err
    assert lines == [expected_line(header, len(payload)) for header, payload in frames]


def corrupt(message: bytes, offset: int, fmt: str, value: int | bytes) -> bytes:
    """``message`` with one field (at a message offset) overwritten."""
    data = bytearray(message)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


HEADER = PREFIX_LEN  # header field offsets are relative to the end of the prefix


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (0, "4s", b"RIFF", "bad magic"),
        (4, "<H", 2, "unsupported protocol version 2"),
        (6, "<H", 167, "header length 167 is shorter than v1's 168"),
        (6, "<H", 4097, "header length 4097 over the limit of 4096"),
        (8, "<Q", 2**63, "payload length 9223372036854775808 over the limit"),
        (8, "<Q", 3, "plane 0 ends at byte"),
        (HEADER + 0, "64s", b"\xff\xfe", "camera name is not valid UTF-8"),
        (HEADER + 0, "64s", b"", "camera name is empty"),
        (HEADER + 120, "<B", 77, "unknown pixel format code 77"),
        (HEADER + 121, "<B", 9, "unknown capture time source 9"),
        (HEADER + 124, "<H", 9, "plane count 9 over 4"),
        (HEADER + 124, "<H", 2, "yuv420p needs 3 planes, header has 2"),
        (HEADER + 128, "<I", 0, "frame size 0x3 outside 1..32768"),
        (HEADER + 140, "<I", 1, "stride 1 < row size 5"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_c_reader_rejects_protocol_errors(
    reader_exe: Path, tmp_path: Path, offset: int, fmt: str, value: int | bytes, reason: str
) -> None:
    good_header, good_payload = make_frame(31, 1, PixelFormat.GRAY, 3, 3)
    good = encode_message(good_header, good_payload)
    bad = corrupt(encode_message(*make_frame(31, 2, PixelFormat.YUV420P, 5, 3)), offset, fmt,
                  value)

    code, lines, err = run_reader(reader_exe, tmp_path, good + bad + good, seed=32)

    assert code == 3
    assert reason in err
    assert lines == [expected_line(good_header, len(good_payload))]


def test_c_reader_enforces_its_payload_limit(reader_exe: Path, tmp_path: Path) -> None:
    small_header, small_payload = make_frame(41, 1, PixelFormat.GRAY, 4, 4)
    big = make_frame(41, 2, PixelFormat.BGR24, 33, 17)
    data = encode_message(small_header, small_payload) + encode_message(*big)

    code, lines, err = run_reader(reader_exe, tmp_path, data, seed=42, args=["-m", "1024"])

    assert code == 3
    assert f"payload length {len(big[1])} over the limit of 1024" in err
    assert lines == [expected_line(small_header, len(small_payload))]


def test_c_reader_reports_each_frames_latency(reader_exe: Path, tmp_path: Path) -> None:
    """-l appends CLOCK_MONOTONIC now minus the header's publish time: frames stamped in the
    past by known amounts read back as at least those amounts, and none is negative."""
    now = time.monotonic_ns()
    ages_ns = [5_000_000_000, 1_000_000, 0]  # 5 s, 1 ms, and "just now"
    frames = [make_frame(21, i, PixelFormat.GRAY, 4, 2) for i in range(len(ages_ns))]
    stamped = [(dataclasses.replace(header, publish_mono_ns=now - age), payload)
               for (header, payload), age in zip(frames, ages_ns, strict=True)]
    data = b"".join(encode_message(header, payload) for header, payload in stamped)
    code, lines, err = run_reader(reader_exe, tmp_path, data, seed=22, args=["-l"])
    assert (code, err) == (0, "")
    elapsed = time.monotonic_ns() - now
    for line, (header, payload), age in zip(lines, stamped, ages_ns, strict=True):
        fields, latency = line.rsplit(" ", 1)
        assert fields == expected_line(header, len(payload))
        assert age <= int(latency) <= age + elapsed
