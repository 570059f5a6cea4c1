"""The fan-out loop: one thread, ``select.epoll``, non-blocking FIFO writes.

Invariants (the loop's contract; keep them when changing anything here):

* Nothing blocks the loop: FIFOs are opened O_NONBLOCK (ENXIO means "no reader yet" and is
  retried on a timer), writes are non-blocking ``writev`` calls, no sleep, no lock wait, no
  conversion (renditions are made in decoder threads before a frame is published).
* The epoll interest mask is derived from state: a connected subscriber is registered with
  EPOLLOUT exactly while its outbox has bytes to write, and with an empty mask otherwise
  (EPOLLERR/EPOLLHUP are always reported, so a reader leaving is noticed even when idle).
  The exception is an shm subscriber on a one-page pipe (``drain_wakes``): it is registered
  once, edge-triggered, for EPOLLOUT, which then fires exactly when its reader drains the
  pipe, i.e. begins a message; a mask changed twice per message cost two syscalls each.
* Frames are never torn: ``Outbox`` finishes a begun message before anything else, and a
  reader that leaves loses only whole frames; the next reader starts at a message boundary.
* Other threads talk to the loop only through thread-safe deques plus an eventfd wake-up:
  decoder threads push camera names (``wake``), the control plane pushes commands (``call``).
* Payloads are sent as memoryviews of the decoded frame's planes: no per-subscriber copies.
* shm subscribers (``transport: shm``) get header-only messages naming a slot the decoder
  filled once. Their pipe is one page, so EPOLLOUT means "drained"; a new message is begun
  only once the reader has begun the last one (``HoldLedger.may_send``, from FIONREAD), so a
  subscriber pins at most its held, unread and pending slots. The slot pool's lock is the only
  lock the loop takes, for a few integer operations. A multi-camera shm subscriber takes each
  camera's frames from that camera's segment (``shm_keys``), through its one pipe and ledger,
  and pins at most 3 slots in each (``Subscriber.pinned_by_camera`` says why).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from framebus.errors import FifoError
from framebus.exporter import Seat, ShmExporter
from framebus.fifo import FifoMissing, ensure_fifo, open_writer, set_pipe_size, unread_bytes
from framebus.sending import (
    LATENCY_BUCKETS_S,
    PARK_S,
    SHM_PIPE_SIZE,
    LatencyHistogram,
    StateSending,
    Subscriber,
    SubscriberSpec,
    fifo_outgoing,
    release,
    shm_outgoing,
    state_outgoing,
)
from framebus.store import CameraStatus, LatestFrameStore, Payload, Rendition, StoredFrame
from framebus.wire import StreamState

__all__ = ["LATENCY_BUCKETS_S", "FanoutLoop", "LatencyHistogram", "Subscriber", "SubscriberSpec"]

log = logging.getLogger("framebus.fanout")

RETIRE_S = 2  # how long a removed subscriber gets to take its in-flight message
_ERR = select.EPOLLERR | select.EPOLLHUP
_DRAINED = select.EPOLLOUT | select.EPOLLET


class FanoutLoop:
    """Writes the newest frames of each camera to every subscriber of it."""

    def __init__(self, store: LatestFrameStore, open_retry_s: float = 0.2,
                 max_tick_s: float = 1.0) -> None:
        self.store = store
        self.max_tick_s = max_tick_s  # the loop ticks (on_tick) at least this often
        self.subscribers: dict[str, Subscriber] = {}
        self.ticks = 0
        self.on_tick: Callable[[], None] | None = None  # e.g. the systemd watchdog ping
        self._open_retry_ns = int(open_retry_s * 1e9)
        self._by_fd: dict[int, Subscriber] = {}
        self._by_camera: dict[str, list[Subscriber]] = {}
        self._epoll = select.epoll()
        self._waker = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._waker, select.EPOLLIN)
        self._retiring: list[Subscriber] = []
        self._woken: deque[str] = deque()
        self._states_woken: deque[tuple[str, CameraStatus]] = deque()
        self._commands: deque[Callable[[], object]] = deque()
        self._stopping = False
        self._drain_deadline_ns = 0
        # (release at, what to do) after we closed: drop a pin, then vacate the seats
        self._parked: list[tuple[int, Callable[[], None]]] = []
        if store.exporter is None:
            store.exporter = ShmExporter()
        self.exporter: ShmExporter = store.exporter
        self._thread = threading.Thread(target=self._run, name="fanout", daemon=True)
        store.add_listener(self.wake)
        store.add_state_listener(self.wake_state)

    # -- other threads ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def wake(self, camera: str) -> None:
        """Decoder thread: a new frame of ``camera`` is in the store."""
        self._woken.append(camera)
        os.eventfd_write(self._waker, 1)

    def wake_state(self, camera: str, status: CameraStatus) -> None:
        """Decoder or watchdog thread: ``camera``'s state changed; tell its subscribers."""
        self._states_woken.append((camera, status))
        os.eventfd_write(self._waker, 1)

    def call(self, command: Callable[[], object]) -> None:
        """Run ``command`` inside the loop thread, soon."""
        self._commands.append(command)
        os.eventfd_write(self._waker, 1)

    def add(self, spec: SubscriberSpec) -> bool:
        """Create the FIFO (FifoError if the path is unsafe) and start serving it; True if
        this call made the FIFO (it was not there)."""
        created = ensure_fifo(spec.path, spec.mode, spec.group)
        for camera in spec.all_cameras:
            self.store.want(camera, spec.rendition)
        sub = Subscriber(spec)
        for camera, key in sub.shm_keys.items():  # shm: one segment per camera
            seat = sub.shm_seats[camera] = self.exporter.want(key)
            sub.shm_keys[camera] = seat.key  # the exporter's own: lookups match by identity
        self.call(functools.partial(self._add, sub))
        return created

    def remove(self, name: str) -> None:
        """Stop serving a subscriber (its reader sees EOF at a message boundary soon)."""
        self.call(functools.partial(self._remove, name))

    def send_once(self, fd: int, frame: StoredFrame, payload: Payload, timeout_s: float,
                  on_closed: Callable[[bool], None]) -> None:
        """Write one message to an already open FIFO ``fd`` (taken over: the loop closes it),
        without blocking; ``on_closed(complete)`` runs in the loop thread when done or cut off
        at the deadline."""
        spec = SubscriberSpec(name=f"once-{fd}", camera=frame.camera, rendition=Rendition(
            payload.format, payload.width, payload.height), path=Path())
        sub = Subscriber(spec)
        sub.fd, sub.on_closed, sub.retiring = fd, on_closed, True
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        self.call(functools.partial(self._start_once, sub, frame, payload, deadline))

    def _start_once(self, sub: Subscriber, frame: StoredFrame, payload: Payload,
                    deadline_ns: int) -> None:
        sub.retire_deadline_ns = deadline_ns
        self._by_fd[sub.fd] = sub
        self._epoll.register(sub.fd, 0)
        self._retiring.append(sub)
        sub.outbox.offer(fifo_outgoing(frame, payload), time.monotonic_ns())
        self._flush(sub)

    def stop(self, drain_s: float = 1.0) -> None:
        """Finish in-flight messages (up to ``drain_s``), close every FIFO, end the thread."""
        def begin_stop() -> None:
            self._stopping = True
            self._drain_deadline_ns = time.monotonic_ns() + int(drain_s * 1e9)
            for sub in self.subscribers.values():
                sub.outbox.drop_pending()
        self.call(begin_stop)
        if self._thread.is_alive():
            self._thread.join(drain_s + 2.0)
        self._epoll.close()
        os.close(self._waker)
        self.exporter.close()  # unlink every segment; readers' mappings stay valid

    # -- the loop thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic_ns()
            if self._stopping and (now >= self._drain_deadline_ns or not self._busy()):
                break
            self._open_readers(now)
            if self._retiring:
                self._reap_retiring(now)
            if self._parked and now >= self._parked[0][0]:
                self._unpark(now)
            for fd, events in self._epoll.poll(self._timeout_s(now)):
                if fd == self._waker:
                    self._drain_wakeups()
                    continue
                sub = self._by_fd.get(fd)
                if sub is None:
                    continue
                if events & select.EPOLLOUT:
                    self._flush(sub)
                elif events & _ERR and _no_reader(fd):
                    self._reader_left(sub)
            self.ticks += 1
            if self.on_tick is not None:
                self.on_tick()
        for sub in [*self.subscribers.values(), *self._retiring]:
            self._close(sub)
        self._unpark(now)  # stopping: every parked pin goes (the segments are unlinked next)

    def _busy(self) -> bool:
        subs = [*self.subscribers.values(), *self._retiring]
        return any(s.connected and s.outbox.has_bytes for s in subs)

    def _timeout_s(self, now: int) -> float:
        if self._stopping or self._retiring:
            return 0.02
        if self._parked:
            return min(self.max_tick_s, max(0.0, (self._parked[0][0] - now) / 1e9))
        waiting = [s.next_open_ns for s in self.subscribers.values() if not s.connected]
        if not waiting:
            return self.max_tick_s  # idle tick, so on_tick (the watchdog ping) keeps coming
        return min(self.max_tick_s, max(0.0, (min(waiting) - now) / 1e9))

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._waker)
        while self._commands:
            self._commands.popleft()()
        while self._states_woken:
            camera, status = self._states_woken.popleft()
            for sub in self._by_camera.get(camera, ()):
                if sub.connected and not self._stopping:
                    self._offer_state(sub, camera, status)
        seen: set[str] = set()
        while self._woken:
            camera = self._woken.popleft()
            if camera not in seen and not self._stopping:
                seen.add(camera)
                self._publish(camera)

    def _publish(self, camera: str) -> None:
        frame = self.store.latest(camera)
        if frame is None:
            return
        now = time.monotonic_ns()
        for sub in self._by_camera.get(camera, ()):
            if sub.connected:
                self._offer(sub, frame, now)

    def _offer_state(self, sub: Subscriber, camera: str, status: CameraStatus) -> None:
        if sub.spec.state_messages:
            sub.outbox.offer_state(state_outgoing(camera, status.message))
            self._flush(sub)

    def _offer(self, sub: Subscriber, frame: StoredFrame, now: int) -> None:
        payload = frame.renditions.get(sub.spec.rendition)
        if payload is None:
            return  # made before this subscriber registered its rendition: skip, never convert
        last = sub.last_offered.get(frame.camera, 0)
        if frame.seq <= last:
            return
        seat = sub.shm_seats.get(frame.camera)  # the segment of this camera's frames
        if seat is None:
            outgoing = fifo_outgoing(frame, payload)
        else:
            # only admitted seats pin: the segment has room for them alone
            shm = frame.shm.get(seat.key) if seat.admitted else None
            sub.shm_state(frame.camera, self.exporter.error(seat))
            found = None if shm is None else shm_outgoing(frame, payload, shm)
            if found is None:
                return  # no segment or no seat yet (the error says why), or the frame is gone
            outgoing = found
        superseded = frame.seq - last - 1 if last else 0
        sub.last_offered[frame.camera] = frame.seq
        sub.outbox.offer(outgoing, now, superseded)
        self._flush(sub)

    def _flush(self, sub: Subscriber) -> None:
        outbox, ledger = sub.outbox, sub.ledger
        gate_open = True
        while True:
            if ledger is not None and not outbox.mid_message:
                unread = unread_bytes(sub.fd)
                for held in ledger.consumed(unread):  # the reader began a later message
                    release(held)
                gate_open = ledger.may_send(unread)
                if not gate_open:
                    break
                sub.message_start = ledger.written
            chunks = outbox.chunks()
            if not chunks:
                break
            try:
                written = os.writev(sub.fd, chunks)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the reader left (SIGPIPE is ignored by the daemon)
                self._reader_left(sub)
                return
            if ledger is not None:
                ledger.advance(written)
            if outbox.wrote(written) and (done := outbox.last_completed) is not None:
                if not isinstance(done, StateSending):
                    sub.observe_latency(done.encoded.header.camera,
                                        (time.monotonic_ns() - done.publish_mono_ns) / 1e9)
                if ledger is not None:
                    ledger.record(sub.message_start, done)  # its pin travels with the ledger
        if sub.retiring and not outbox.has_bytes:
            self._close(sub)  # the reaper forgets it on its next pass
            return
        self._update_mask(sub, gate_open)

    def _update_mask(self, sub: Subscriber, gate_open: bool = True) -> None:
        # a closed shm gate waits for the pipe to drain: EPOLLOUT reports exactly that on a
        # one-page pipe (edge-triggered, set once: _watch); on a larger one it would spin, so
        # the next publish re-checks instead
        if sub.mask == _DRAINED:
            return
        waits = sub.outbox.has_bytes and (gate_open or sub.drain_wakes)
        wanted = select.EPOLLOUT if waits else 0
        if wanted != sub.mask:
            self._epoll.modify(sub.fd, wanted)
            sub.mask = wanted

    def _watch(self, sub: Subscriber) -> None:
        """The interest a (newly) connected subscriber keeps: edge-triggered EPOLLOUT for good
        when EPOLLOUT means "drained" (one-page shm pipe), else derived per flush."""
        wanted = _DRAINED if sub.drain_wakes else 0
        if wanted != sub.mask:
            self._epoll.modify(sub.fd, wanted)
            sub.mask = wanted

    def _open_readers(self, now: int) -> None:
        if self._stopping:
            return
        for sub in self.subscribers.values():
            if sub.connected or now < sub.next_open_ns:
                continue
            sub.next_open_ns = now + self._open_retry_ns
            try:
                fd = open_writer(sub.spec.path)
            except FifoMissing:  # deleted under us: make it again (mkfifo does not block)
                try:
                    ensure_fifo(sub.spec.path, sub.spec.mode, sub.spec.group)
                    log.warning("subscriber %s: FIFO %s was deleted; recreated",
                                sub.spec.name, sub.spec.path, extra={"SUBSCRIBER": sub.spec.name})
                except (FifoError, OSError) as exc:
                    sub.error = f"{sub.spec.path}: cannot recreate: {exc}"
                continue
            except FifoError as exc:
                if sub.error != str(exc):
                    log.error("subscriber %s: %s", sub.spec.name, exc,
                              extra={"SUBSCRIBER": sub.spec.name})
                sub.error = str(exc)
                continue
            if fd is None:
                continue
            if unread_bytes(fd):
                # A reader that reopened before we noticed it leave joined the old pipe, which
                # still holds part of a message: writing now would splice. Close, so it sees
                # that part end in EOF (a truncated message its client drops), and retry.
                os.close(fd)
                continue
            sub.error = ""
            sub.fd, sub.mask = fd, 0
            shm = sub.ledger is not None
            sub.pipe_size = set_pipe_size(fd, SHM_PIPE_SIZE if shm else sub.spec.pipe_size)
            sub.drain_wakes = shm and sub.pipe_size == SHM_PIPE_SIZE
            sub.connects += 1
            self._by_fd[fd] = sub
            self._epoll.register(fd, 0)
            self._watch(sub)
            log.info("subscriber %s: reader connected (pipe %d bytes)", sub.spec.name,
                     sub.pipe_size, extra={"SUBSCRIBER": sub.spec.name})
            for camera in sub.spec.all_cameras:  # a new reader starts with the newest frames
                status = self.store.state(camera)  # and hears why a camera sends none
                if status is not None and status.state is not StreamState.STREAMING:
                    self._offer_state(sub, camera, status)
                frame = self.store.latest(camera)
                if frame is not None:
                    self._offer(sub, frame, now)

    def _reader_left(self, sub: Subscriber) -> None:
        # the reader closed its end, so it holds nothing any more; close ours first (a
        # reopen racing this sees a fresh pipe sooner), then let its slots go
        held = sub.ledger.clear() if sub.ledger is not None else []
        self._close(sub)
        for token in held:
            release(token)
        if sub.retiring:  # a removed or one-shot subscriber: nothing to reconnect
            return
        sub.outbox.reader_gone()
        sub.last_offered = {}
        sub.disconnects += 1
        sub.next_open_ns = 0  # the next reader may already be waiting
        log.info("subscriber %s: reader left", sub.spec.name, extra={"SUBSCRIBER": sub.spec.name})

    def _close(self, sub: Subscriber) -> None:
        if sub.ledger is not None and len(sub.ledger):
            # we end the stream: the reader may still be using its last frame until it reads
            # (and sees EOF), so its pins outlive the descriptor by PARK_S
            release_at = time.monotonic_ns() + int(PARK_S * 1e9)
            self._parked.extend((release_at, functools.partial(release, held))
                                for held in sub.ledger.clear())
        if sub.removed and sub.shm_seats:  # its places go once its last pins have gone
            seats, sub.shm_seats = list(sub.shm_seats.values()), {}
            vacate = functools.partial(self._vacate, seats)
            if self._parked and self._parked[-1][0] > time.monotonic_ns():
                self._parked.append((self._parked[-1][0], vacate))
            else:
                vacate()
        if sub.fd >= 0:
            self._by_fd.pop(sub.fd, None)
            self._epoll.unregister(sub.fd)
            os.close(sub.fd)
            sub.fd, sub.mask = -1, 0
        if sub.on_closed is not None:
            callback, sub.on_closed = sub.on_closed, None
            callback(sub.outbox.stats.sent > 0)

    def _add(self, sub: Subscriber) -> None:
        old = self.subscribers.get(sub.spec.name)
        if old is not None:  # changed options: keep the reader connected through the change
            self._remove(old.spec.name, keep_open=old.spec.path == sub.spec.path)
        self.subscribers[sub.spec.name] = sub
        for camera in sub.spec.all_cameras:
            self._by_camera.setdefault(camera, []).append(sub)
        self._adopt(sub)

    def _adopt(self, sub: Subscriber) -> None:
        """Take over the open FIFO of a retiring subscriber on the same path (a reload that
        changed its options, or a DELETE then POST): its in-flight message finishes first and
        the reader stays connected. Opening the path again instead would put a second writer
        into the same pipe, between the halves of a message: a torn frame."""
        for old in self._retiring:
            if old.spec.path == sub.spec.path and old.connected and old.on_closed is None:
                self._retiring.remove(old)
                sub.fd, sub.mask, sub.pipe_size = old.fd, old.mask, old.pipe_size
                sub.connects = 1
                self._by_fd[sub.fd] = sub
                old.outbox.retarget(sub.spec.max_fps)
                sub.outbox = old.outbox  # the in-flight message continues, counts carry on
                if sub.ledger is not None and old.ledger is not None:
                    sub.ledger, old.ledger = old.ledger, None  # same stream, same holds
                    sub.drain_wakes = old.drain_wakes
                elif sub.ledger is not None or old.ledger is not None:  # transport changed
                    if sub.ledger is not None:  # what the pipe holds now precedes the ledger
                        sub.ledger.advance(unread_bytes(sub.fd))  # the rest is counted as
                        sub.message_start = 0  # written, a FIFO message the ledger ignores
                    sub.pipe_size = set_pipe_size(
                        sub.fd, SHM_PIPE_SIZE if sub.ledger is not None else sub.spec.pipe_size)
                    sub.drain_wakes = sub.ledger is not None and sub.pipe_size == SHM_PIPE_SIZE
                self._watch(sub)
                old.fd = -1
                self._close(old)  # parks the holds of a transport change
                return

    def _remove(self, name: str, keep_open: bool = False) -> None:
        sub = self.subscribers.pop(name, None)
        if sub is None:
            return
        for camera in sub.spec.all_cameras:
            self._by_camera[camera].remove(sub)
            self.store.unwant(camera, sub.spec.rendition)
        sub.removed = True
        for seat in sub.shm_seats.values():  # sized without it; its place stays until _close
            self.exporter.leave(seat)
        sub.outbox.drop_pending()
        if sub.connected and (sub.outbox.has_bytes or keep_open):  # never cut a message
            sub.retiring = True
            sub.retire_deadline_ns = time.monotonic_ns() + RETIRE_S * 1_000_000_000
            self._retiring.append(sub)
        else:
            self._close(sub)

    def _reap_retiring(self, now: int) -> None:
        for sub in list(self._retiring):
            if not sub.connected or not sub.outbox.has_bytes or now >= sub.retire_deadline_ns:
                self._close(sub)  # a reader too slow to take one message in time is cut off
                self._retiring.remove(sub)

    def _unpark(self, now: int) -> None:
        while self._parked and (self._stopping or self._parked[0][0] <= now):
            self._parked.pop(0)[1]()

    def _vacate(self, seats: list[Seat]) -> None:
        for seat in seats:
            self.exporter.vacate(seat)


def _no_reader(fd: int) -> bool:
    """True while the pipe has no reader. epoll's EPOLLERR may be stale by the time it is
    handled: a reader that closed and reopened at once is in the same pipe again, at the same
    message boundary, and dropping it now would only cost it an EOF and a reopen."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
