"""Revision 1.1 through the spec's C reader: docs/examples/reader.c reads shm messages naming
real segment files (framebus.shm.Segment) beside a real FIFO, interleaved with FIFO messages,
verifies every row's pixels by checksum, rejects S1..S6, H8, M1 and M2, skips and counts stale
slots (M3), keeps one mapping per camera (revision 1.2's segment lifetime), and reads as rules
R1 and R2 say (one read for a whole message at a boundary, never past a message it has begun)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import os
import platform
import random
import select
import struct
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from framegen import make_frame
from test_protocol_c_reader import (
    HEADER,
    PREFIX_LEN,
    SIZES,
    TIMEOUT_S,
    Frame,
    LiveReader,
    checked_line,
    compile_reader,
    corrupt,
    expected_line,
    run_reader,
    with_appended_fields,
)

from framebus.shm import SEGMENT_HEADER, STAMP, Segment, slot_size_for
from framebus.slots import SlotRef
from framebus.store import Payload
from framebus.wire import (
    SHM_FIELDS,
    FrameHeader,
    PixelFormat,
    Plane,
    ShmLocation,
    encode_header,
    encode_message,
    plane_shapes,
)

GOOD = make_frame(61, 1, PixelFormat.GRAY, 3, 3)  # the well-formed shm frame around each bad one


@pytest.fixture(scope="module")
def reader_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_reader(tmp_path_factory.mktemp("c-reader-shm"))


class Segments:
    """Segment files made as the daemon makes them, in the FIFO's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made: list[Segment] = []
        self._names = itertools.count(1)

    def new(self, nbytes: int, slots: int, name: str | None = None) -> Segment:
        n = next(self._names)
        path = self.directory / (name or f"fbshm-{os.getpid()}-{n}")
        segment = Segment(path, slot_size_for(nbytes), slots, 0o600, None, n << 40)
        self.made.append(segment)
        return segment

    def put(self, segment: Segment, frame: Frame) -> tuple[FrameHeader, SlotRef]:
        """Copy the frame into a fresh slot; the header now names it."""
        header, payload = frame
        ref = segment.pool.claim()
        assert ref is not None, "the test segment has too few slots"
        location = segment.write(ref, header.seq, as_payload(header, payload))
        return dataclasses.replace(header, shm=location), ref

    def message(self, frame: Frame, segment: Segment | None = None) -> bytes:
        """An shm message for the frame, in ``segment`` or a segment of its own."""
        segment = segment or self.new(len(frame[1]), 1)
        return encode_header(self.put(segment, frame)[0], 0)


@pytest.fixture
def segments(tmp_path: Path) -> Iterator[Segments]:
    made = Segments(tmp_path)
    yield made
    for segment in made.made:
        segment.unlink()


def as_payload(header: FrameHeader, payload: bytes) -> Payload:
    return Payload(header.format, header.width, header.height, (memoryview(payload),),
                   header.planes, len(payload))


def scrambled_frame(seed: int, index: int, fmt: PixelFormat, width: int, height: int) -> Frame:
    """Planes in reverse order, gaps before, between and after them, random row padding and a
    tight last row: only a reader that honours every offset and stride gets the pixels right."""
    header, payload = make_frame(seed, index, fmt, width, height)
    if fmt is PixelFormat.JPEG:
        return header, payload
    rng = random.Random(seed * 7919 + index)
    shapes = plane_shapes(fmt, width, height)
    planes: list[Plane] = [Plane(0, 0)] * len(shapes)
    offset = rng.randint(0, 40)
    for i in reversed(range(len(shapes))):
        stride = shapes[i].row_bytes + rng.randint(0, 9)
        planes[i] = Plane(offset, stride)
        offset += stride * (shapes[i].rows - 1) + shapes[i].row_bytes + rng.randint(0, 40)
    return dataclasses.replace(header, planes=tuple(planes)), rng.randbytes(offset)


