"""The iceoryx2 baseline: Eclipse iceoryx2's zero-copy publish-subscribe from Python.

One publisher thread per camera (:class:`Iox2Writer`) in the benchmark process; each reader
is a process (``python -m bench.procs iox2 SERVICE``, :func:`open_reader`). Per frame the
publisher loans an uninitialised sample sized for the frame (a dynamic slice of u8 in the
service's shared-memory data segment), copies the frame in with one numpy copy, writes a
16-byte user header (seq, CLOCK_MONOTONIC ns at publish) and sends it; then it notifies the
readers through an event service of the same name. A reader sleeps in ``Listener.timed_wait``
(a blocking wait in the kernel, GIL released: the Python binding's subscriber itself can only
be polled, ``receive()`` returns None when empty), then takes every sample its buffer holds,
reads the header and takes a memoryview of the pixels without touching them: the same work as
a framebus.client reader of an shm subscriber.

Newest-wins, as framebus: the service overflows safely (a sample sent to a full subscriber
buffer displaces the oldest unread one, never one a reader holds) and each subscriber buffers
``BUFFER`` sample, framebus's one pending frame per subscriber; the publisher never waits for
a reader. Unpaced (the fan-out benchmark), the publisher goes as EagerPublisher does: it sends
the next frame as soon as any reader has taken the newest one, which readers tell it through a
second event service (``SERVICE/taken``); a publisher copying frames nobody takes would only
take a core from the readers on a small machine. Paced (``fps``, the latency benchmark), it
publishes like a camera and the readers send nothing back.

Every run uses its own service names (pid, label, random suffix); the ports, services and nodes
are released when the writer stops and when a reader exits, so iceoryx2 removes the service's
shared memory (``/dev/shm/iox2_*``) and its entries under ``/tmp/iceoryx2``; a writer first
removes what the nodes of killed processes left.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # numpy and iceoryx2 are imported where used: procs.py imports this module
    import numpy as np

BUFFER: Final = 1  # samples a subscriber buffers: framebus's one pending frame
# "taken" events carry seq % TAKEN_IDS, so a late one for an older frame (16 readers all
# report each frame they take) does not release the publisher early
TAKEN_IDS: Final = 256
WAIT_S: Final = 0.1  # the longest wait in one call, so SIGUSR1 and stop() are seen
READY_TIMEOUT_S: Final = 10.0


class FrameHeader(ctypes.Structure):
    """The user header of every sample: what framebus's frame header says of timing."""

    _fields_ = [("seq", ctypes.c_uint64), ("publish_ns", ctypes.c_uint64)]

    @staticmethod
    def type_name() -> str:
        """The name both sides give the header type (iceoryx2 checks it when opening)."""
        return "FramebusBenchFrameHeader"


def _iox2() -> Any:
    """The iceoryx2 module, errors only (its default-config warning would go to stderr)."""
    import iceoryx2 as iox2

    iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
    return iox2


