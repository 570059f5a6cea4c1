"""An independent reader of framebus's remote mapping, written from docs/PROTOCOL.md alone.

This module deliberately imports nothing from ``framebus``: it is what an outside implementer
writes from the spec (sections 3, 4, 5, 8, 9, 13 and 15), with zenoh-python, ``struct`` and
numpy only. ``tests/test_remote_spec_reader.py`` checks it against a real daemon and bridge.

Where the spec made the implementer guess, the guess is marked ``AMBIGUITY`` in a comment.
Each was then answered in section 15 (after checking the bridge):

* the key rule against the key lock of a wildcard selector: the key is checked first, and a
  bad key never becomes the kept key; the header's camera is the key's ``<camera>``;
* attachment and payload are raw ``ZBytes`` (no zenoh-ext serialization);
* a STATE sample's other fields (``missed`` 0, ``pts`` INT64_MIN, ...) are section 13's;
* query parameter syntax (``name=value`` split at ``=``, a part without ``=``, ``|``, what
  number syntax to send, inclusive bounds, ``max_age=0``), and how the daemon combines
  ``newer_than`` with ``max_age`` (waits for the one, checks the other once);
* ``newer_than`` across a daemon restart;
* query target and consolidation (the queryables are not *complete*; zenoh's defaults get
  every export's reply), and that ``framebus/**`` also reaches the status queryables;
* what an error reply is in zenoh terms (``reply_err``: no key, no attachment) and that
  readers act on the code, not the detail's wording (``bridge error`` has a space);
* the status JSON's camera field types (only given by reference to openapi.yaml), its
  encoding and parameters; tokens of other shapes;
* the reader session's mode (a client session cannot open before the bridge listens).
"""

from __future__ import annotations

import json
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import zenoh

# --- sections 3 and 4: prefix and header ------------------------------------------------

MAGIC = b"FBUS"
VERSION = 1
PREFIX_LEN = 16
MIN_HEADER_LEN = 168
MAX_HEADER_LEN = 4096  # section 6: the reader's maximum; the spec's own figure
MAX_ATTACHMENT = PREFIX_LEN + MAX_HEADER_LEN  # Z2: 4112
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024  # section 6: the reference default
MAX_SIDE = 32768  # H5
MAX_STATE_REASON = 256  # T4
STATE_QUEUE = 16  # section 15 Limits: the reference reader's STATE queue

FLAG_KEYFRAME = 0x0001
FLAG_SHM = 0x0002
FLAG_STATE = 0x0004

# Section 5: code -> (name, plane count). Row shapes are computed in plane_shapes().
FORMATS = {1: ("bgr24", 1), 2: ("rgb24", 1), 3: ("gray", 1), 4: ("yuv420p", 3),
           5: ("nv12", 2), 6: ("jpeg", 1)}
STATE_NAMES = {1: "streaming", 2: "reconnecting", 3: "down", 4: "idle"}
NO_PTS = -(2 ** 63)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # section 15, Names


class SpecError(ValueError):
    """A sample the spec says a reader must reject (not fatal over zenoh: Z rules)."""


def plane_shapes(fmt: int, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, row bytes) of each plane of a raw format, section 5's table."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    name = FORMATS[fmt][0]
    if name in ("bgr24", "rgb24"):
        return [(height, 3 * width)]
    if name == "gray":
        return [(height, width)]
    if name == "yuv420p":
        return [(height, width), (ch, cw), (ch, cw)]
    if name == "nv12":
        return [(height, width), (ch, 2 * cw)]
    raise AssertionError(name)


@dataclass
class Header:
    header_len: int
    payload_len: int
    camera: str
    seq: int
    epoch: int
    missed: int
    pts: int | None
    time_base: tuple[int, int]
    capture_time_ns: int
    publish_mono_ns: int
    format: int
    capture_source: int
    flags: int
    plane_count: int
    width: int
    height: int
    planes: list[tuple[int, int]]  # (offset, stride), plane_count entries
    instance: int
    state: int