def test_c_reader_reads_shm_frames_among_fifo_frames(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    seq = itertools.count(1000)
    items: list[tuple[bytes, str]] = []
    for fmt in PixelFormat:  # one segment per rendition, six in all: mappings come and go
        frames = [make_frame(51, next(seq), fmt, w, h, padding=2 * i % 7)
                  for i, (w, h) in enumerate(SIZES)]
        frames += [scrambled_frame(52, next(seq), fmt, w, h) for w, h in SIZES]
        segment = segments.new(max(len(p) for _, p in frames), len(frames))
        for n, frame in enumerate(frames):
            shm = n % 3 != 2 and fmt is not PixelFormat.JPEG  # never jpeg over shm (S7)
            data = segments.message(frame, segment) if shm else encode_message(*frame)
            items.append((data, checked_line(frame)))
    # a 32-byte segment name has no terminating NUL
    frame = make_frame(53, next(seq), PixelFormat.NV12, 9, 7, padding=3)
    wide = segments.new(len(frame[1]), 1, name="fbshm-1234567890-123456789012345")
    items.append((segments.message(frame, wide), checked_line(frame)))
    # 1.2: the name ends at its first NUL; whatever follows it is ignored
    frame = make_frame(53, next(seq), PixelFormat.GRAY, 5, 3, padding=1)
    message = bytearray(segments.message(frame))
    name_end = message.index(b"\0", PREFIX_LEN + 168)
    message[name_end + 1 : PREFIX_LEN + 200] = b"x" * (PREFIX_LEN + 200 - name_end - 1)
    items.append((bytes(message), checked_line(frame)))
    # a later revision appends fields after the shm ones; a FIFO message (flag bit 1 clear)
    # whose bytes 168..223 look like shm fields is read as the 1.0 message it is
    frame = make_frame(54, next(seq), PixelFormat.YUV420P, 33, 17, padding=1)
    shm_header = segments.put(segments.new(len(frame[1]), 1), frame)[0]
    items.append((with_appended_fields(shm_header, b"", b"later-revision" * 5),
                  checked_line(frame)))
    lure = SHM_FIELDS.pack(b"../../etc/passwd", 64, 1, 1)
    items.append((with_appended_fields(*frame, lure), checked_line(frame)))
    random.Random(55).shuffle(items)

    code, lines, err = run_reader(reader_exe, tmp_path, b"".join(d for d, _ in items), seed=56,
                                  args=["-c"])

    assert (code, err) == (0, "")
    assert lines == [line for _, line in items]


def shm_bad(segments: Segments) -> bytes:
    """A well-formed shm message of a bgr24 7x5 frame with padded rows (110 bytes)."""
    return segments.message(make_frame(62, 2, PixelFormat.BGR24, 7, 5, padding=1))


def shrunk(data: bytes, header_len: int) -> bytes:
    return corrupt(data[: PREFIX_LEN + header_len], 6, "<H", header_len)


def named(name: str, offset: int = 4096 + 64, length: int = 110) -> Callable[[Segments], bytes]:
    """An shm message naming ``name`` (made by the case's set-up)."""
    header = make_frame(62, 2, PixelFormat.BGR24, 7, 5, padding=1)[0]
    location = ShmLocation(name, offset, length, 1)
    return lambda _: encode_header(dataclasses.replace(header, shm=location), 0)


def at(offset: int, fmt: str, value: int | bytes) -> Callable[[Segments], bytes]:
    return lambda s: corrupt(shm_bad(s), HEADER + offset, fmt, value)


def planted(name: str, make: Callable[[Path], object]) -> Callable[[Segments], bytes]:
    def build(s: Segments) -> bytes:
        make(s.directory / name)
        return named(name)(s)
    return build


def fake_segment(version: int, magic: bytes = b"FBSM") -> Callable[[Path], object]:
    return lambda path: path.write_bytes(
        SEGMENT_HEADER.pack(magic, version, 4096, 1, 4096, 1).ljust(8192, b"\0"))


def link_to_real(path: Path) -> None:
    real = path.parent / "fbshm-1-1"  # the good message's segment, made before the cases run
    os.symlink(real, path)


REJECTED: list[tuple[str, Callable[[Segments], bytes], str]] = [
    ("S1", lambda s: shrunk(shm_bad(s), 168), "shm message needs header length >= 224, got 168"),
    ("S1-partial", lambda s: shrunk(shm_bad(s), 200), "header length >= 224, got 200"),
    ("S2", lambda s: corrupt(shm_bad(s), 8, "<Q", 4) + bytes(4),
     "shm message must have payload length 0, got 4"),
    ("S3", at(208, "<Q", 2**40), "shm payload length 1099511627776 over the limit of 268435456"),
    ("S4-dotdot", at(168, "32s", b"../x"), "bad shm segment name '../x'"),
    ("S4-slash", at(168, "32s", b"fbshm-1/2-3"), "bad shm segment name"),
    ("S4-nul-first", at(168, "32s", b"\0fbshm-1-2"), "bad shm segment name ''"),
    ("S4-16-digits", at(168, "32s", b"fbshm-1-" + b"1" * 16), "bad shm segment name"),
    ("S4-11-digits", at(168, "32s", b"fbshm-12345678901-1"), "bad shm segment name"),
    ("S4-21-digits", at(168, "32s", b"fbshm-1-" + b"1" * 21), "bad shm segment name"),
    ("S4-no-digits", at(168, "32s", b"fbshm--1"), "bad shm segment name"),
    ("S4-case", at(168, "32s", b"FBSHM-1-2"), "bad shm segment name"),
    ("S4-space", at(168, "32s", b"fbshm-1-2 "), "bad shm segment name"),
    ("S4-empty", at(168, "32s", b""), "bad shm segment name ''"),
    ("S4-binary", at(168, "32s", b"\xff\xfe"), "bad shm segment name"),
    ("S5-100", at(200, "<Q", 100), "shm offset 100 is not a multiple of 64 from 64"),
    ("S5-0", at(200, "<Q", 0), "shm offset 0 is not a multiple of 64 from 64"),
    ("S5-32", at(200, "<Q", 32), "shm offset 32 is not"),
    ("S6-length", at(208, "<Q", 0), "shm message with zero length or zero token"),
    ("S6-token", at(216, "<Q", 0), "shm message with zero length or zero token"),
    ("S7", lambda s: s.message(make_frame(62, 3, PixelFormat.JPEG, 7, 5)),
     "jpeg is not sent over shm"),
    ("H8", at(208, "<Q", 3), "plane 0 ends at byte 109, past payload 3"),
    ("M1-symlink", planted("fbshm-1-2", link_to_real), "cannot open"),
    ("M1-short", planted("fbshm-1-3", lambda p: p.write_bytes(bytes(100))),
     "100 bytes, not a segment"),
    ("M1-magic", planted("fbshm-1-4", fake_segment(1, b"FBSX")), "bad magic"),
    ("M1-version", planted("fbshm-1-5", fake_segment(2)), "or version 2"),
    ("M1-directory", planted("fbshm-1-6", Path.mkdir), "not a regular file"),
    ("M1-fifo", planted("fbshm-1-7", os.mkfifo), "not a regular file"),
    ("M2-offset", at(200, "<Q", 4096 + 4096), "past the end of segment"),
    ("M2-length", at(208, "<Q", 4096 + 1), "past the end of segment"),
    ("M2-wraps", at(200, "<Q", 2**64 - 64), "past the end of segment"),
]


@pytest.mark.parametrize(("make_bad", "reason"), [c[1:] for c in REJECTED],
                         ids=[c[0] for c in REJECTED])
def test_c_reader_rejects_shm_protocol_errors(
    reader_exe: Path, tmp_path: Path, segments: Segments,
    make_bad: Callable[[Segments], bytes], reason: str,
) -> None:
    good = segments.message(GOOD, segments.new(len(GOOD[1]), 2, name="fbshm-1-1"))
    bad = make_bad(segments)

    code, lines, err = run_reader(reader_exe, tmp_path, good + bad + good, seed=63)

    assert code == 3, err
    assert "protocol error" in err and reason in err
    assert lines == [expected_line(GOOD[0], len(GOOD[1]))]  # shm: payload_len is shm_length


def test_c_reader_enforces_its_payload_limit_on_shm_lengths(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    data = segments.message(GOOD) + shm_bad(segments)

    code, lines, err = run_reader(reader_exe, tmp_path, data, seed=64, args=["-m", "100"])

    assert code == 3
    assert "shm payload length 110 over the limit of 100" in err
    assert lines == [expected_line(GOOD[0], len(GOOD[1]))]


def stamp_at(segment: Segment, location: ShmLocation, *fields: object) -> None:
    """Overwrite a slot's stamp through the file, as another writer of the page would."""
    fd = os.open(segment.path, os.O_WRONLY)
    try:
        os.pwrite(fd, STAMP.pack(*fields), location.offset - 64)
    finally:
        os.close(fd)


STALE: dict[str, Callable[[Segment, FrameHeader, SlotRef], object]] = {
    "rewritten": lambda seg, h, ref: seg.write(SlotRef(ref.slot, ref.token + 99), h.seq + 7,
                                               as_payload(*make_frame(65, 9, h.format, 5, 5))),
    "other-seq": lambda seg, h, ref: seg.write(ref, h.seq + 1, as_payload(*GOOD)),
    "other-token": lambda seg, h, ref: seg.write(SlotRef(ref.slot, ref.token + 1), h.seq,
                                                 as_payload(*GOOD)),
    "being-written": lambda seg, h, _: stamp_at(seg, h.shm, b"FBSL", 0, 0, 0, 0),
    "other-length": lambda seg, h, ref: stamp_at(seg, h.shm, b"FBSL", 0, ref.token, h.seq, 10),
    "no-magic": lambda seg, h, ref: stamp_at(seg, h.shm, b"FBSX", 0, ref.token, h.seq, 9),
}


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
@pytest.mark.parametrize("how", list(STALE))
def test_c_reader_skips_and_counts_stale_slots(
    reader_exe: Path, tmp_path: Path, segments: Segments, how: str, checksum: bool
) -> None:
    segment = segments.new(4096, 4)
    first, fifo, last = (make_frame(66, i, PixelFormat.NV12, 5, 3, padding=1) for i in (1, 2, 3))
    stale_header, ref = segments.put(segment, GOOD)
    stale = encode_header(stale_header, 0)
    STALE[how](segment, stale_header, ref)  # after the message was made, before it is read
    data = (segments.message(first, segment) + stale + encode_message(*fifo) + stale
            + segments.message(last, segment))

    code, lines, err = run_reader(reader_exe, tmp_path, data, seed=67,
                                  args=["-c"] if checksum else [])

    assert code == 0, err
    line = checked_line if checksum else (lambda f: expected_line(f[0], len(f[1])))
    assert lines == [line(f) for f in (first, fifo, last)]
    assert err.endswith(": skipped 2 stale shm frame(s)\n")


def test_c_reader_counts_a_missing_segment_as_stale(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    """M0: a segment that is gone (its daemon died, the next one removed it) is no protocol
    error: the frame is stale, and the stream goes on."""
    good = segments.message(GOOD, segments.new(len(GOOD[1]), 2))
    gone = segments.new(len(GOOD[1]), 2)
    unmapped = segments.message(GOOD, gone)
    gone.unlink()  # unlinked before the reader ever mapped it
    data = good + named("fbshm-1-999")(segments) + unmapped + good

    code, lines, err = run_reader(reader_exe, tmp_path, data, seed=68)

    assert code == 0, err
    assert lines == [expected_line(GOOD[0], len(GOOD[1]))] * 2
    assert err.endswith(": skipped 2 stale shm frame(s)\n")


def mapped(pid: int, segment: Segment) -> int:
    """How many mappings of the segment the process has (Linux /proc)."""
    count = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].removesuffix(" (deleted)") if len(fields) > 5 else ""
        count += Path(path).name == segment.name
    return count


def test_c_reader_keeps_one_mapping_per_camera_and_outlives_an_unlink(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    """1.2 segment lifetime: a camera's mapping is reused while its messages name the same
    segment, even once the file is unlinked; a camera that names a new segment has its old
    one unmapped; other cameras keep theirs; a restart (new instance) unmaps them all."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/PID/maps to see the reader's mappings")
    frames = [make_frame(72, i, PixelFormat.RGB24, 7, 3, padding=i % 3) for i in range(6)]
    north = [(dataclasses.replace(h, camera="north"), p) for h, p in frames]
    south = [(dataclasses.replace(h, camera="south"), p) for h, p in frames]
    a, b, c = (segments.new(len(frames[0][1]), 3) for _ in range(3))
    again = segments.put(a, north[1])[0]
    with LiveReader(reader_exe, tmp_path, ["-c"]) as reader:
        pid = reader.proc.pid
        reader.send(segments.message(north[0], a))
        assert reader.line() == checked_line(north[0])
        a.unlink()  # unlinked after the message naming it was made, before it is read
        reader.send(encode_header(again, 0))
        assert reader.line() == checked_line(north[1])  # read through the kept mapping
        assert mapped(pid, a) == 1  # one mapping for both messages
        reader.send(segments.message(south[2], c))
        assert reader.line() == checked_line(south[2])
        assert [mapped(pid, s) for s in (a, b, c)] == [1, 0, 1]  # one per camera
        reader.send(segments.message(north[3], b))  # north moves on: a is never named again
        assert reader.line() == checked_line(north[3])
        assert [mapped(pid, s) for s in (a, b, c)] == [0, 1, 1]
        reader.send(segments.message(north[4], a))  # a again: unmapped, and gone (M0)
        reader.send(segments.message(south[0], c))
        assert reader.line() == checked_line(south[0])  # the stale frame was skipped
        assert [mapped(pid, s) for s in (a, b, c)] == [0, 0, 1]
        restarted = dataclasses.replace(south[5][0], instance=0xFEED)
        reader.send(encode_message(restarted, south[5][1]))  # a new daemon: forget them all
        assert reader.line() == "restart 0000000000000000 000000000000feed"
        assert reader.line() == checked_line(south[5])
        assert [mapped(pid, s) for s in (a, b, c)] == [0, 0, 0]
        code, err = reader.finish()
    assert code == 0, err
    assert err.endswith(": skipped 1 stale shm frame(s)\n")


def read_calls(pid: int) -> int:
    """The read() calls the process has made so far (Linux /proc/PID/io, syscr)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr in /proc/{pid}/io")


def test_c_reader_reads_a_whole_message_at_a_boundary_with_one_read(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    """R1: at a message boundary the reader asks for up to 4096 bytes at once, so an shm
    message (256 bytes, written with one write) takes exactly one read(), and bytes past the
    end of a message are kept for the next one (two messages in one write: one read)."""
    if not os.access("/proc/self/io", os.R_OK):
        pytest.skip("needs /proc/PID/io")
    frames = [make_frame(74, i, PixelFormat.GRAY, 6, 4) for i in range(8)]
    segment = segments.new(len(frames[0][1]), 8)
    messages = [segments.message(f, segment) for f in frames]
    assert {len(m) for m in messages} == {256}
    with LiveReader(reader_exe, tmp_path) as reader:
        # the reader has the FIFO open, waiting in poll(): its start-up reads (the dynamic
        # loader's) are done, and it has not read from the FIFO yet
        start = read_calls(reader.proc.pid)
        for message, frame in zip(messages[:6], frames[:6], strict=True):
            assert os.write(reader.fd, message) == len(message)
            assert reader.line() == expected_line(frame[0], len(frame[1]))
        # a read blocked in the FIFO is counted once it returns: one per message
        assert read_calls(reader.proc.pid) - start == 6
        both = messages[6] + messages[7]
        assert os.write(reader.fd, both) == len(both)
        assert [reader.line(), reader.line()] == [expected_line(f[0], len(f[1]))
                                                  for f in frames[6:]]
        assert read_calls(reader.proc.pid) - start == 7
        code, err = reader.finish()
    assert (code, err) == (0, "")


WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}.get(platform.machine())


def blocked_writing_stdout(pid: int) -> bool:
    """True while the process sits in write(1, ...) (Linux /proc/PID/syscall)."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return len(fields) > 1 and fields[0] == str(WRITE_SYSCALL) and int(fields[1], 16) == 1


def test_c_reader_reads_no_further_than_a_message_it_has_begun(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    """R2 (and so the hold rule): once the reader has one byte of message 1, it asks for no
    more than the rest of message 1; while it prints that frame (its stdout is full, so it
    blocks right there) every byte of message 2, written together with the rest of message
    1, must still be in the FIFO."""
    if WRITE_SYSCALL is None or not os.access("/proc/self/syscall", os.R_OK):
        pytest.skip("needs /proc/PID/syscall on x86_64 or aarch64")
    first, second = (make_frame(73, i, PixelFormat.GRAY, 4, 4) for i in (1, 2))
    message_1, message_2 = segments.message(first), segments.message(second)
    out_r, out_w = os.pipe()
    fcntl.fcntl(out_w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(out_w, False)
    filled = 0
    with contextlib.suppress(BlockingIOError):  # fill the reader's stdout to the brim
        while True:
            filled += os.write(out_w, b"#")
    os.set_blocking(out_w, True)

    def unread(fd: int) -> int:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0])

    try:
        with LiveReader(reader_exe, tmp_path, stdout=out_w) as reader:
            os.close(out_w)
            out_w = -1
            deadline = time.monotonic() + TIMEOUT_S
            assert os.write(reader.fd, message_1[:1]) == 1
            while unread(reader.fd):  # the boundary read took the lone byte
                assert reader.proc.poll() is None, "the reader exited"
                assert time.monotonic() < deadline, "the reader never read the first byte"
                time.sleep(0.005)
            rest = message_1[1:] + message_2  # one write: all of it is there at once
            assert os.write(reader.fd, rest) == len(rest)
            while not blocked_writing_stdout(reader.proc.pid):
                assert reader.proc.poll() is None, "the reader exited"
                assert time.monotonic() < deadline, "the reader never wrote its first line"
                time.sleep(0.005)
            assert unread(reader.fd) == len(message_2)
            output = b""  # drained, the reader goes on to message 2
            while output.count(b"\n") < 2:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([out_r], [], [], remaining)[0]:
                    pytest.fail(f"the reader printed {output[filled:]!r} only")
                chunk = os.read(out_r, 65536)
                if not chunk:
                    pytest.fail(f"the reader exited ({reader.proc.wait(TIMEOUT_S)})")
                output += chunk
            code, err = reader.finish()
    finally:
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)
    assert (code, err) == (0, "")
    assert output[filled:].decode().splitlines() == [expected_line(f[0], len(f[1]))
                                                      for f in (first, second)]
