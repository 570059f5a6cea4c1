"""Revision 1.2 through the spec's C reader: docs/examples/reader.c and the reference codec
(framebus.wire, framebus.framing.FrameReader) agree on STATE messages however the bytes arrive,
on every T-rule violation, and on restarts (a new ``instance``) in a frame stream; and with a
real daemon and a real RTSP camera the C reader reports a SIGKILL + restart it never saw an EOF
for, with no seq violation, and a camera outage as STATE lines (FIFO and shm alike)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from camerakit import FAST
from faultkit import DaemonProcess, write_daemon_config
from framegen import make_frame
from prockit import LineProcess
from rtspserver import Mount, RtspServer, RtspServerFactory
from test_protocol_c_reader import (
    HEADER,
    TIMEOUT_S,
    compile_reader,
    corrupt,
    expected_line,
    open_writer,
    run_fed,
    run_reader,
)
from test_protocol_c_reader_shm import Segments
from test_stream_events import stopped, unread
from waiting import wait_for

from framebus.errors import ProtocolError
from framebus.framing import FrameReader
from framebus.wire import (
    HEADER_LEN,
    PREFIX,
    PREFIX_LEN,
    FrameHeader,
    PixelFormat,
    StateHeader,
    StreamState,
    decode_state_reason,
    encode_header,
    encode_message,
    encode_state,
    state_name,
)

Frame = tuple[FrameHeader, bytes]


@pytest.fixture(scope="module")
def reader_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_reader(tmp_path_factory.mktemp("c-reader-v12"))


def escaped(text: str) -> str:
    """A reason as reader.c prints it: control characters, DEL and backslash as \\xHH."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or c in "\x7f\\" else c for c in text)


def state_line(header: StateHeader, reason: str) -> str:
    line = (f"state {header.camera} {state_name(header.state)} epoch {header.epoch} "
            f"seq {header.seq}")
    return f"{line} {escaped(reason)}" if reason else line


def reference_lines(data: bytes) -> list[str]:
    """What reader.c must print for ``data`` (no -s), decoded by the reference FrameReader:
    frames, STATE messages, and a restart line wherever the instance changes."""
    reader = FrameReader()
    reader.feed(data)
    lines: list[str] = []
    last: int | None = None
    while (message := reader.next_message()) is not None:
        header = message.header
        if last is not None and header.instance != last:
            lines.append(f"restart {last:016x} {header.instance:016x}")
        last = header.instance
        if isinstance(header, StateHeader):
            lines.append(state_line(header, decode_state_reason(message.payload)))
        else:
            lines.append(expected_line(header, len(message.payload)))
    reader.close()
    return lines


def reference_error(data: bytes) -> str:
    """The reference reader's error for ``data``."""
    reader = FrameReader()
    reader.feed(data)
    with pytest.raises(ProtocolError) as caught:
        while reader.next_message() is not None:
            pass
    return str(caught.value)


def grown_header(message: bytes, extra: bytes) -> bytes:
    """``message`` from a later minor revision: ``extra`` appended to its header."""
    magic, version, header_len, payload_len = PREFIX.unpack_from(message)
    end = PREFIX_LEN + header_len
    return (PREFIX.pack(magic, version, header_len + len(extra), payload_len)
            + message[PREFIX_LEN:end] + extra + message[end:])


def state(camera: str, code: int, reason: str, **fields: int) -> bytes:
    return encode_state(StateHeader(camera, code, **fields), reason)


