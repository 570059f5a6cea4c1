"""Shared-memory segments: the files shm payloads live in, for the daemon and for readers.

Layout of a segment (docs/PROTOCOL.md section 12), a file named ``fbshm-<pid>-<n>`` in the
directory of the FIFOs it serves:

    page 0        segment header: magic "FBSM", u32 version 1, u64 slot_size, u64 slot_count,
                  u64 first_slot (4096), u32 pid of the daemon that made it
    slot i        at first_slot + i * slot_size: a 64-byte stamp (magic "FBSL", u32 0,
                  u64 token, u64 seq, u64 length), then the payload (64-byte aligned)

Invariants:

* A segment never shrinks and its blocks are allocated (``posix_fallocate``) before it is
  mapped or named to anyone, so no access inside it can fault for lack of space: no SIGBUS,
  in the daemon or a reader. A full file system is an error when the segment is made.
* Only the daemon's user may write a segment (mode ``0600 | fifo_mode & 0o044``, the FIFO's
  group); readers map it read-only. A retired segment is unlinked once none of its slots is
  pinned, so every message a reader may still read names a file that exists; mappings keep it
  alive after that. Segments of daemons no longer running are removed at start
  (``remove_stale``), in every directory the daemon may have made them in; an entry at a
  segment's name that is not such a segment (a directory, symlink, FIFO, another user's file,
  another header) is left alone and reported, never followed, never a reason not to start.
* Names are not predictable: ``fbshm-<pid>-<15 random digits>``, created ``O_EXCL |
  O_NOFOLLOW`` with a few retries, so nobody can plant an entry at the name we will pick.
* The writer clears a slot's token before copying and stamps it after, so a reader can tell a
  slot that was rewritten under it (which the hold rule forbids) from the frame it was sent.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import mmap
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from framebus.errors import FramebusError, ProtocolError
from framebus.fifo import describe_kind
from framebus.slots import SlotPool, SlotRef
from framebus.wire import SHM_ALIGN, EncodedHeader, FrameHeader, ShmLocation

if TYPE_CHECKING:  # for the annotation only: readers import this module and need no PyAV
    from framebus.rendition import Payload

SEGMENT_MAGIC: Final = b"FBSM"
STAMP_MAGIC: Final = b"FBSL"
SEGMENT_VERSION: Final = 1
SEGMENT_HEADER: Final = struct.Struct("<4sIQQQI")
STAMP: Final = struct.Struct("<4sIQQQ")
FIRST_SLOT: Final = 4096
PAGE: Final = 4096
_STALE = re.compile(r"fbshm-([0-9]{1,10})-[0-9]{1,20}")
NAME_DIGITS: Final = 15  # the random part: PROTOCOL.md rule S4 allows 1..15 digits
NAME_TRIES: Final = 5  # EEXIST at 15 random digits is someone planting, not chance


class ShmError(FramebusError):
    """A segment could not be made (no space, permissions): the subscriber gets this error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # metric label: no_space, permission, error (exists: retried)