@dataclass
class Frame:
    key: str
    header: Header
    payload: bytes
    missed: int = 0  # the reader's own count (section 15), not header.missed (the bridge's)

    @property
    def format_name(self) -> str:
        return FORMATS[self.header.format][0]

    def planes(self) -> list[np.ndarray]:
        """One (rows, row bytes) uint8 view per plane, honouring offset and stride (section 5).

        jpeg has no planes to address: it returns the whole file as one 1-D array.
        """
        buf = np.frombuffer(self.payload, dtype=np.uint8)
        h = self.header
        if self.format_name == "jpeg":
            return [buf]
        out = []
        for (offset, stride), (rows, row_bytes) in zip(
                h.planes, plane_shapes(h.format, h.width, h.height), strict=True):
            view = np.lib.stride_tricks.as_strided(
                buf[offset:], shape=(rows, row_bytes), strides=(stride, 1), writeable=False)
            out.append(view)
        return out

    def image(self) -> np.ndarray:
        """bgr24/rgb24 as (H, W, 3), gray as (H, W); other formats: planes()."""
        p = self.planes()[0]
        if self.format_name in ("bgr24", "rgb24"):
            return p.reshape(self.header.height, self.header.width, 3)
        return p

    def pixel_bytes(self) -> bytes:
        """The pixel data with row and plane padding removed: comparable across strides."""
        if self.format_name == "jpeg":
            return self.payload
        return b"".join(np.ascontiguousarray(p).tobytes() for p in self.planes())


@dataclass
class State:
    key: str
    header: Header
    reason: str

    @property
    def code(self) -> int:
        return self.header.state

    @property
    def name(self) -> str:
        return STATE_NAMES.get(self.header.state, "unknown")  # 5..255: unknown, not an error


def check_key(key: str) -> tuple[str, str, str]:
    """Section 15, Selectors: exactly four chunks, 'framebus' then three names."""
    chunks = key.split("/")
    if len(chunks) != 4 or chunks[0] != "framebus" or not all(
            NAME_RE.match(c) for c in chunks[1:]):
        raise SpecError(f"not a framebus data key: {key!r}")
    # AMBIGUITY: must the key's <camera> equal the header's camera field? Section 15 said
    # "<camera> is the camera's name ... (the camera field of the header)" but listed no
    # check. This reader checks it (in decode_sample); the spec now says a reader MAY.
    return chunks[1], chunks[2], chunks[3]


def _u(fmt: str, b: bytes, off: int):
    return struct.unpack_from("<" + fmt, b, off)[0]  # section 1: little-endian, no padding