def mixed_stream() -> list[bytes]:
    """Frames and STATE messages of every kind, as separate messages."""
    big = make_frame(81, 1, PixelFormat.BGR24, 641, 359, padding=3)  # over a pipe's 64 KiB
    small = make_frame(81, 2, PixelFormat.GRAY, 5, 3, padding=1)
    states = [
        state("cam", StreamState.RECONNECTING, "connection refused", seq=42, epoch=1,
              capture_time_ns=1700000000123456789, publish_mono_ns=123456789012),
        state("cam", StreamState.STREAMING, "", seq=42, epoch=2),
        state("cam", StreamState.DOWN, "authentication failed: 401", seq=2**64 - 1,
              epoch=2**63),
        state("kamera-øst-北門", StreamState.IDLE, "no frame for 1.0 s ✓ ünïcødé"),
        state("c" * 64, 5, "a later revision's state"),
        state("cam", 255, "x"),
        state("cam", StreamState.RECONNECTING, "é" * 128),  # 256 bytes, the most there is
        state("cam", StreamState.RECONNECTING, "line one\nline\ttwo \\ back\x7f"),
    ]
    # unknown flag bits are ignored; a later revision's longer header is skipped
    states.append(corrupt(state("cam", StreamState.IDLE, "flag 0x8"), 8 + 122, "<H", 0x000C))
    states.append(grown_header(state("cam", StreamState.DOWN, "header 248"), b"newfield"))
    messages = [encode_message(*big), *states[:3], encode_message(*small), *states[3:],
                encode_message(*big), encode_message(*small)]
    return messages


def run_chunks(exe: Path, tmp_path: Path, chunks: Sequence[bytes],
               args: Sequence[str] = ()) -> tuple[int, list[str], str]:
    """Feed the reader through a real FIFO, one blocking write per chunk (a chunk of at most
    4096 bytes enters the pipe at once, as the daemon writes a message)."""
    fifo = tmp_path / "subscriber.fifo"
    os.mkfifo(fifo)

    def feed(fd: int, _deadline: float) -> None:
        os.set_blocking(fd, True)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        except BrokenPipeError:
            pass  # the reader stopped (a protocol error): nobody left to read

    return run_fed(exe, fifo, feed, args)


def one_byte_each(messages: list[bytes]) -> list[bytes]:
    data = b"".join(messages)
    return [data[i : i + 1] for i in range(len(data))]


def next_right_behind(messages: list[bytes]) -> list[bytes]:
    """Each write ends a message and carries the start of the next one (a different cut each
    time: inside the next prefix, header or payload)."""
    data = b"".join(messages)
    cuts, end = [], 0
    for i, (message, following) in enumerate(itertools.pairwise(messages)):
        end += len(message)
        cuts.append(end + min((1, 9, 16, 100, 256, 270)[i % 6], len(following) - 1))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


CHUNKINGS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "whole": lambda messages: messages,
    "one-byte-writes": one_byte_each,
    "next-right-behind": next_right_behind,
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_c_reader_and_codec_agree_on_state_messages(
    reader_exe: Path, tmp_path: Path, chunking: str
) -> None:
    messages = mixed_stream()
    expected = reference_lines(b"".join(messages))
    assert sum(line.startswith("state ") for line in expected) == 10

    code, lines, err = run_chunks(reader_exe, tmp_path, CHUNKINGS[chunking](messages),
                                  args=["-n", "4"])  # 4 frames: STATE messages do not count

    assert (code, err) == (0, "")
    assert lines == expected


def test_c_reader_reads_state_messages_in_random_chunks(reader_exe: Path,
                                                        tmp_path: Path) -> None:
    messages = mixed_stream() * 3
    code, lines, err = run_reader(reader_exe, tmp_path, b"".join(messages), seed=82)
    assert (code, err) == (0, "")
    assert lines == reference_lines(b"".join(messages))


GOOD_STATE = encode_state(StateHeader("cam", StreamState.RECONNECTING, seq=5, epoch=1,
                                      instance=7), "why")


def header_of(length: int) -> Callable[[bytes], bytes]:
    """The STATE message with its header cut to ``length`` bytes (the reason follows)."""
    def cut(message: bytes) -> bytes:
        return (corrupt(message[: PREFIX_LEN + length], 6, "<H", length)
                + message[PREFIX_LEN + HEADER_LEN :])
    return cut


def field(offset: int, fmt: str, value: int | bytes) -> Callable[[bytes], bytes]:
    return lambda message: corrupt(message, HEADER + offset, fmt, value)


def reason(raw: bytes) -> Callable[[bytes], bytes]:
    return lambda message: corrupt(message[: PREFIX_LEN + HEADER_LEN], 8, "<Q", len(raw)) + raw