def iox2_note() -> str:
    """What the iceoryx2 rows measure, for a benchmark's notes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("iceoryx2")
    except PackageNotFoundError:
        release = "not installed"
    return (f"iceoryx2 {release} (bench.iox2): a publisher thread loans a sample of the "
            "frame's size, copies the frame in (one numpy copy), sets a 16-byte user header "
            "(seq, publish ns), sends it and notifies an event service; safe overflow, "
            f"subscriber buffer {BUFFER} (newest wins, framebus's one pending frame), one "
            "loaned sample; each subscriber process sleeps in the event listener's blocking "
            "wait (the Python subscriber itself can only be polled), then reads the header and "
            "takes a memoryview of the pixels without touching them.")


def _node(iox2: Any) -> Any:
    # signal handling off: a node would otherwise catch SIGINT/SIGTERM, and Children.close()
    # ends readers with SIGTERM
    return (iox2.NodeBuilder.new().signal_handling_mode(iox2.SignalHandlingMode.Disabled)
            .create(iox2.ServiceType.Ipc))


def _pubsub(iox2: Any, node: Any, service: str, readers: int, create: bool) -> Any:
    builder = (node.service_builder(iox2.ServiceName.new(service))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8]).user_header(FrameHeader)
               .enable_safe_overflow(True).history_size(0)
               .subscriber_max_buffer_size(BUFFER).subscriber_max_borrowed_samples(1)
               .max_subscribers(readers).max_publishers(1))
    return builder.create() if create else builder.open()


def _event(iox2: Any, node: Any, service: str, listeners: int, notifiers: int,
           create: bool) -> Any:
    builder = (node.service_builder(iox2.ServiceName.new(service)).event()
               .max_listeners(listeners).max_notifiers(notifiers)
               .event_id_max_value(TAKEN_IDS - 1))
    return builder.create() if create else builder.open()


class Iox2Writer:
    """One iceoryx2 publisher thread, its services and its ports.

    ``alive`` is set while the thread runs; ``frames`` counts frames sent, ``late`` paced
    publishes more than a period behind. With ``fps`` the writer is paced like a camera
    (``phase_s`` after start); otherwise it sends a frame as soon as a reader has taken the
    last one.
    """

    def __init__(self, label: str, payloads: list[bytes], readers: int,
                 fps: float | None = None, phase_s: float = 0.0) -> None:
        import numpy as np

        self.service = f"framebus-bench/{os.getpid()}/{label}/{secrets.token_hex(4)}"
        self.readers = readers
        self.payloads: list[np.ndarray] = [np.frombuffer(p, np.uint8) for p in payloads]
        self.nbytes = len(payloads[0])
        self.period_ns = int(1e9 / fps) if fps else 0  # 0: as fast as the readers take frames
        self.phase_ns = int(phase_s * 1e9)
        self.frames = 0
        self.late = 0
        self.alive = threading.Event()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"iox2-{label}", daemon=True)

    def reader_args(self) -> list[str]:
        """``bench.procs`` arguments of one reader of this writer."""
        return ["iox2", self.service, *([] if self.period_ns else ["--feedback"])]

    def start(self) -> None:
        """Start the thread; return once the services exist (readers open them, not create)."""
        self.alive.set()
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.error is not None:
            raise RuntimeError(f"iceoryx2 writer {self.service}: {self.error or 'no service'}")

    def stop(self) -> None:
        """End the thread (its ports and services go with it)."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        iox2 = _iox2()
        node = pubsub = event = taken = publisher = notifier = listener = None
        try:
            node = _node(iox2)
            node.try_cleanup_dead_nodes()  # what readers killed in an earlier run left behind
            pubsub = _pubsub(iox2, node, self.service, self.readers, create=True)
            event = _event(iox2, node, self.service, self.readers, 1, create=True)
            # one sample loaned at a time; the data segment holds every reader's buffered
            # and held sample besides, all of one frame's size
            publisher = (pubsub.publisher_builder().initial_max_slice_len(self.nbytes)
                         .max_loaned_samples(1).create())
            notifier = event.notifier_builder().create()
            if not self.period_ns:
                taken = _event(iox2, node, f"{self.service}/taken", 1, self.readers,
                               create=True)
                listener = taken.listener_builder().create()
            self._ready.set()
            self._loop(iox2, publisher, notifier, listener)
        except BaseException as exc:  # start() raises it; later, alive clears: say why
            self.error = exc
            if self._ready.is_set():
                traceback.print_exc()
        finally:
            self.alive.clear()
            self._ready.set()
            for port in (listener, notifier, publisher):
                if port is not None:
                    port.delete()
            del pubsub, event, taken, node  # the last owner's drop removes the service

    def _loop(self, iox2: Any, publisher: Any, notifier: Any, listener: Any) -> None:
        import numpy as np

        stop, payloads, nbytes = self._stop, self.payloads, self.nbytes
        due = time.monotonic_ns() + self.phase_ns
        n = 0
        while not stop.is_set():
            if self.period_ns:  # paced like a camera
                now = time.monotonic_ns()
                if now < due:
                    stop.wait((due - now) / 1e9)
                    continue
                due += self.period_ns
                if due <= now:
                    self.late += 1
                    due = now + self.period_ns
            sample = publisher.loan_slice_uninit(nbytes)
            pixels = np.frombuffer(sample.payload().as_memory_view(), np.uint8)
            np.copyto(pixels, payloads[n % len(payloads)])  # the one copy
            del pixels
            n += 1
            header = sample.user_header().contents
            header.seq = n
            header.publish_ns = time.monotonic_ns()
            sample.assume_init().send()
            notifier.notify()
            self.frames += 1
            if listener is not None:
                self._wait_taken(iox2, listener, n % TAKEN_IDS)

    def _wait_taken(self, iox2: Any, listener: Any, taken_id: int) -> None:
        """Until a reader has taken frame ``taken_id``, or 10 ms (EagerPublisher's wait,
        which also paces publishing before any reader is connected)."""
        deadline = time.monotonic_ns() + 10_000_000
        while not self._stop.is_set() and (left := deadline - time.monotonic_ns()) > 0:
            activations = listener.timed_wait(iox2.Duration.from_nanos(left))
            if any(a.id.as_value == taken_id for a in activations):
                return


class Iox2Reader:
    """A reader's ports (in the reader process): the subscriber and the wake-up listener,
    with ``feedback`` a notifier telling the publisher a frame was taken."""

    def __init__(self, service: str, feedback: bool) -> None:
        self.iox2 = iox2 = _iox2()
        self.node = _node(iox2)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # the writer creates the services before starting readers: a retry is rare
            try:
                self.pubsub = _pubsub(iox2, self.node, service, 1, create=False)
                self.event = _event(iox2, self.node, service, 1, 1, create=False)
                self.taken = (_event(iox2, self.node, f"{service}/taken", 1, 1, create=False)
                              if feedback else None)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.subscriber = self.pubsub.subscriber_builder().buffer_size(BUFFER).create()
        self.listener = self.event.listener_builder().create()
        self.notifier = (self.taken.notifier_builder().create()
                         if self.taken is not None else None)
        self.wait = iox2.Duration.from_secs_f64(WAIT_S)

    def close(self) -> None:
        """Release the ports, services and node."""
        for port in (self.notifier, self.listener, self.subscriber):
            if port is not None:
                port.delete()
        del self.taken, self.event, self.pubsub, self.node