def decode_sample(key: str, attachment: bytes | None, payload: bytes,
                  max_payload_len: int = DEFAULT_MAX_PAYLOAD) -> Frame | State:
    """Validate and decode one sample, in section 15's order Z1, Z2, P1..P5, Z3, Z4, H.., Z5."""
    _, key_camera, _ = check_key(key)
    att = attachment or b""
    if len(att) < PREFIX_LEN:  # Z1
        raise SpecError(f"attachment of {len(att)} bytes: no framebus prefix")
    if len(att) > MAX_ATTACHMENT:  # Z2
        raise SpecError(f"attachment of {len(att)} bytes over {MAX_ATTACHMENT}")
    magic = att[0:4]
    version, header_len, payload_len = struct.unpack_from("<HHQ", att, 4)
    if magic != MAGIC:  # P1
        raise SpecError(f"bad magic {magic!r} (expected {MAGIC!r}): not at a message")
    if version != VERSION:  # P2
        raise SpecError(f"unsupported protocol version {version} (this reader speaks 1)")
    if header_len < MIN_HEADER_LEN:  # P3
        raise SpecError(f"header length {header_len} is shorter than v1's 168")
    if header_len > MAX_HEADER_LEN:  # P4
        raise SpecError(f"header length {header_len} over the limit of {MAX_HEADER_LEN}")
    if payload_len > max_payload_len:  # P5
        raise SpecError(f"payload length {payload_len} over the limit of {max_payload_len}")
    if len(att) != PREFIX_LEN + header_len:  # Z3
        raise SpecError(f"attachment of {len(att)} bytes, header_len says "
                        f"{PREFIX_LEN + header_len}")
    if len(payload) != payload_len:  # Z4
        raise SpecError(f"payload of {len(payload)} bytes, payload_len says {payload_len}")

    h = att[PREFIX_LEN:]  # header offsets from here on
    raw_name = h[0:64].rstrip(b"\0")
    try:  # H1
        camera = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("camera name is not valid UTF-8") from None
    if not camera:  # H2
        raise SpecError("camera name is empty")
    if camera != key_camera:  # see the AMBIGUITY in check_key
        raise SpecError(f"header camera {camera!r} is not the key's {key_camera!r}")

    seq, epoch, missed = _u("Q", h, 64), _u("Q", h, 72), _u("Q", h, 80)
    pts = _u("q", h, 88)
    tb = (_u("I", h, 96), _u("I", h, 100))
    capture_time_ns, publish_mono_ns = _u("q", h, 104), _u("q", h, 112)
    fmt, capture_source, flags = h[120], h[121], _u("H", h, 122)
    plane_count, width, height = _u("H", h, 124), _u("I", h, 128), _u("I", h, 132)
    # Section 4, fields past header_len: instance 0 when header_len < 232, state 0 when < 240.
    instance = _u("Q", h, 224) if header_len >= 232 else 0
    state = h[232] if header_len >= 240 else 0
    # Unknown flag bits (3..15) are ignored, not rejected (section 4).
    hdr = Header(header_len, payload_len, camera, seq, epoch, missed,
                 None if pts == NO_PTS else pts, tb, capture_time_ns, publish_mono_ns, fmt,
                 capture_source, flags, plane_count, width, height, [], instance, state)

    if flags & FLAG_STATE:
        if header_len < 240:  # T1
            raise SpecError(f"state message needs header length >= 240, got {header_len}")
        if flags & (FLAG_KEYFRAME | FLAG_SHM):  # T2
            raise SpecError(f"state message with frame flags {flags:#x}")
        if fmt or width or height or plane_count:  # T3
            raise SpecError("state message with a frame shape")
        if payload_len > MAX_STATE_REASON:  # T4
            raise SpecError(f"state reason of {payload_len} bytes over {MAX_STATE_REASON}")
        if state == 0:
            raise SpecError("state message with state code 0")
        try:
            reason = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("state reason is not valid UTF-8") from None
        return State(key, hdr, reason)

    if fmt not in FORMATS:  # H3
        raise SpecError(f"unknown pixel format code {fmt}")
    if capture_source not in (0, 1):  # H4
        raise SpecError(f"unknown capture time source {capture_source}")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):  # H5
        raise SpecError(f"frame size {width}x{height} outside 1..{MAX_SIDE}")
    if plane_count > 4:  # H6
        raise SpecError(f"plane count {plane_count} over 4")
    hdr.planes = [(_u("I", h, 136 + 8 * i), _u("I", h, 140 + 8 * i))
                  for i in range(plane_count)]
    name, want_planes = FORMATS[fmt]
    if name == "jpeg":  # H7; the jpeg stride is not checked (writers send 0)
        if plane_count != 1 or hdr.planes[0][0] != 0 or payload_len == 0:
            raise SpecError("jpeg message must have one plane at offset 0 and a payload")
    else:
        if plane_count != want_planes:  # H7
            raise SpecError(f"{name} needs {want_planes} planes, header has {plane_count}")
        for p, ((offset, stride), (rows, row_bytes)) in enumerate(
                zip(hdr.planes, plane_shapes(fmt, width, height), strict=True)):  # H8
            if stride < row_bytes:
                raise SpecError(f"plane {p}: stride {stride} < row size {row_bytes}")
            end = offset + stride * (rows - 1) + row_bytes
            if end > payload_len:
                raise SpecError(f"plane {p} ends at byte {end}, past payload {payload_len}")
    if flags & FLAG_SHM:  # Z5
        raise SpecError("an shm message cannot cross hosts: its payload is elsewhere")
    return Frame(key, hdr, bytes(payload))