T_RULES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("H1", field(0, "64s", b"\xff\xfe"), "camera name is not valid UTF-8"),
    ("H2", field(0, "64s", b""), "camera name is empty"),
    ("H1-before-T3", lambda m: field(120, "<B", 3)(field(0, "64s", b"\xc0\xaf")(m)),
     "camera name is not valid UTF-8"),
    ("T1-168", header_of(168), "state message needs header length >= 240, got 168"),
    ("T1-232", header_of(232), "state message needs header length >= 240, got 232"),
    ("T2-keyframe", field(122, "<H", 0x5), "state message with frame flags 0x1"),
    ("T2-shm", field(122, "<H", 0x6), "state message with frame flags 0x2"),
    ("T2-both", field(122, "<H", 0x7), "state message with frame flags 0x3"),
    ("T3-format", field(120, "<B", 3), "state message with a frame shape"),
    ("T3-width", field(128, "<I", 1), "state message with a frame shape"),
    ("T3-height", field(132, "<I", 1), "state message with a frame shape"),
    ("T3-planes", field(124, "<H", 1), "state message with a frame shape"),
    ("T4-long", reason(b"a" * 257), "state reason of 257 bytes over 256"),
    ("T4-code-0", field(232, "<B", 0), "state message with state code 0"),
    ("T4-utf8", reason(b"bad \xff\xfe"), "state reason is not valid UTF-8"),
    ("T4-overlong", reason(b"\xc0\xaf"), "state reason is not valid UTF-8"),
    ("T4-surrogate", reason(b"\xed\xa0\x80"), "state reason is not valid UTF-8"),
    ("T4-cut-char", reason(b"ok \xe5\x8c"), "state reason is not valid UTF-8"),
]


@pytest.mark.parametrize(("make_bad", "error"), [r[1:] for r in T_RULES],
                         ids=[r[0] for r in T_RULES])
def test_c_reader_and_codec_agree_on_each_t_rule(
    reader_exe: Path, tmp_path: Path, make_bad: Callable[[bytes], bytes], error: str
) -> None:
    bad = make_bad(GOOD_STATE)
    assert reference_error(bad) == error

    code, lines, err = run_chunks(reader_exe, tmp_path, [GOOD_STATE, bad, GOOD_STATE])

    assert code == 3, err
    assert err.endswith(f": protocol error: {error}\n"), err
    assert lines == reference_lines(GOOD_STATE)


@pytest.fixture
def segments(tmp_path: Path) -> Any:
    made = Segments(tmp_path)
    yield made
    for segment in made.made:
        segment.unlink()


def frame(camera: str, seq: int, missed: int = 0, instance: int = 0) -> Frame:
    header, payload = make_frame(83, seq, PixelFormat.GRAY, 4, 2)
    return (dataclasses.replace(header, camera=camera, seq=seq, missed=missed,
                                instance=instance), payload)


A, B, C = 0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x1