def slot_size_for(nbytes: int) -> int:
    """Bytes per slot: the stamp, the payload, rounded up to whole pages."""
    return -(-(SHM_ALIGN + nbytes) // PAGE) * PAGE


def segment_mode(fifo_mode: int) -> int:
    """The daemon writes; whoever may read the FIFO may read the segment, nobody else writes."""
    return 0o600 | (fifo_mode & 0o044)


class Segment:
    """One segment file, mapped read-write by the daemon, with its slot pool."""

    def __init__(self, path: Path, slot_size: int, slot_count: int, mode: int,
                 group: str | None, first_token: int) -> None:
        self.path = path
        self.name = path.name
        self.slot_size = slot_size
        self.size = FIRST_SLOT + slot_size * slot_count
        self.retired = False  # no new frames go here; unlinked once no slot is pinned
        self.geometry: tuple[object, ...] = ()  # what its frames look like (exporter's key)
        self._map = _create(path, self.size, mode, group)
        SEGMENT_HEADER.pack_into(self._map, 0, SEGMENT_MAGIC, SEGMENT_VERSION, slot_size,
                                 slot_count, FIRST_SLOT, os.getpid())
        self.pool = SlotPool(slot_count, first_token)

    def write(self, ref: SlotRef, seq: int, payload: Payload) -> ShmLocation:
        """Copy a payload into a claimed slot (the one copy of the shm path) and stamp it."""
        base = FIRST_SLOT + ref.slot * self.slot_size
        if SHM_ALIGN + payload.nbytes > self.slot_size:
            raise ValueError(f"payload of {payload.nbytes} bytes exceeds the slot")
        STAMP.pack_into(self._map, base, STAMP_MAGIC, 0, 0, 0, 0)
        offset = base + SHM_ALIGN
        for buffer in payload.buffers:  # numpy copies without holding the GIL
            source = np.frombuffer(buffer, np.uint8)
            np.copyto(np.frombuffer(self._map, np.uint8, len(source), offset), source)
            offset += len(source)
        STAMP.pack_into(self._map, base, STAMP_MAGIC, 0, ref.token, seq, payload.nbytes)
        return ShmLocation(self.name, base + SHM_ALIGN, payload.nbytes, ref.token)

    def unlink(self) -> None:
        """Remove the file; readers that mapped it keep their mappings."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _create(path: Path, size: int, mode: int, group: str | None) -> mmap.mmap:
    try:
        free = os.statvfs(path.parent)
    except OSError as exc:
        raise ShmError("error", f"{path.parent}: cannot inspect: {exc.strerror}") from None
    available = free.f_bavail * free.f_frsize
    if available < size:
        raise ShmError("no_space", f"{path.parent}: a {size / 2**20:.1f} MiB shm segment does "
                       f"not fit in {available / 2**20:.1f} MiB free (enlarge the tmpfs or use "
                       "transport: fifo)")
    try:
        gid = -1 if group is None else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ShmError("error", f"{path}: group {group!r} does not exist") from None
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # O_EXCL: whatever is there (a symlink too) is never touched
        raise ShmError("exists", f"{path}: something is already there") from None
    except OSError as exc:
        raise ShmError("permission" if exc.errno in (errno.EACCES, errno.EPERM) else "error",
                       f"{path}: cannot create the shm segment: {exc.strerror}") from None
    try:
        os.posix_fallocate(fd, 0, size)  # every block now, so no page can fault later
        os.fchmod(fd, mode)
        if gid >= 0:
            os.fchown(fd, -1, gid)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        path.unlink(missing_ok=True)
        reason = "no_space" if exc.errno == errno.ENOSPC else "error"
        raise ShmError(reason, f"{path}: cannot allocate {size / 2**20:.1f} MiB: "
                       f"{exc.strerror}") from None
    finally:
        os.close(fd)


@dataclass
class StaleScan:
    """What ``remove_stale`` did: the dead daemons' segments it removed and, per directory,
    the entries at a segment's name it left alone and why."""

    removed: list[Path] = field(default_factory=list)
    skipped: dict[Path, list[str]] = field(default_factory=dict)


def remove_stale(directories: list[Path]) -> StaleScan:
    """Remove segments whose daemon is no longer running (left by a crash or SIGKILL).

    Only our own regular files with a segment header naming the same dead pid as the name are
    removed. Anything else at such a name (a directory, symlink, FIFO, another user's file)
    may be someone's planting in a shared directory: it is skipped, never opened if it is not
    a regular file, never followed, and never an error."""
    scan = StaleScan()
    for directory in dict.fromkeys(directories):
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _STALE.fullmatch(entry.name)
            if match is None or _running(int(match[1])):
                continue
            why = _not_ours(entry, int(match[1]))
            if why:
                scan.skipped.setdefault(directory, []).append(f"{entry.name} ({why})")
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                scan.removed.append(entry)
    return scan


def _not_ours(entry: Path, pid: int) -> str:
    """'' if ``entry`` is a segment this user's daemon ``pid`` made, else what it is."""
    try:
        before = os.lstat(entry)
        if not stat.S_ISREG(before.st_mode):  # symlinks, FIFOs, devices: never opened
            return describe_kind(before.st_mode)
        if before.st_uid != os.geteuid():
            return f"owned by uid {before.st_uid}"
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or "cannot open"
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            return "replaced while looked at"
        header = os.pread(fd, SEGMENT_HEADER.size, 0)
    except OSError as exc:
        return exc.strerror or "cannot read"
    finally:
        os.close(fd)
    if len(header) < SEGMENT_HEADER.size:
        return "not a segment"
    magic, version, *_, made_by = SEGMENT_HEADER.unpack(header)
    if (magic, version, made_by) != (SEGMENT_MAGIC, SEGMENT_VERSION, pid):
        return "not a segment of that daemon"
    return ""


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a previous daemon with our pid: it is not us, so it is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_segment_path(directory: Path) -> Path:
    """A name nobody can guess: another user who may write the directory cannot plant
    anything at it beforehand (PROTOCOL.md rule S4's pattern, the second number random)."""
    return directory / f"fbshm-{os.getpid()}-{secrets.randbelow(10**NAME_DIGITS):0{NAME_DIGITS}d}"


def make_segment(directory: Path, slot_size: int, slot_count: int, mode: int,
                 group: str | None, first_token: int) -> Segment:
    """A new segment in ``directory`` at a fresh random name, retried a few times if an entry
    is already there (then ShmError, reason "error")."""
    for _ in range(NAME_TRIES):
        try:
            return Segment(new_segment_path(directory), slot_size, slot_count, mode, group,
                           first_token)
        except ShmError as exc:
            if exc.reason != "exists":
                raise
    raise ShmError("error", f"{directory}: {NAME_TRIES} random shm segment names were all "
                   "taken (is someone planting entries there?)")


@dataclass(slots=True)
class ShmFrame:
    """One frame's copy in one segment slot, and the message header naming it (built once,
    shared by every subscriber of the rendition)."""

    segment: Segment
    ref: SlotRef
    location: ShmLocation
    encoded: EncodedHeader | None = None


@dataclass(slots=True)
class Mapping:
    """A reader's read-only mapping of one segment."""

    name: str
    map: mmap.mmap
    size: int
    uses: int = field(default=0)


class SegmentMaps:
    """Reader side: segment files mapped read-only, reused across frames (one mmap per
    segment, not per frame).

    Lifetime (PROTOCOL.md section 12): a segment belongs to one camera, and once a message of
    that camera names another segment the old one gets no more frames on this stream, so its
    mapping is dropped then (the last frame's views keep it mapped until they go). At most
    ``keep`` mappings stay open whatever a stream names.
    """

    def __init__(self, directory: Path, keep: int = 64) -> None:
        self.directory = directory
        self.keep = keep
        self._maps: dict[str, Mapping] = {}
        self._by_camera: dict[str, str] = {}  # camera -> the segment its frames are in
        self.opened = 0

    def payload(self, header: FrameHeader) -> memoryview | None:
        """A read-only view of the message's payload; None if its slot was rewritten or its
        segment is gone (the frame is stale: skip it). ProtocolError if the segment is not what
        the message says."""
        shm = header.shm
        assert shm is not None
        found = self._maps.get(shm.segment)
        if found is None:
            found = self._open(shm.segment)
            if found is None:
                return None
            previous = self._by_camera.get(header.camera)
            if previous is not None and previous != shm.segment:
                self._maps.pop(previous, None)  # retired for this stream: no frames come
            self._by_camera[header.camera] = shm.segment
        # rule M2 without overflow: hostile offsets near 2**64 must not wrap around
        if shm.length > found.size or shm.offset > found.size - shm.length:
            raise ProtocolError(f"shm payload {shm.offset}+{shm.length} past the end of "
                                f"segment {shm.segment} ({found.size} bytes)")
        if not stamp_matches(found.map, shm, header.seq):
            return None
        return memoryview(found.map)[shm.offset : shm.offset + shm.length]

    def intact(self, header: FrameHeader) -> bool:
        """True while the slot still holds the message's frame."""
        shm = header.shm
        found = None if shm is None else self._maps.get(shm.segment)
        return shm is None or (found is not None and stamp_matches(found.map, shm, header.seq))

    def forget(self) -> None:
        """A new daemon writes the stream: its segments are new, whatever their names."""
        self._maps.clear()
        self._by_camera.clear()

    @property
    def mapped(self) -> list[str]:
        """The segments mapped now, oldest first."""
        return list(self._maps)

    def _open(self, name: str) -> Mapping | None:
        path = self.directory / name
        try:  # O_NONBLOCK: a FIFO planted under a segment's name must not hang us
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None  # gone with a daemon that died: the frame is stale, not the stream
        except OSError as exc:
            raise ProtocolError(f"shm segment {path}: cannot open: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            size = info.st_size
            if not stat.S_ISREG(info.st_mode):
                raise ProtocolError(f"shm segment {path} is not a regular file")
            if size < FIRST_SLOT:
                raise ProtocolError(f"shm segment {path}: {size} bytes, not a segment")
            mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version = SEGMENT_HEADER.unpack_from(mapped, 0)[:2]
        if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
            raise ProtocolError(f"shm segment {path}: bad magic {magic!r} or version {version}")
        while len(self._maps) >= self.keep:  # the oldest goes; views of it keep it mapped
            oldest = next(iter(self._maps))
            del self._maps[oldest]
            for camera in [c for c, n in self._by_camera.items() if n == oldest]:
                del self._by_camera[camera]
        self.opened += 1
        found = self._maps[name] = Mapping(name, mapped, size)
        return found


def stamp_matches(mapped: mmap.mmap, shm: ShmLocation, seq: int) -> bool:
    """The slot's stamp names this write of this frame."""
    magic, _, token, stamped_seq, length = STAMP.unpack_from(mapped, shm.offset - SHM_ALIGN)
    return magic == STAMP_MAGIC and (token, stamped_seq, length) == (shm.token, seq, shm.length)
