"""A reference consumer process for the fault tests: reads one FIFO with framebus.client and
checks every message, counting anything torn.

    python checked_reader.py FIFO [--cycles N] [--reopen-delay-us MAX] [--max-seconds S]

Prints one JSON line per frame: ``{"seq", "missed", "epoch", "w", "h", "camera", "pub", "t",
"open", "instance"}`` (``pub`` is the daemon's publish time and ``t`` the receive time, both
CLOCK_MONOTONIC nanoseconds, comparable with the test's ``time.monotonic_ns()``; ``open``
counts the reader's opens of the FIFO), one per stream event (a STATE message or a daemon
restart seen in the stream): ``{"event", "camera", "reason", "epoch", "seq", "t"}``, and
``{"opened": N, "t": ...}`` when it opens the FIFO
itself (the first time, after a protocol error, and every cycle). It ends when its stdin is
closed (the test's way to stop it cleanly), after ``--max-seconds`` (it never outlives a
crashed test), or after ``--cycles`` opens, and then prints a summary line::

    {"end": true, "frames": N, "truncated": N, "protocol_errors": N, "seq_errors": N,
     "spliced": N, "opens": N, "errors": ["..."]}

What counts as torn:

* ``truncated`` — EOF inside a message (the client in reopen mode drops it and carries on);
* ``protocol_errors`` — a message that fails validation (``ProtocolError``), i.e. the reader
  was not at a message boundary: the reader then closes the FIFO and opens it again;
* ``seq_errors`` — within one open of the FIFO and one daemon instance, two consecutive
  messages of a camera whose ``seq`` does not advance by exactly ``1 + missed`` (PROTOCOL.md
  section 8), or go back;
* ``spliced`` — a message that passed validation but whose payload contains the start of
  another message (``FBUS`` + version 1): a message cut short and continued by the bytes of
  the next one. Video never contains these six bytes by chance (odds ~2^-48 per position).

With ``--cycles N`` the reader opens the FIFO, reads one whole frame, closes it, waits a
random 0..``--reopen-delay-us`` microseconds and opens it again, N times: a consumer that
keeps coming and going.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

from framebus.client import Frame, StreamEvent, Subscriber
from framebus.errors import ProtocolError

POLL_S = 0.2  # how often a waiting read looks at the stop flag
AFTER_ERROR_S = 0.5  # after a protocol error: time for the daemon to notice we left
MESSAGE_START = b"FBUS\x01\x00"


class Checker:
    """Per-open bookkeeping of seq/missed continuity, plus the counters of the summary."""

    def __init__(self) -> None:
        self.frames = 0
        self.protocol_errors = 0
        self.seq_errors = 0
        self.truncated = 0
        self.stale = 0  # shm frames whose slot was rewritten before they were read: skipped
        self.spliced = 0
        self.opens = 0
        self.restarts = 0
        self.errors: list[str] = []
        self._last: dict[str, int] = {}

    def event(self, event: StreamEvent) -> None:
        """A STATE message or a restart: print it; a restart voids the seq arithmetic."""
        if event.kind == "restart":
            self.restarts += 1
            self._last.clear()
        print(json.dumps({"event": event.kind, "camera": event.camera, "reason": event.reason,
                          "epoch": event.epoch, "seq": event.seq,
                          "t": event.received_mono_ns}), flush=True)

    def new_open(self) -> None:
        """Everything known about the stream is void after a reopen (PROTOCOL.md 10)."""
        self._last.clear()

    def frame(self, frame: Frame, open_index: int) -> None:
        """Check one delivered frame and print its line."""
        h = frame.header
        previous = self._last.get(h.camera)
        if previous is not None and h.seq != previous + 1 + h.missed:
            self.seq_errors += 1
            self._error(f"{h.camera}: seq {h.seq} after {previous} with missed {h.missed}")
        self._last[h.camera] = h.seq
        if MESSAGE_START in frame.payload.tobytes():
            self.spliced += 1
            self._error(f"{h.camera}: seq {h.seq} carries the start of another message")
        self.frames += 1
        print(json.dumps({"seq": h.seq, "missed": h.missed, "epoch": h.epoch, "w": h.width,
                          "h": h.height, "camera": h.camera, "pub": h.publish_mono_ns,
                          "t": frame.received_mono_ns, "open": open_index,
                          "instance": h.instance}), flush=True)

    def protocol_error(self, exc: ProtocolError) -> None:
        """A message that was not whole or not at a boundary."""
        self.protocol_errors += 1
        self._error(f"ProtocolError: {exc}")

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    def summary(self) -> str:
        """The last line the reader prints."""
        return json.dumps({"end": True, "frames": self.frames, "truncated": self.truncated,
                           "protocol_errors": self.protocol_errors,
                           "seq_errors": self.seq_errors, "spliced": self.spliced,
                           "opens": self.opens, "stale": self.stale,
                           "restarts": self.restarts,
                           "errors": self.errors})


def watch_stdin(stop: threading.Event) -> None:
    """The test closes our stdin to stop us (so does its death)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def opened(path: str, reopen: bool, checker: Checker, stop: threading.Event,
           deadline: float) -> Subscriber | None:
    """A subscriber with the FIFO open (waiting for the path to appear); None when stopped."""
    sub = Subscriber(path, reopen=reopen, on_event=checker.event)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            sub.open(timeout=POLL_S)
        except TimeoutError:
            continue
        print(json.dumps({"opened": checker.opens + 1, "t": time.monotonic_ns()}), flush=True)
        return sub
    return None