def test_c_reader_reports_restarts_and_checks_seq_per_instance(
    reader_exe: Path, tmp_path: Path, segments: Segments
) -> None:
    """A new instance is a restart: reported once, before the message that shows it, and seq
    continuity starts over (seq falls back to 1 in the same epoch, no violation). A STATE
    message takes no part in the seq arithmetic; a stale shm frame does."""
    gone = segments.new(64, 2)
    stale_header = segments.put(gone, frame("cam1", 12, 0, B))[0]
    gone.unlink()  # M0: the frame is stale, but received
    items: list[tuple[bytes, list[str]]] = []

    def add_frame(f: Frame) -> None:
        items.append((encode_message(*f), [expected_line(f[0], len(f[1]))]))

    def add_state(camera: str, seq: int, instance: int) -> StateHeader:
        header = StateHeader(camera, StreamState.IDLE, seq=seq, epoch=3, instance=instance)
        items.append((encode_state(header, "quiet"), [state_line(header, "quiet")]))
        return header

    for f in (frame("cam1", 1, 0, A), frame("cam1", 2, 0, A), frame("cam2", 10, 0, A),
              frame("cam1", 5, 2, A)):
        add_frame(f)
    add_state("cam1", 9, A)  # the newest published was 9; we got 5; dropped 6..9
    add_frame(frame("cam1", 10, 4, A))  # 10 == 5 + 1 + 4: not from the STATE message's 9
    add_frame(frame("cam1", 1, 0, B))  # the daemon was killed and restarted: seq back to 1
    items[-1][1].insert(0, f"restart {A:016x} {B:016x}")
    add_frame(frame("cam2", 1, 7, B))  # first of cam2 in instance B: missed is not checked
    add_frame(frame("cam1", 11, 9, B))
    items.append((encode_header(stale_header, 0), []))  # cam1 12, stale: received, no line
    add_frame(frame("cam1", 13, 0, B))
    add_state("cam2", 1, C)  # a STATE message can be the first message of a new daemon
    items[-1][1].insert(0, f"restart {B:016x} {C:016x}")
    add_frame(frame("cam1", 1, 0, C))
    add_frame(frame("cam1", 1, 0, 0))  # 0 against non-0 counts: a pre-1.2 writer took over
    items[-1][1].insert(0, f"restart {C:016x} {0:016x}")
    add_frame(frame("cam1", 2, 0, 0))
    add_frame(frame("cam1", 4, 0, 0))  # the control: a real violation is reported
    data = b"".join(d for d, _ in items)
    expected = [line for _, lines in items for line in lines]

    code, lines, err = run_chunks(reader_exe, tmp_path, next_right_behind([d for d, _ in items]),
                                  args=["-s"])

    assert code == 0, err
    assert err.endswith(": skipped 1 stale shm frame(s)\n")
    assert lines == [*expected[:-1], "seq-error cam1 4 after 2 missed 0", expected[-1]]
    # the reference decoder sees the same frames, states and restarts (it does not look into
    # segments: the stale frame is the one line more)
    assert [x for x in reference_lines(data) if x != expected_line(stale_header, 0)] == expected

    (tmp_path / "again").mkdir()
    code, lines, err = run_reader(reader_exe, tmp_path / "again", data, seed=84)
    assert (code, lines) == (0, expected)  # without -s: no seq checks, the same lines


def test_c_reader_finds_segments_beside_the_fifo_it_was_given_a_symlink_to(
    reader_exe: Path, tmp_path: Path
) -> None:
    """Segments are in dirname(realpath(FIFO)), not beside the symlink the reader opened."""
    real, elsewhere = tmp_path / "run", tmp_path / "home"
    real.mkdir()
    elsewhere.mkdir()
    fifo = real / "sub.fifo"
    os.mkfifo(fifo)
    (elsewhere / "cam.fifo").symlink_to(fifo)
    made = Segments(real)
    f = make_frame(85, 1, PixelFormat.NV12, 9, 7, padding=1)

    def feed(fd: int, _deadline: float) -> None:
        os.set_blocking(fd, True)
        os.write(fd, made.message(f))

    try:
        code, lines, err = run_fed(reader_exe, fifo, feed, cwd=elsewhere, path="cam.fifo")
    finally:
        for segment in made.made:
            segment.unlink()
    assert (code, err) == (0, "")
    assert lines == [expected_line(f[0], len(f[1]))]


# -- with a real daemon and a real camera ---------------------------------------------------------


FRAME_LINE = re.compile(r"(\S+) (\d+) (\d+) (\d+) (\S+) (\d+)x(\d+) (\d+) ([01])$")
RESTART_LINE = re.compile(r"restart ([0-9a-f]{16}) ([0-9a-f]{16})$")
STATE_LINE = re.compile(r"state (\S+) (\S+) epoch (\d+) seq (\d+)(?: (.*))?$")


