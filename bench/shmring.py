"""The bare shm loop: the limit of the shm design, without framebus (a benchmark baseline).

One Python writer thread owns a ring of ``SLOTS`` slots in one file (mapped read-write, blocks
allocated up front). Per frame it copies the frame into the next slot with one numpy copy,
stamps the slot (seq, length: 64 bytes before the pixels), and writes a 184-byte header
naming the slot through a one-page FIFO to every reader. Each reader process
(``python -m bench.procs shm FIFO RING``) maps the ring read-only once, reads a header, checks
the slot's stamp and takes a view of the pixels: the same work per frame as a
framebus.client reader of an shm subscriber (which also reads a header, checks a 64-byte stamp
and makes a view; neither touches the pixels).

Flow control is framebus's hold rule in its simplest form: a header is written to a reader
only once its pipe is drained (a one-page pipe polls writable only when empty), so a reader
has at most one unread header and holds at most the slot of the last one it read. Slots in use
are then the one being written, one unread and one held: 4 slots never rewrite a slot a
reader may still be reading. The writer goes at the pace of the slowest reader (every reader
gets every frame), which is the most a single copy per frame can deliver.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the readers import this module for the structs alone: no numpy there
    import numpy as np

SLOTS: Final = 4
PAGE: Final = 4096
FIRST_SLOT: Final = PAGE
STAMP_LEN: Final = 64
# magic, slot, seq, offset, length, publish_mono_ns; padded to 184 bytes
HEADER: Final = struct.Struct("<4sIQQQQ144x")
HEADER_LEN: Final = HEADER.size  # 184
MAGIC: Final = b"BSHM"
STAMP: Final = struct.Struct("<4sIQQ")  # magic, 0, seq, length
STAMP_MAGIC: Final = b"BSSL"


def slot_size(nbytes: int) -> int:
    """The stamp and the payload, in whole pages."""
    return -(-(STAMP_LEN + nbytes) // PAGE) * PAGE


class BareShmWriter:
    """The writer thread of the bare shm loop, its ring file and its FIFOs.

    ``alive`` is set while the thread runs; ``frames`` counts frames sent to every reader.
    With ``fps`` the writer is paced like a camera (the latency baseline); otherwise it goes
    as fast as the slowest reader.
    """

    def __init__(self, workdir: Path, label: str, payloads: list[bytes], readers: int,
                 slots: int = SLOTS, connect_timeout_s: float = 20.0,
                 fps: float | None = None) -> None:
        import numpy as np

        self.ring_path = workdir / f"{label}.ring"
        self.fifos = [workdir / f"{label}-{i}.fifo" for i in range(readers)]
        self.payloads: list[np.ndarray] = [np.frombuffer(p, np.uint8) for p in payloads]
        self.nbytes = len(payloads[0])
        self.slot_size = slot_size(self.nbytes)
        self.slots = slots
        self.connect_timeout_s = connect_timeout_s
        self.period_ns = int(1e9 / fps) if fps else 0  # 0: as fast as the readers go
        self.frames = 0
        self.alive = threading.Event()
        self._stop = threading.Event()
        size = FIRST_SLOT + self.slot_size * slots
        fd = os.open(self.ring_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._ring: np.ndarray = np.frombuffer(self._map, np.uint8)
        for path in self.fifos:
            os.mkfifo(path, 0o600)
        self._thread = threading.Thread(target=self._run, name="bare-shm-writer", daemon=True)

    def start(self) -> None:
        """Start the writer (it waits for every reader to open its FIFO)."""
        self.alive.set()
        self._thread.start()

    def stop(self) -> None:
        """End the writer; remove the FIFOs and the ring file."""
        self._stop.set()
        self._thread.join(5)
        for path in [*self.fifos, self.ring_path]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        del self._ring
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it later
            self._map.close()

    def _connect(self) -> list[int]:
        fds: list[int] = []
        deadline = time.monotonic() + self.connect_timeout_s
        try:
            for path in self.fifos:
                while not self._stop.is_set():
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                        break
                    except OSError:  # ENXIO: no reader yet
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{path}: no reader") from None
                        time.sleep(0.01)
                else:
                    break
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PAGE)  # writable only when drained
                fds.append(fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _run(self) -> None:
        import numpy as np

        fds: list[int] = []
        try:
            fds = self._connect()
            if len(fds) < len(self.fifos):
                return
            poller = select.poll()
            for fd in fds:
                poller.register(fd, 0)
            ring, stop = self._ring, self._stop
            n = 0
            due = time.monotonic_ns()
            while not stop.is_set():
                if self.period_ns:  # paced like a camera
                    now = time.monotonic_ns()
                    if now < due:
                        stop.wait((due - now) / 1e9)
                        continue
                    due = max(due + self.period_ns, now)
                slot = n % self.slots
                base = FIRST_SLOT + slot * self.slot_size
                start = base + STAMP_LEN
                source = self.payloads[n % len(self.payloads)]
                STAMP.pack_into(self._map, base, STAMP_MAGIC, 0, 0, 0)
                np.copyto(ring[start:start + self.nbytes], source)  # the one copy
                n += 1
                STAMP.pack_into(self._map, base, STAMP_MAGIC, 0, n, self.nbytes)
                header = HEADER.pack(MAGIC, slot, n, start, self.nbytes, time.monotonic_ns())
                waiting = set(fds)
                for fd in fds:
                    poller.modify(fd, select.POLLOUT)
                while waiting and not stop.is_set():
                    for fd, events in poller.poll(100):
                        if events & (select.POLLERR | select.POLLHUP):
                            return  # a reader left
                        if fd in waiting:
                            os.write(fd, header)
                            waiting.discard(fd)
                            poller.modify(fd, 0)
                if not waiting:
                    self.frames += 1
        except (BrokenPipeError, TimeoutError):
            pass
        finally:
            self.alive.clear()
            for fd in fds:
                os.close(fd)
