"""Consumer and baseline processes the benchmarks start: ``python -m bench.procs KIND ...``.

Each records one sample per frame (CLOCK_MONOTONIC ns at completion, seq, latency, bytes),
prints ``{"first": t}`` at its first frame, and on SIGUSR1 prints every sample as one JSON line
and exits. Kinds:

``fb FIFO``
    framebus.client.Subscriber (what a consumer of the daemon runs).
``raw PATH|- --frame-bytes N [--stamped]``
    the bare-FIFO baseline reader: blocking ``os.readv`` of whole frames into one buffer;
    with ``--stamped`` the writer put its CLOCK_MONOTONIC ns in the first 8 bytes.
``shm FIFO RING``
    the bare shm loop's reader (:mod:`bench.shmring`): maps RING read-only once, reads each
    184-byte header from FIFO, checks the slot's stamp and takes a view of the pixels (what
    framebus.client does with an shm message; neither touches the pixels).
``iox2 SERVICE [--feedback]``
    an iceoryx2 subscriber (:mod:`bench.iox2`): sleeps on the service's event until notified,
    takes each sample, reads its user header and takes a memoryview of the pixels (untouched);
    with ``--feedback`` it tells the publisher each frame it took.
``zmq ENDPOINT [--hwm N]``
    a ZeroMQ SUB socket (conflate off, small receive HWM), ``recv(copy=False)``.
``decode URL [--bgr] [--threads N] [--loop]``
    a bare PyAV decode loop (optionally converting every frame to a bgr24 ndarray); with
    ``--loop`` a file is reopened at its end, as the daemon's file cameras do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType


class Stop(Exception):
    """Raised by the SIGUSR1 handler wherever the main thread is."""


class Log:
    """The samples (one row per frame)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []

    def add(self, t: int, seq: int = 0, latency: int = 0, nbytes: int = 0) -> None:
        """Record one frame."""
        self.rows.append((t, seq, latency, nbytes))
        if len(self.rows) == 1:
            print(json.dumps({"first": t}), flush=True)

    def dump(self) -> None:
        """Print every sample as one JSON line."""
        rows = self.rows
        print(json.dumps({"t": [r[0] for r in rows], "seq": [r[1] for r in rows],
                          "lat": [r[2] for r in rows], "nbytes": [r[3] for r in rows]}),
              flush=True)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def run_recorded(work: Callable[[Log], None]) -> int:
    """Run ``work`` until it ends or SIGUSR1 arrives, then print its samples (exit code 0)."""
    log = Log()
    signal.signal(signal.SIGUSR1, _stop)
    try:
        work(log)
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    log.dump()
    return 0


def read_framebus(path: str, log: Log) -> None:
    """Read with the framebus client until stopped or the daemon ends."""
    from framebus.client import Subscriber

    with Subscriber(path) as sub:
        while (frame := sub.read()) is not None:
            log.add(frame.received_mono_ns, frame.seq, frame.latency_ns, len(frame.payload))


def read_raw(path: str, frame_bytes: int, stamped: bool, log: Log) -> None:
    """Read whole frames of ``frame_bytes`` with blocking readv into one reused buffer."""
    fd = 0 if path == "-" else os.open(path, os.O_RDONLY)
    buffer = bytearray(frame_bytes)
    view = memoryview(buffer)
    seq = 0
    while True:
        filled = 0
        while filled < frame_bytes:
            count = os.readv(fd, [view[filled:]])
            if count == 0:
                return
            filled += count
        now = time.monotonic_ns()
        seq += 1
        latency = now - int.from_bytes(buffer[:8], "little") if stamped else 0
        log.add(now, seq, latency, frame_bytes)