class CReaderProcess(LineProcess):
    """reader.c -r -s on a daemon's FIFO, its lines collected as they come."""

    def __init__(self, exe: Path, fifo: Path, *args: str) -> None:
        super().__init__([str(exe), "-r", "-s", *args, str(fifo)], stderr=subprocess.PIPE)

    def frames(self) -> list[tuple[int, dict[str, Any]]]:
        """(line index, frame) for every frame line so far."""
        found = []
        for i, line in enumerate(list(self.lines)):
            if m := FRAME_LINE.match(line):
                found.append((i, {"camera": m[1], "seq": int(m[2]), "epoch": int(m[3]),
                                  "missed": int(m[4])}))
        return found

    def states(self) -> list[tuple[int, dict[str, Any]]]:
        found = []
        for i, line in enumerate(list(self.lines)):
            if m := STATE_LINE.match(line):
                found.append((i, {"camera": m[1], "state": m[2], "epoch": int(m[3]),
                                  "seq": int(m[4]), "reason": m[5] or ""}))
        return found

    def wait_frames(self, count: int, timeout: float) -> None:
        wait_for(lambda: len(self.frames()) >= count, timeout,
                 f"{count} frames at the C reader (last lines: {self.lines[-5:]})")

    def stop(self) -> str:
        """Kill it (with -r it waits for the next daemon forever); its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        self.collected(10)
        return err


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=320, height=240)])


def daemon_config(server: RtspServer, root: Path, transport: str) -> Path:
    return write_daemon_config(
        root / "framebus.yaml", root / "fifos",
        {"cam": {**FAST, "url": server.url("cam"), "idle_decode": "all"}},
        {"sub": {"camera": "cam", "format": "gray", "transport": transport}},
        http={"enabled": False})


def assert_clean(reader: CReaderProcess, err: str) -> None:
    """No seq violation, no protocol error, no torn message, every line understood."""
    assert not [line for line in reader.lines if line.startswith("seq-error")], reader.lines
    assert "protocol error" not in err and "truncated" not in err, err
    assert all(FRAME_LINE.match(x) or STATE_LINE.match(x) or RESTART_LINE.match(x)
               for x in reader.lines), reader.lines


@pytest.mark.parametrize("transport", ["fifo", "shm"])
def test_c_reader_sees_a_restart_it_got_no_eof_for_and_no_seq_violation(
        reader_exe: Path, server: RtspServer, tmp_path: Path, transport: str) -> None:
    path = daemon_config(server, tmp_path, transport)
    fifo = tmp_path / "fifos" / "sub.fifo"
    daemon = DaemonProcess(path)
    reader = CReaderProcess(reader_exe, fifo)
    second: DaemonProcess | None = None
    err = ""
    try:
        reader.wait_frames(15, timeout=60)
        # no new frames, so the reader empties its pipe: then it is stopped with nothing
        # unread, and the daemon dies without the reader seeing EOF
        heard = len(reader.states())
        server.kill()  # the camera goes away (it comes back below, on the same port)
        wait_for(lambda: any(s["state"] == "reconnecting" for _, s in reader.states()[heard:]),
                 30, "the reader to hear the camera is gone")  # the last message that comes
        wait_for(lambda: unread(fifo) == 0, 20, "the reader to drain its pipe")
        reader.pause()
        wait_for(lambda: stopped(reader.proc.pid), 20, "the reader to be stopped")
        daemon.proc.kill()
        daemon.proc.wait(10)
        server.restart()
        before = reader.frames()[-1][1]["seq"]
        second = DaemonProcess(path)  # opens the FIFO the stopped reader still holds
        wait_for(lambda: unread(fifo) > 0, 60, "the new daemon to write into the held FIFO")
        count = len(reader.frames())
        reader.resume()
        reader.wait_frames(count + 10, timeout=60)
        err = reader.stop()
        assert_clean(reader, err)
        restarts = [(i, RESTART_LINE.match(x)) for i, x in enumerate(reader.lines)
                    if RESTART_LINE.match(x)]
        assert len(restarts) == 1, reader.lines  # no EOF, no reopen: the instance told it
        at, match = restarts[0]
        assert match is not None and match[1] != match[2] and "0" * 16 not in match.groups()
        after = [f for i, f in reader.frames() if i > at]
        assert after and after[0]["seq"] < before  # seq fell back, and that is no violation
    finally:
        err = err or reader.stop()
        daemon.stop()
        if second is not None:
            assert second.stop() == 0


@pytest.mark.parametrize("transport", ["fifo", "shm"])
def test_c_reader_shows_a_camera_outage_as_state_lines(
        reader_exe: Path, server: RtspServer, tmp_path: Path, transport: str) -> None:
    daemon = DaemonProcess(daemon_config(server, tmp_path, transport))
    reader = CReaderProcess(reader_exe, tmp_path / "fifos" / "sub.fifo")
    err = ""
    try:
        reader.wait_frames(10, timeout=60)
        server.pause()  # the camera hangs, its connection up: idle after a second
        try:
            wait_for(lambda: any(s["state"] == "idle" for _, s in reader.states()), 30,
                     "an idle STATE line")
        finally:
            server.resume()
        old_epoch = reader.frames()[-1][1]["epoch"]
        heard = len(reader.states())
        server.kill()  # the camera goes away: the daemon reconnects until it is back
        wait_for(lambda: any(s["state"] == "reconnecting" for _, s in reader.states()[heard:]),
                 30, "a reconnecting STATE line")
        server.restart()
        wait_for(lambda: any(f["epoch"] > old_epoch for _, f in reader.frames()), 60,
                 "frames of the new epoch")
        err = reader.stop()
        assert_clean(reader, err)
        states = reader.states()
        kinds = [s["state"] for _, s in states]
        # (a reader that connects while the camera still connects hears that first)
        quiet = kinds.index("idle")
        retrying = kinds.index("reconnecting", quiet)
        assert kinds[quiet + 1] == "streaming", kinds  # frames resumed in the same epoch
        back_at, back = next((i, s) for i, s in states[retrying:] if s["state"] == "streaming")
        first_new_at, first_new = next((i, f) for i, f in reader.frames()
                                        if f["epoch"] > old_epoch)
        assert back["epoch"] == first_new["epoch"] and back_at < first_new_at
        reasons = [s["reason"] for _, s in states if s["state"] == "reconnecting"]
        assert all(reasons) and not any("rtsp://" in r for r in reasons), reasons
        assert not any(RESTART_LINE.match(x) for x in reader.lines)  # one daemon throughout
    finally:
        err = err or reader.stop()
        assert daemon.stop() == 0


def test_c_reader_with_r_discards_a_cut_message_and_forgets_the_instance_at_reopen(
    reader_exe: Path, tmp_path: Path
) -> None:
    """-r: EOF inside a message (the writer died) discards it and reopens; everything known
    about the stream is void after a reopen, so the next writer's different instance is no
    restart (the first message after an open is compared with nothing)."""
    first, cut, after = (frame("cam", 1, 0, A), frame("cam", 2, 0, A), frame("cam", 1, 0, B))
    fifo = tmp_path / "subscriber.fifo"
    os.mkfifo(fifo)
    deadline = time.monotonic() + TIMEOUT_S
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err_file:
        proc = subprocess.Popen([str(reader_exe), "-r", "-s", str(fifo)],
                                stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        for n, data in enumerate((encode_message(*first) + encode_message(*cut)[:-1],
                                  encode_message(*after))):
            fd = open_writer(fifo, proc, deadline)
            os.set_blocking(fd, True)
            os.write(fd, data)
            os.close(fd)
            wait_for(lambda: unread(fifo) == 0, TIMEOUT_S, "the reader to take the bytes")
            if n == 0:
                # the next writer may open only once the reader has seen this one's EOF: a
                # writer opening before keeps the FIFO open, no EOF comes, and its bytes
                # complete the cut message (what a loaded machine once did)
                wait_for(lambda: "truncated message at EOF" in errors.read_text(), TIMEOUT_S,
                         "the reader to see the first writer's EOF")
        assert proc.stdout is not None
        out = b""
        while out.count(b"\n") < 2:  # with -r it never exits: read until both lines are in
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
                pytest.fail(f"the reader printed {out!r} only")
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "the reader exited"
            out += chunk
    finally:
        proc.kill()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    err = errors.read_text()
    assert (out.decode() + rest).splitlines() == [expected_line(first[0], 8),
                                                  expected_line(after[0], 8)]
    assert "truncated message at EOF: payload has 7 of 8 bytes, discarded" in err, err