def stream(path: str, checker: Checker, stop: threading.Event, deadline: float) -> None:
    """Read continuously (reopening after EOF) until told to stop."""
    while not stop.is_set() and time.monotonic() < deadline:
        sub = opened(path, True, checker, stop, deadline)
        if sub is None:
            return
        opens_seen = stale_seen = 0
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    frame = sub.read(timeout=POLL_S)
                except TimeoutError:
                    continue
                if frame is None:
                    break
                if sub.stats.opens != opens_seen or sub.stats.stale != stale_seen:
                    # a reopen voids what we knew; a skipped stale message moved seq on
                    opens_seen, stale_seen = sub.stats.opens, sub.stats.stale
                    checker.new_open()
                checker.frame(frame, checker.opens + sub.stats.opens)
        except ProtocolError as exc:
            checker.protocol_error(exc)
            checker.new_open()
            sub.close()
            # PROTOCOL.md 10: reopen only once the writer has left. Closing makes the daemon's
            # next write fail (EPIPE) and it lets go of the pipe; reopening before that would
            # land in the middle of the same stream again and count one fault many times.
            stop.wait(AFTER_ERROR_S)
        finally:
            checker.truncated += sub.stats.truncated
            checker.stale += sub.stats.stale
            checker.opens += sub.stats.opens
            sub.close()


def cycle(path: str, checker: Checker, stop: threading.Event, deadline: float, cycles: int,
          max_delay_us: int) -> None:
    """Open, read one whole frame, close; again and again."""
    rng = random.Random(os.getpid())
    for _ in range(cycles):
        if stop.is_set() or time.monotonic() >= deadline:
            return
        sub = opened(path, False, checker, stop, deadline)
        if sub is None:
            return
        checker.new_open()
        try:
            frame = None
            while frame is None and not stop.is_set() and time.monotonic() < deadline:
                try:
                    frame = sub.read(timeout=POLL_S)
                except TimeoutError:
                    continue
                if frame is None:  # clean EOF: the writer left at a boundary; open again
                    break
                checker.frame(frame, checker.opens + 1)
        except ProtocolError as exc:
            if "truncated" in str(exc):
                checker.truncated += 1
            else:
                checker.protocol_error(exc)
        finally:
            checker.opens += sub.stats.opens
            checker.stale += sub.stats.stale
            sub.close()
        if max_delay_us:
            time.sleep(rng.randrange(max_delay_us + 1) / 1e6)  # the gap between close and open


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("fifo")
    parser.add_argument("--cycles", type=int, default=0)
    parser.add_argument("--reopen-delay-us", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    checker = Checker()
    if args.cycles:
        cycle(args.fifo, checker, stop, deadline, args.cycles, args.reopen_delay_us)
    else:
        stream(args.fifo, checker, stop, deadline)
    print(checker.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