def read_bare_shm(path: str, ring_path: str, log: Log) -> None:
    """Read headers naming ring slots; check each slot's stamp; view the pixels."""
    import mmap

    from bench.shmring import HEADER, HEADER_LEN, MAGIC, STAMP, STAMP_LEN, STAMP_MAGIC

    fd = os.open(path, os.O_RDONLY)
    ring_fd = os.open(ring_path, os.O_RDONLY)
    try:
        ring = mmap.mmap(ring_fd, os.fstat(ring_fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(ring_fd)
    view = memoryview(ring)
    buffer = bytearray(HEADER_LEN)
    header_view = memoryview(buffer)
    while True:
        filled = 0
        while filled < HEADER_LEN:  # writes of <= PIPE_BUF are atomic: one read, normally
            count = os.readv(fd, [header_view[filled:]])
            if count == 0:
                return
            filled += count
        magic, _slot, seq, offset, length, published = HEADER.unpack_from(buffer)
        if magic != MAGIC:
            raise ValueError(f"bad header magic {magic!r}")
        stamp_magic, _, stamped_seq, stamped_length = STAMP.unpack_from(ring, offset - STAMP_LEN)
        if stamp_magic != STAMP_MAGIC or (stamped_seq, stamped_length) != (seq, length):
            continue  # rewritten under us (the hold rule forbids it): skip, as framebus does
        pixels = view[offset:offset + length]
        now = time.monotonic_ns()
        log.add(now, seq, now - published, len(pixels))


def read_iox2(service: str, feedback: bool, log: Log) -> None:
    """Take every sample the subscriber gets: header and a view of the pixels, no more."""
    from bench.iox2 import TAKEN_IDS, Iox2Reader

    reader = Iox2Reader(service, feedback)
    subscriber, listener, wait = reader.subscriber, reader.listener, reader.wait
    notifier, event_id = reader.notifier, reader.iox2.EventId.new
    try:
        while True:
            listener.timed_wait(wait)  # a kernel wait (GIL released), WAIT_S at most
            while (sample := subscriber.receive()) is not None:
                header = sample.user_header().contents
                seq, published = header.seq, header.publish_ns
                pixels = sample.payload().as_memory_view()
                now = time.monotonic_ns()
                log.add(now, seq, now - published, pixels.nbytes)
                pixels.release()
                sample.delete()
                if notifier is not None:
                    notifier.notify_with_custom_event_id(event_id(seq % TAKEN_IDS))
    finally:
        reader.close()


def read_zmq(endpoint: str, hwm: int, log: Log) -> None:
    """Receive every message a ZeroMQ SUB socket gets."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.CONFLATE, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    seq = 0
    try:
        while True:
            frame = sock.recv(copy=False)
            seq += 1
            log.add(time.monotonic_ns(), seq, 0, len(frame))
    finally:
        sock.close(0)
        context.term()


def decode(url: str, bgr: bool, threads: int, loop: bool, log: Log) -> None:
    """Decode as fast as the source gives frames (a file: as fast as possible)."""
    import av

    options = {"rtsp_transport": "tcp"} if url.startswith("rtsp") else {}
    seq = 0
    while True:
        with av.open(url, options=options) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            codec.thread_count = threads
            if threads != 1:
                codec.thread_type = "AUTO"
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if bgr:
                        frame.to_ndarray(format="bgr24")
                    seq += 1
                    log.add(time.monotonic_ns(), seq)
        if not loop:
            return


def main(argv: list[str] | None = None) -> int:
    """Run one consumer until SIGUSR1 (or its source ends), then print the samples."""
    parser = argparse.ArgumentParser(prog="python -m bench.procs")
    sub = parser.add_subparsers(dest="kind", required=True)
    fb = sub.add_parser("fb")
    fb.add_argument("path")
    raw = sub.add_parser("raw")
    raw.add_argument("path")
    raw.add_argument("--frame-bytes", type=int, required=True)
    raw.add_argument("--stamped", action="store_true")
    shm = sub.add_parser("shm")
    shm.add_argument("path")
    shm.add_argument("ring")
    iox2 = sub.add_parser("iox2")
    iox2.add_argument("service")
    iox2.add_argument("--feedback", action="store_true")
    zmq = sub.add_parser("zmq")
    zmq.add_argument("endpoint")
    zmq.add_argument("--hwm", type=int, default=2)
    dec = sub.add_parser("decode")
    dec.add_argument("url")
    dec.add_argument("--bgr", action="store_true")
    dec.add_argument("--threads", type=int, default=1)
    dec.add_argument("--loop", action="store_true")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    def work(log: Log) -> None:
        if args.kind == "fb":
            read_framebus(args.path, log)
        elif args.kind == "raw":
            read_raw(args.path, args.frame_bytes, args.stamped, log)
        elif args.kind == "shm":
            read_bare_shm(args.path, args.ring, log)
        elif args.kind == "iox2":
            read_iox2(args.service, args.feedback, log)
        elif args.kind == "zmq":
            read_zmq(args.endpoint, args.hwm, log)
        else:
            decode(args.url, args.bgr, args.threads, args.loop, log)

    return run_recorded(work)


if __name__ == "__main__":
    sys.exit(main())
