"""docs/PROTOCOL.md section 15 against the real thing: tests/spec_remote_reader.py, a reader
written from the spec alone (no framebus imports), reads a real daemon's exports through a
real ``framebus bridge`` on loopback, and must agree with framebus's own RemoteSubscriber.

One daemon and one bridge serve every test (module fixture): camera ``gen`` (flat frames whose
level changes every frame, exported as odd-sized nv12, bgr24 and jpeg) and camera ``dead`` (an
RTSP URL nobody listens on: it only ever reconnects, which gives STATE samples).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

zenoh = pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (the remote extra)")

import spec_remote_reader as spec  # noqa: E402
from prockit import free_port  # noqa: E402
from remotekit import Proc, framebus, wait_streaming, write_config  # noqa: E402
from waiting import wait_for  # noqa: E402

from framebus.remote.consumer import RemoteSubscriber  # noqa: E402

pytestmark = pytest.mark.timeout(60)

HOST = "spechost"
DEADLINE = 20.0
PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
# 25 fps, 160x90, every pixel of frame N at luma 37*N mod 256, chroma 128
FLAT = ("lavfi:color=c=black:s=160x90:r=25,geq=lum='mod(N*37\\,256)':cb=128:cr=128,"
        "realtime")
NV12 = "nv12-81x45"  # odd: chroma rounds up (41x23)
BGR = "bgr24-w80"
JPEG = "jpeg-w64"


def key(camera: str, rendition: str) -> str:
    return f"framebus/{HOST}/{camera}/{rendition}"


@dataclass
class Rig:
    endpoint: str
    session: Any  # the spec reader's zenoh session
    daemon: Proc
    bridge: Proc
    config: Path
    tmp: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("specrig")
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    config = write_config(tmp / "framebus.yaml", {
        "fifo_dir": str(tmp),
        "http": {"listen": "127.0.0.1:0", "unix_socket": str(tmp / "control.sock")},
        "cameras": {
            "gen": {"url": FLAT, "remote": [
                {"format": "nv12", "width": 81, "height": 45},
                {"format": "bgr24", "width": 80},
                {"format": "jpeg", "width": 64}]},
            "dead": {"url": f"rtsp://127.0.0.1:{free_port()}/x",
                     "remote": [{"format": "gray"}]},
        },
        "remote": {"host": HOST, "listen": [endpoint], "metrics_listen": None},
    })
    daemon = Proc(framebus("run", "-c", str(config)), None, tmp / "daemon.log")
    bridge = None
    session = None
    try:
        wait_streaming(tmp / "control.sock", ["gen"], timeout=DEADLINE)
        bridge = Proc(framebus("bridge", "-c", str(config)), None, tmp / "bridge.log")
        # a client (RemoteSubscriber's session is a peer); it cannot open before the bridge
        # listens (zenoh's connect/exit_on_failure is true for clients)
        session = until(lambda: opened(endpoint), "a client session to the bridge")
        rig = Rig(endpoint, session, daemon, bridge, config, tmp)
        yield rig
        daemon = rig.daemon  # a test may have started another
    finally:
        if session is not None:
            session.close()
        for proc in (bridge, daemon):
            if proc is not None:
                proc.stop(subprocess.signal.SIGTERM)


def opened(endpoint: str) -> Any:
    try:
        return spec.open_session([endpoint], mode="client")
    except zenoh.ZError:
        return None


def until(check: Any, what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    box: list[Any] = []

    def done() -> bool:
        box[:] = [check()]
        return bool(box[0])

    wait_for(done, timeout, what, poll=0.05)
    return box[0]


# -- the spec's own worked example, decoded by the spec reader -------------------------------


def hexdump_after(marker: str) -> bytes:
    text = PROTOCOL.read_text()
    block = text[text.index(marker):].split("```")[1]
    return bytes.fromhex("".join(line[10:59] for line in block.strip().splitlines()))


def test_the_worked_example_decodes_as_the_spec_says() -> None:
    attachment = hexdump_after("The attachment (offsets from its first byte):")
    assert len(attachment) == 256
    frame = spec.decode_sample("framebus/camhost1/cam/gray", attachment,
                               bytes([0x10, 0x20, 0x30, 0x40]))
    assert isinstance(frame, spec.Frame)
    h = frame.header
    assert (h.camera, h.seq, h.epoch, h.missed, h.instance) == ("cam", 42, 1, 2,
                                                                 0x0123456789abcdef)
    assert (h.pts, h.time_base, h.capture_source, h.flags) == (180000, (1, 90000), 1, 1)
    assert frame.image().tolist() == [[0x10, 0x20], [0x30, 0x40]]
    with pytest.raises(spec.SpecError, match="payload of 3 bytes, payload_len says 4"):
        spec.decode_sample("framebus/camhost1/cam/gray", attachment, b"123")
    shm = bytearray(attachment)
    shm[138] |= 0x02
    with pytest.raises(spec.SpecError, match="an shm message cannot cross hosts"):
        spec.decode_sample("framebus/camhost1/cam/gray", bytes(shm), b"1234")
    with pytest.raises(spec.SpecError, match="not a framebus data key"):
        spec.decode_sample("framebus/camhost1/_x/gray", attachment, b"1234")


# -- liveliness and status -------------------------------------------------------------------


def test_liveliness_tokens_name_the_host_and_every_export(rig: Rig) -> None:
    want = {(HOST, "gen", NV12), (HOST, "gen", BGR), (HOST, "gen", JPEG),
            (HOST, "dead", "gray")}

    def alive() -> bool:
        hosts, exports = spec.liveliness(rig.session)
        return HOST in hosts and want <= exports

    until(alive, "the bridge's liveliness tokens")


def test_the_status_queryable_answers_the_documented_json(rig: Rig) -> None:
    def answered() -> list[Any]:
        replies = spec.status(rig.session, HOST, timeout=2.0)
        return [r for r in replies if isinstance(r, dict)]

    (doc,) = until(answered, "a status reply")
    assert (doc["host"], doc["daemon"], doc["error"]) == (HOST, "ok", "")
    cams = {c["name"]: c for c in doc["cameras"]}
    assert cams["gen"]["state"] == "streaming" and (cams["gen"]["width"],
                                                     cams["gen"]["height"]) == (160, 90)
    assert cams["dead"]["state"] in ("connecting", "backoff")
    exports = {(e["camera"], e["rendition"]) for e in doc["exports"]}
    assert exports == {("gen", NV12), ("gen", BGR), ("gen", JPEG), ("dead", "gray")}


# -- the newest-frame queryable --------------------------------------------------------------


def one(rig: Rig, selector: str, **params: Any) -> spec.Frame | spec.ReplyError:
    replies = spec.newest_frame(rig.session, selector, **params)
    assert len(replies) == 1, replies
    return replies[0]


def test_the_newest_frame_query_answers_frames_and_documented_errors(rig: Rig) -> None:
    # nobody subscribes: step 4, a frame request to the daemon (the bridge's missed is 0)
    first = until(lambda: [r for r in spec.newest_frame(rig.session, key("gen", JPEG))
                           if isinstance(r, spec.Frame)], "a jpeg reply")[0]
    h = first.header
    assert first.key == key("gen", JPEG) and h.missed == 0
    assert (first.format_name, h.width, h.height) == ("jpeg", 64, 36)
    assert first.payload[:2] == b"\xff\xd8" and first.payload[-2:] == b"\xff\xd9"

    # newer_than: a later frame, waited for
    later = one(rig, key("gen", NV12), newer_than=h.seq + 2, timeout=2)
    assert isinstance(later, spec.Frame) and later.header.seq > h.seq + 2, later
    assert later.header.instance == h.instance
    # max_age that a 25 fps camera meets
    fresh = one(rig, key("gen", BGR), max_age=0.5, timeout=2)
    assert isinstance(fresh, spec.Frame) and fresh.image().shape == (45, 80, 3)
    # a wildcard selector: one reply per export
    replies = spec.newest_frame(rig.session, f"framebus/{HOST}/gen/*", timeout=2)
    assert sorted(r.key for r in replies if isinstance(r, spec.Frame)) == sorted(
        key("gen", r) for r in (NV12, BGR, JPEG)), replies
    replies = spec.newest_frame(rig.session, f"framebus/{HOST}/gen/*", timeout=2,
                                zenoh_defaults=True)  # zenoh's target and consolidation
    assert sorted(r.key for r in replies if isinstance(r, spec.Frame)) == sorted(
        key("gen", r) for r in (NV12, BGR, JPEG)), replies
    # empty parts ignored, a repeated parameter: the last one counts
    again = one(rig, key("gen", NV12), extra=";newer_than=x;;newer_than=0;timeout=86400")
    assert isinstance(again, spec.Frame), again

    # the documented errors
    cases = [
        (dict(extra="x=1"), "bad_request",
         "unknown parameter 'x' (newer_than, max_age, timeout)"),
        (dict(extra="newer_than=-1"), "bad_request", "newer_than: expected a seq >= 0"),
        (dict(extra="newer_than=9223372036854775808"), "bad_request",
         "newer_than: expected a seq >= 0"),
        (dict(extra="max_age=abc"), "bad_request", "max_age: expected seconds >= 0"),
        (dict(extra="max_age=86401"), "bad_request", "max_age: expected seconds >= 0"),
        (dict(extra="timeout=-1"), "bad_request", "timeout: expected seconds >= 0"),
        (dict(extra="newer_than"), "bad_request", "newer_than: expected a seq >= 0"),
        (dict(extra="newer_than=1|2"), "bad_request", "newer_than: expected a seq >= 0"),
        (dict(max_age=0, timeout=0.2), "frame_too_old",
         re.compile(r"newest frame is [0-9.]+s old, over max_age 0s")),
        (dict(newer_than=2 ** 63 - 1, timeout=0.2), "no_frame",
         re.compile(r"no frame newer than 9223372036854775807 within 0\.2s")),
        (dict(max_age=0.000001, timeout=0.2), "frame_too_old",
         re.compile(r"newest frame is [0-9.]+s old, over max_age 1e-06s")),
    ]
    for params, code, detail in cases:
        reply = one(rig, key("gen", NV12), **params)
        assert isinstance(reply, spec.ReplyError), (params, reply)
        assert reply.code == code, (params, reply)
        if isinstance(detail, str):
            assert reply.detail == detail, (params, reply)
        else:
            assert detail.fullmatch(reply.detail), (params, reply)
    # the camera that never streams: no frame within the timeout
    reply = one(rig, key("dead", "gray"), timeout=0.2)
    assert isinstance(reply, spec.ReplyError) and reply.code == "no_frame", reply


# -- subscribing: the spec reader beside RemoteSubscriber ------------------------------------


def collect(read: Any, until_mono: float, out: list[Any]) -> None:
    while time.monotonic() < until_mono:
        try:
            item = read(max(0.0, until_mono - time.monotonic()))
        except TimeoutError:
            return
        if item is not None:
            out.append(item)


def test_frames_decode_as_the_reference_reader_sees_them(rig: Rig) -> None:
    """Each rendition read at once by the spec reader and by RemoteSubscriber, 1.5 s."""
    renditions = (NV12, BGR, JPEG)
    mine = {r: spec.SpecReader(rig.session, key("gen", r), max_age=5.0) for r in renditions}
    ref_session = spec.open_session([rig.endpoint])  # a session of its own
    theirs = {r: RemoteSubscriber("gen", host=HOST, rendition=r, session=ref_session,
                                  max_age=5.0, timeout=DEADLINE) for r in renditions}
    got: dict[str, list[Any]] = {r: [] for r in renditions}
    ref: dict[str, list[Any]] = {r: [] for r in renditions}
    try:
        for r in renditions:  # both have a first frame: the bridge streams to both
            assert isinstance(mine[r].read(DEADLINE), spec.Frame), mine[r].stats
            theirs[r].read()
        stop = time.monotonic() + 1.5
        threads = [threading.Thread(target=collect, args=(reader.read, stop, out[r]))
                   for r in renditions for reader, out in ((mine[r], got), (theirs[r], ref))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for r in renditions:
            mine[r].close()
            theirs[r].close()
        ref_session.close()
    for r in renditions:
        check_rendition(r, mine[r], got[r], ref[r])


def check_rendition(rendition: str, mine: spec.SpecReader, got: list[Any],
                    ref: list[Any]) -> None:
    assert mine.stats.invalid == 0, mine.stats.errors
    frames = [f for f in got if isinstance(f, spec.Frame)]
    assert len(frames) >= 10, (len(frames), mine.stats)

    # seq strictly increasing, missed = the gap, within one instance and epoch
    for prev, cur in itertools.pairwise(frames):
        assert cur.header.instance == prev.header.instance != 0
        assert cur.header.seq == prev.header.seq + 1 + cur.missed
    for f in frames:
        h = f.header
        assert f.key == key("gen", rendition) and h.camera == "gen"
        assert h.flags & 0x0006 == 0 and h.header_len == 240
        assert (h.capture_source, h.time_base[1] > 0) == (0, True)

    # the same seq gives the same header and bytes in both readers
    by_seq = {f.seq: f for f in ref}
    common = [f for f in frames if f.header.seq in by_seq]
    assert len(common) >= 5, (len(common), len(frames), len(ref))
    for f in common:
        r = by_seq[f.header.seq]
        h, rh = f.header, r.header
        assert (h.epoch, h.instance, h.pts, h.capture_time_ns, h.publish_mono_ns, h.width,
                h.height) == (rh.epoch, rh.instance, rh.pts, rh.capture_time_ns,
                              rh.publish_mono_ns, rh.width, rh.height)
        assert h.format == int(rh.format) and h.planes == [(p.offset, p.stride)
                                                           for p in rh.planes]
        assert f.payload == bytes(r.payload)

    # the pixels: size and plane layout of the rendition, a flat level per frame
    for f in frames:
        h = f.header
        if rendition == JPEG:
            assert (h.width, h.height, h.plane_count) == (64, 36, 1)
            assert f.payload[:2] == b"\xff\xd8" and f.payload[-2:] == b"\xff\xd9"
            continue
        if rendition == NV12:
            y, uv = f.planes()
            assert (h.width, h.height) == (81, 45)
            assert y.shape == (45, 81) and uv.shape == (23, 82)
            assert abs(int(uv.min()) - 128) <= 2 and abs(int(uv.max()) - 128) <= 2
            levels = y
        else:
            assert (h.width, h.height) == (80, 45)
            img = f.image()
            assert img.shape == (45, 80, 3)
            levels = img  # gray: B, G, R within rounding of the YUV to BGR conversion
        assert int(levels.max()) - int(levels.min()) <= 4, (h.seq, levels.min(), levels.max())


def test_state_samples_of_a_camera_that_is_not_streaming(rig: Rig) -> None:
    reader = spec.SpecReader(rig.session, key("dead", "gray"))
    try:
        msg = reader.read(DEADLINE)
    finally:
        reader.close()
    assert isinstance(msg, spec.State), (msg, reader.stats)
    h = msg.header
    assert msg.name == "reconnecting" and msg.reason, msg
    assert (h.camera, h.missed, h.format, h.width, h.height) == ("dead", 0, 0, 0, 0)
    assert h.instance != 0 and reader.stats.invalid == 0
    # the bridge's wall clock: recent
    assert abs(time.time_ns() - h.capture_time_ns) < 60e9


def test_a_new_daemon_behind_the_same_bridge_is_one_restart(rig: Rig) -> None:
    reader = spec.SpecReader(rig.session, key("gen", NV12), max_age=5.0)
    try:
        first = reader.read(DEADLINE)
        assert isinstance(first, spec.Frame), reader.stats
        old = first.header.instance
        rig.daemon.stop(subprocess.signal.SIGTERM)
        rig.daemon = Proc(framebus("run", "-c", str(rig.config)), None,
                          rig.tmp / "daemon2.log")
        seen: list[Any] = []

        def new_frame() -> spec.Frame | None:
            msg = reader.read(0.2)
            if msg is not None:
                seen.append(msg)
            if isinstance(msg, spec.Frame) and msg.header.instance != old:
                return msg
            return None

        new = until(new_frame, "a frame of the new daemon")
    finally:
        reader.close()
    assert new.header.instance != 0 and new.missed == 0  # nothing to compare with
    assert new.header.seq < first.header.seq  # a new daemon's seq starts over
    assert reader.stats.restarts == 1, (reader.stats, seen)
    assert reader.stats.invalid == 0, reader.stats.errors