# --- zenoh session ---------------------------------------------------------------------

def open_session(connect: list[str], *, mode: str = "peer") -> zenoh.Session:
    """A reader's session with the two settings section 15 requires."""
    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps(mode))
    conf.insert_json5("connect/endpoints", json.dumps(connect))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("transport/shared_memory/enabled", "false")
    return zenoh.open(conf)


def _bytes(z) -> bytes:
    return z.to_bytes() if z is not None else b""


# --- subscriber: section 15's reading algorithm ----------------------------------------

@dataclass
class Stats:
    invalid: int = 0
    too_old: int = 0
    ring_dropped: int = 0
    duplicates: int = 0
    restarts: int = 0
    states_dropped: int = 0
    errors: list[str] = field(default_factory=list)


class SpecReader:
    """Subscribes to a selector, keeps a ring of one frame and a queue of 16 STATE samples."""

    def __init__(self, session: zenoh.Session, selector: str, *, max_age: float = 1.0,
                 max_payload_len: int = DEFAULT_MAX_PAYLOAD):
        self.max_age_ns = int(max_age * 1e9)
        self.max_payload_len = max_payload_len
        self.stats = Stats()
        self.key: str | None = None
        self._slot: tuple[str, bytes | None, bytes] | None = None
        self._states: deque = deque()
        self._cond = threading.Condition()
        self._last_instance = 0
        self._last: dict[str, tuple[int, int]] = {}  # camera -> (instance, seq)
        self._sub = session.declare_subscriber(selector, self._on_sample)

    def close(self) -> None:
        self._sub.undeclare()

    def _on_sample(self, sample: zenoh.Sample) -> None:
        key = str(sample.key_expr)
        att = _bytes(sample.attachment) if sample.attachment is not None else None
        payload = _bytes(sample.payload)
        with self._cond:
            # AMBIGUITY: the pseudocode locks onto the first key before any validation, so a
            # first sample with a bad key would capture the reader. This reader locks onto the
            # first key that passes the key rule (section 15 answers it now the same way).
            if self.key is not None and key != self.key:
                return
            try:
                check_key(key)
            except SpecError as e:
                self.stats.invalid += 1
                self.stats.errors.append(str(e))
                return
            self.key = key
            if att is not None and len(att) > 138 and att[138] & FLAG_STATE:
                if len(self._states) == STATE_QUEUE:
                    self._states.popleft()
                    self.stats.states_dropped += 1
                self._states.append((key, att, payload))
            else:
                if self._slot is not None:
                    self.stats.ring_dropped += 1
                self._slot = (key, att, payload)
            self._cond.notify_all()

    def _restart_check(self, instance: int) -> bool:
        if instance == 0:
            return False
        restarted = self._last_instance != 0 and instance != self._last_instance
        if restarted:
            self.stats.restarts += 1
            self._last.clear()  # a new daemon's seq starts over: every camera's seq_prev goes
        self._last_instance = instance
        return restarted

    def read(self, timeout: float) -> Frame | State | None:
        """The next STATE or frame, or None when the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._states and self._slot is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cond.wait(left)
                if self._states:
                    item = self._states.popleft()
                else:
                    item, self._slot = self._slot, None
            try:
                msg = decode_sample(*item, max_payload_len=self.max_payload_len)
            except SpecError as e:
                self.stats.invalid += 1
                self.stats.errors.append(str(e))
                continue
            if isinstance(msg, State):
                self._restart_check(msg.header.instance)
                return msg
            h = msg.header
            if time.time_ns() - h.capture_time_ns > self.max_age_ns:
                self.stats.too_old += 1
                continue
            self._restart_check(h.instance)
            last = self._last.get(h.camera)
            if last is None or last[0] != h.instance:
                msg.missed = 0  # unknown: nothing to compare with
            elif h.seq <= last[1]:
                self.stats.duplicates += 1
                continue
            else:
                msg.missed = h.seq - last[1] - 1
            self._last[h.camera] = (h.instance, h.seq)
            return msg


# --- newest-frame queryable ------------------------------------------------------------

@dataclass
class ReplyError:
    code: str
    detail: str


def _split_error(text: str) -> ReplyError:
    code, sep, detail = text.partition(": ")  # "a reader splits the text at the first ': '"
    return ReplyError(code, detail) if sep else ReplyError(text, "")


def newest_frame(session: zenoh.Session, selector: str, *, newer_than: int | None = None,
                 max_age: float | None = None, timeout: float | None = None,
                 extra: str = "", zenoh_timeout: float | None = None,
                 zenoh_defaults: bool = False) -> list[Frame | ReplyError]:
    """All replies to one newest-frame query, decoded (frames) or split (errors).

    AMBIGUITY: parameter syntax. The spec shows ``key?a=1;b=2``, which is zenoh's own
    selector syntax, so this reader builds the string by hand and passes it to get().
    ``extra`` is appended verbatim (for testing the refusals).
    """
    params = []
    if newer_than is not None:
        params.append(f"newer_than={newer_than}")
    if max_age is not None:
        params.append(f"max_age={max_age}")
    if timeout is not None:
        params.append(f"timeout={timeout}")
    if extra:
        params.append(extra)
    sel = selector + ("?" + ";".join(params) if params else "")
    if zenoh_timeout is None:  # the reference: the bridge's timeout (default 5 s) + 0.5 s
        zenoh_timeout = min(max(timeout if timeout is not None else 5.0, 0.1), 5.0) + 0.5
    # AMBIGUITY: query target and consolidation. The spec says each export answers once; it
    # does not say whether its queryables are "complete" (BEST_MATCHING would then ask one
    # export only), nor that replies of several exports must not be consolidated. This
    # reader asks ALL targets with no consolidation, to get every export's reply
    # (``zenoh_defaults`` leaves zenoh's defaults, BEST_MATCHING and AUTO, to compare).
    out: list[Frame | ReplyError] = []
    how = {} if zenoh_defaults else {"target": zenoh.QueryTarget.ALL,
                                     "consolidation": zenoh.ConsolidationMode.NONE}
    for reply in session.get(sel, timeout=zenoh_timeout, **how):
        if reply.ok is not None:
            s = reply.ok
            try:
                msg = decode_sample(str(s.key_expr), _bytes(s.attachment) or None,
                                    _bytes(s.payload))
            except SpecError as e:
                out.append(ReplyError("invalid", str(e)))
                continue
            if not isinstance(msg, Frame):
                out.append(ReplyError("invalid", "a STATE sample as a frame reply"))
                continue
            out.append(msg)
        else:
            out.append(_split_error(_bytes(reply.err.payload).decode("utf-8", "replace")))
    return out


# --- status queryable and liveliness ---------------------------------------------------

STATUS_FIELDS = {"host": str, "daemon": str, "error": str, "cameras": list, "exports": list}
CAMERA_FIELDS = {"name", "state", "reason", "fps", "declared_fps", "frame_age_s", "width",
                 "height", "codec"}
CAMERA_STATES = {"connecting", "streaming", "stalled", "backoff", "auth_failed",
                 "unsupported", "stopped"}
EXPORT_FIELDS = {"camera": str, "rendition": str, "key": str, "matching": bool,
                 "running": bool, "puts": int, "error": str}


def check_status(doc: dict) -> None:
    """Raise SpecError unless the status JSON has section 15's fields and types."""
    for name, typ in STATUS_FIELDS.items():
        if not isinstance(doc.get(name), typ):
            raise SpecError(f"status field {name!r}: {doc.get(name)!r}")
    if doc["daemon"] not in ("ok", "unreachable"):
        raise SpecError(f"status daemon {doc['daemon']!r}")
    if (doc["daemon"] == "ok") != (doc["error"] == ""):
        raise SpecError("status error must be '' exactly when daemon is ok")
    for cam in doc["cameras"]:
        if set(cam) != CAMERA_FIELDS:  # "exactly these fields"
            raise SpecError(f"camera fields {sorted(cam)}")
        if cam["state"] not in CAMERA_STATES:
            raise SpecError(f"camera state {cam['state']!r}")
        # AMBIGUITY (resolved in section 15 now): the spec gave the types only as "those of
        # the HTTP API's Camera (docs/openapi.yaml)", a file outside it. It lists them now.
        for f in ("name", "reason", "codec"):
            if not isinstance(cam[f], str):
                raise SpecError(f"camera {f}: {cam[f]!r}")
        for f in ("fps", "declared_fps", "width", "height"):
            if isinstance(cam[f], bool) or not isinstance(cam[f], (int, float)) or cam[f] < 0:
                raise SpecError(f"camera {f}: {cam[f]!r}")
        for f in ("width", "height"):
            if not isinstance(cam[f], int):
                raise SpecError(f"camera {f}: {cam[f]!r}")
        if cam["frame_age_s"] is not None and not isinstance(cam["frame_age_s"], (int, float)):
            raise SpecError(f"camera frame_age_s: {cam['frame_age_s']!r}")
    for exp in doc["exports"]:
        for name, typ in EXPORT_FIELDS.items():
            v = exp.get(name)
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise SpecError(f"export field {name!r}: {v!r}")
        if exp["key"] != f"framebus/{doc['host']}/{exp['camera']}/{exp['rendition']}":
            raise SpecError(f"export key {exp['key']!r}")


def status(session: zenoh.Session, host: str = "*", timeout: float = 5.0
           ) -> list[dict | ReplyError]:
    """Every host's status reply on framebus/<host>/_status (JSON, checked) or error."""
    out: list[dict | ReplyError] = []
    for reply in session.get(f"framebus/{host}/_status", target=zenoh.QueryTarget.ALL,
                             consolidation=zenoh.ConsolidationMode.NONE, timeout=timeout):
        if reply.ok is None:
            out.append(_split_error(_bytes(reply.err.payload).decode("utf-8", "replace")))
            continue
        s = reply.ok
        parts = str(s.key_expr).split("/")
        if len(parts) != 3 or parts[0] != "framebus" or parts[2] != "_status":
            raise SpecError(f"status reply on {s.key_expr}")
        if s.attachment is not None:
            raise SpecError("status reply with an attachment")
        doc = json.loads(_bytes(s.payload).decode("utf-8"))
        check_status(doc)
        if doc["host"] != parts[1]:
            raise SpecError(f"status host {doc['host']!r} on key {s.key_expr}")
        out.append(doc)
    return out


def liveliness(session: zenoh.Session, timeout: float = 2.0
               ) -> tuple[set[str], set[tuple[str, str, str]]]:
    """(hosts, exports) alive now: a liveliness query on framebus/** (2 chunks / 4 chunks)."""
    hosts: set[str] = set()
    exports: set[tuple[str, str, str]] = set()
    for reply in session.liveliness().get("framebus/**", timeout=timeout):
        if reply.ok is None:
            continue
        parts = str(reply.ok.key_expr).split("/")
        if len(parts) == 2 and NAME_RE.match(parts[1]):
            hosts.add(parts[1])
        elif len(parts) == 4:
            exports.add(check_key(str(reply.ok.key_expr)))
        # AMBIGUITY: tokens of any other shape are not defined; they are ignored here.
    return hosts, exports
