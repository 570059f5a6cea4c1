"""Fault-matrix and soak results: recorded by the tests, rendered into docs/RELIABILITY.md.

The fault tests (tests/test_faults_*.py) and the soak (tests/test_soak.py) call :func:`record`
and :func:`record_soak`; the results accumulate in ``.cache/reliability/results.json`` (the
last :data:`KEEP_RUNS` runs per fault). Render the document with::

    .venv/bin/python tests/reliability.py            # writes docs/RELIABILITY.md
    .venv/bin/python tests/reliability.py --check    # exit 1 if a fault has no measurement

Rendering is a separate step on purpose: test runs never rewrite a tracked file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".cache" / "reliability" / "results.json"
DOCUMENT = ROOT / "docs" / "RELIABILITY.md"
KEEP_RUNS = 10


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: what is injected and what the daemon does about it."""

    key: str
    title: str
    subset: str  # "bounded" (make test) or "soak" (make soak)
    detection: str  # what "detected" means for this fault
    recovery: str  # what "recovered" means
    behaviour: str  # the paragraph: what the daemon does


FAULTS: tuple[Fault, ...] = (
    Fault(
        "server_killed", "RTSP server killed (SIGKILL), then restarted", "bounded",
        "the camera leaves `streaming`",
        "the server is back (READY) → the subscriber receives a frame published after that",
        "The kernel resets the RTSP connection, so PyAV's read fails at once: the camera goes "
        "to `backoff` (reason `stream ended` or the socket error) and retries with exponential "
        "backoff (initial 0.2 s, cap 1 s in the tests; jitter). The first retry after the "
        "server is back reconnects; the camera's `epoch` increases so consumers know the stream "
        "is discontinuous, and `seq` keeps increasing. Subscribers stay connected throughout: "
        "their FIFOs simply carry no frames of this camera while it is down. Other cameras "
        "are separate threads and connections and lose nothing."),
    Fault(
        "server_killed_x10", "RTSP server killed and restarted 10 times in a row", "soak",
        "the camera leaves `streaming` (worst of 10)",
        "server back → subscriber receives a new frame (worst of 10)",
        "As for a single kill. The kills come faster than `backoff.reset_after` (30 s), so "
        "the backoff keeps growing from one outage to the next and recovery creeps up to the "
        "cap (1 s plus jitter in the tests): the worst of the 10 is reported. The subscriber "
        "stays connected across every outage and `seq` never goes back."),
    Fault(
        "server_paused", "RTSP server paused (SIGSTOP), then resumed (SIGCONT)", "bounded",
        "the camera leaves `streaming` (the stall watchdog)",
        "SIGCONT → the subscriber receives a frame published after that",
        "A stopped server keeps its TCP connection open and sends nothing: no error ever "
        "reaches PyAV. The per-camera stall watchdog (`stall_timeout`, 2 s in the tests) "
        "notices that no frame was published in time, marks the camera `stalled`, abandons the "
        "blocked decoder thread and starts a new generation, which cannot connect while the "
        "server is stopped (`open_timeout`) and backs off. After SIGCONT the next attempt "
        "connects. The abandoned thread returns when PyAV's own timeout fires and publishes "
        "nothing."),
    Fault(
        "network_blackhole", "Network blackhole (proxy stops forwarding both ways for 3 s)",
        "bounded",
        "the camera leaves `streaming` (the stall watchdog)",
        "forwarding resumes → the subscriber receives a frame published after that",
        "Like a paused server seen from the network: the connection stays open and silent, so "
        "the stall watchdog detects it after `stall_timeout`; new connections made during the "
        "outage hang in the RTSP handshake until `open_timeout` and back off. When the "
        "partition heals the next attempt connects (the held connections are closed by the "
        "daemon or drained harmlessly)."),
    Fault(
        "network_blackhole_long", "Network blackhole for 20 s (several failed reconnects)",
        "soak",
        "the camera leaves `streaming`",
        "forwarding resumes → the subscriber receives a new frame",
        "As for the short blackhole, with several reconnect attempts timing out during the "
        "outage; recovery after healing is bounded by the backoff cap plus one connect, not by "
        "the length of the outage."),
    Fault(
        "stream_corrupted", "Corrupted stream (proxy flips one byte per 256 server→client, "
        "after the first 16 KiB of each connection, for 3 s)", "bounded",
        "first sign the daemon noticed: a decode error, a reconnect or leaving `streaming`",
        "corruption stops → the camera is stable again (no reconnect for 2 s) and the "
        "subscriber receives a frame of that final session",
        "Flipped bytes inside video data are concealed by the H.264 decoder (pictures are "
        "damaged, frames keep coming) or counted as `decode_errors`; flipped bytes in the RTSP "
        "interleaved framing make FFmpeg's RTSP demuxer end the stream, which the daemon "
        "treats like a dropped connection: `backoff`, reconnect, new epoch. Either way the "
        "fan-out never sees broken data: it only ever sends whole decoded frames, so "
        "subscribers get valid messages throughout (damaged pictures, never damaged framing)."),
    Fault(
        "stream_corrupted_long", "Corrupted stream for 20 s at one byte per 64", "soak",
        "first decode error, reconnect or leaving `streaming`",
        "corruption stops → stable again, subscriber receives a frame of the final session",
        "As above, with the demuxer failing every second or so: a steady cycle of reconnects "
        "that costs other cameras nothing."),
    Fault(
        "size_change", "Camera changes resolution mid-stream (320x240 ↔ 480x360 every second)",
        "soak",
        "gap at the reader between the last frame of one size and the first of the next",
        "the subscriber receives frames of the new size (largest gap at a size switch)",
        "The decoder thread sees a frame whose size or pixel format differs from the previous "
        "one and increases the camera's `epoch` without reconnecting; every message carries "
        "its size, so consumers follow along (PROTOCOL.md: size may change together with the "
        "epoch). Renditions with a fixed size keep their size; native ones change with the "
        "camera."),
    Fault(
        "auth_failure", "Wrong camera password (password file rewritten, SIGHUP), then fixed",
        "soak",
        "SIGHUP with the wrong password → the camera is `auth_failed`",
        "SIGHUP with the right password → the subscriber receives a new frame",
        "A reload that changes a camera's password restarts only that camera. The server "
        "answers 401, PyAV raises `HTTPUnauthorizedError`, and the camera goes to "
        "`auth_failed`, logged once (never with the password), and retries only every "
        "`backoff.auth_failure` (60 s by default, 1 s in the tests) so it does not hammer the "
        "camera or lock the account. Passwords are read at start and at reload: fixing the "
        "file takes effect at the next SIGHUP."),
    Fault(
        "reader_killed_mid_frame", "Reader killed (SIGKILL) half-way through a 230 KB frame",
        "bounded",
        "the daemon counts the subscriber's disconnect",
        "a new reader process opens the FIFO → its first frame",
        "The daemon's next write fails with EPIPE (or epoll reports EPOLLERR on the idle "
        "descriptor): it closes its end, forgets the partly written message (counted as "
        "`dropped{reason=reader_gone}`) and retries opening the FIFO (at once, then every "
        "0.2 s). Once both ends are closed the kernel discards the pipe's contents, so the next "
        "reader starts at a message boundary with the newest frame."),
    Fault(
        "reader_killed_mid_message_shm", "shm reader killed half-way through a 240-byte "
        "header-only message", "bounded",
        "the daemon counts the subscriber's disconnect",
        "a new reader process opens the FIFO → its first frame",
        "As for a FIFO reader, plus the slots: the killed reader's held and unread slots are "
        "released as soon as the daemon sees it leave (EPOLLERR or EPIPE), and the next reader "
        "is sent the newest frame, whose slot the store keeps pinned for exactly this."),
    Fault(
        "reader_stalled", "Reader stopped (SIGSTOP) for 5 s, then continued", "soak",
        "the subscriber's `dropped{reason=slow_reader}` starts counting",
        "SIGCONT → the reader receives a frame published after that",
        "The daemon never waits for a reader: once the pipe is full the subscriber keeps one "
        "message in flight and one pending slot, and every newer frame replaces the pending "
        "one (counted as a drop). The reader is not disconnected. After SIGCONT it drains the "
        "pipe (frames from before the stall), then gets the newest frames; the `missed` field "
        "accounts for every frame it did not get."),
    Fault(
        "reader_reopen_100", "A reader closing and reopening its FIFO 100 times", "bounded",
        "— (not a failure)",
        "median time from an open to the first whole frame",
        "Each cycle opens the FIFO, reads one whole frame and closes it, and opens it again at "
        "once. If the reader is back before the daemon noticed it leave, the pipe simply "
        "carries on at the same message boundary and the next frame comes with the next "
        "publish; if the daemon noticed first, it closed its end and the reader waits for its "
        "next open attempt (at once, then every 0.2 s, `open_retry_s`). Either way the frames "
        "received are whole (`seq`/`missed` stay consistent) and a sibling subscriber of the "
        "same camera loses nothing. A reopen that lands in the microseconds between the "
        "daemon's EPIPE and its close(), with part of a message still in the pipe, makes the "
        "daemon close again without writing (the FIONREAD check, see Findings): the reader "
        "sees that part end in EOF and drops it."),
    Fault(
        "reader_reopen_100_shm", "An shm reader closing and reopening its FIFO 100 times",
        "bounded", "— (not a failure)", "median time from an open to the first whole frame",
        "As with FIFO readers; the payloads are in shared memory and every one is checked "
        "(seq continuity, no message start inside the payload). A reopen before the daemon "
        "noticed the close continues the same pipe, so the daemon's record of what the reader "
        "holds stays right; a reopen after it starts a new ledger with the newest frame. More "
        "opens than with FIFOs end in a clean EOF without a frame: the daemon is idle between "
        "these small messages and reacts to a close within microseconds, so a reopen more "
        "often lands in the old pipe just before the daemon closes it (the test allows 20 %)."),
    Fault(
        "reader_reopen_1000", "A reader closing and reopening 1000 times, 0-300 µs apart",
        "soak", "— (not a failure)", "median time from an open to the first whole frame",
        "As above, with the reopen delayed just enough that the daemon usually notices the "
        "close first: nearly every cycle is a disconnect, and the first frame comes with the "
        "daemon's next open attempt, about 0.2 s later. This is the timing that exposed the "
        "reopen race (one spliced frame per ~2000 cycles before the FIONREAD check); now a "
        "racing reopen costs at most a dropped partial message, and the test allows 1 % of "
        "those and no torn frame."),
    Fault(
        "fifo_deleted", "Subscriber FIFO deleted (unlinked) while a reader has it open", "bounded",
        "the reader leaves → the daemon counts the disconnect",
        "a new reader waits for the path → its first frame",
        "The open reader is unaffected: the daemon keeps writing to its open descriptor, "
        "which does not depend on the name. When that reader leaves, the daemon's next attempt "
        "to open the path fails with ENOENT; it then re-creates the FIFO (same mode and group, "
        "still refusing anything at that path that is not a FIFO), logs `FIFO ... was "
        "deleted; recreated` and serves the next reader from a message boundary. (Before "
        "2026-11-26 the daemon did not re-create it and retried the open forever.)"),
    Fault(
        "subscriber_replaced_reload", "Subscriber's options changed by a reload while its "
        "reader is slow (SIGSTOP for 3 s, 230 KB frames, 64 KiB pipe)", "bounded",
        "— (not a failure)",
        "SIGCONT → the reader receives a frame published after that",
        "Expected: the reader keeps one whole stream — the message in flight when the "
        "subscriber was replaced completes, then the new options apply. The new subscriber adopts "
        "the old one's open FIFO and outbox (one writer per pipe, ever), so that is what "
        "happens; before this was fixed on 2026-11-26 the two wrote into one pipe and spliced "
        "frames."),
    Fault(
        "subscriber_replaced_api", "Subscription deleted and re-added under the same name "
        "(DELETE + POST) while its reader is slow", "bounded",
        "— (not a failure)",
        "SIGCONT → the reader receives a frame published after that",
        "Same mechanism as the reload case: DELETE retires the subscriber (its in-flight message "
        "may finish for up to 2 s), and the POST that follows adopts its open FIFO."),
    Fault(
        "sighup_storm", "20 SIGHUP reloads in 2 s (config alternating between variants)",
        "soak",
        "— (not a failure)",
        "last SIGHUP → the last reload is logged and the running set matches the file",
        "Signals only set a flag and wake the main thread, which reloads in order; signals "
        "that arrive while a reload runs are coalesced. Each reload validates the file and "
        "applies only the differences: unchanged cameras and subscribers keep running (their "
        "readers see no disconnect), changed cameras restart, added/removed subscribers come "
        "and go."),
)
FAULTS_BY_KEY = {fault.key: fault for fault in FAULTS}


FINDINGS = """\
## Findings

1. **Replacing a subscriber while its reader is slow spliced frames (fixed on 2026-11-26).**
   A reload that changed a subscriber's options, or DELETE + POST under the same name, opened
   the same FIFO for the new subscriber while the retiring one still had a message in flight:
   two writers in one pipe, and the reader got a message with a valid header whose payload
   was continued by the next message, then a `ProtocolError` (reproduced on every run before
   the fix). The successor now adopts the retiring subscriber's open descriptor and outbox, so
   the in-flight message finishes first and the reader stays connected;
   `test_subscriber_replaced_while_its_reader_is_slow` asserts zero torn frames.
2. **Reopen race (fixed on 2026-11-26).** When a reader closed while the daemon had written
   part of a message and a reader opened the FIFO again in the microseconds between the
   daemon's EPIPE/EPOLLERR and its `close()`, the kernel kept the old pipe, partial message
   included, and the daemon wrote a whole new message after it: one spliced frame per ~2000
   open/read/close cycles with 0-300 µs between close and open. Right after `open_writer()`
   succeeds the daemon now checks `FIONREAD`: if the pipe already holds bytes it closes again
   without writing and retries, so the reader sees the partial message end in EOF (a
   truncated message the client drops) instead of a spliced one. The reopen rows allow such
   dropped messages (at most 1 %) and no torn frame.
3. **A deleted FIFO was never re-created (fixed on 2026-11-26).** `open_writer` failed with
   ENOENT forever and no reader could attach again; the daemon now re-creates the FIFO
   (`FifoMissing` → `ensure_fifo`), which `test_fifo_deleted_while_in_use` checks.
4. **The test RTSP server had mount passwords on its command line (fixed on 2026-11-26).**
   They now travel in environment variables (`Mount.password_variable`);
   `test_passwords_never_leak_through_faults` scans every process's `/proc/*/cmdline` together
   with the daemon's DEBUG log, `/metrics`, every API answer (good and bad) and exception
   texts, through server kill/restart, pause, blackhole, corruption, a wrong password and a
   failed reload, for each password raw, URL-encoded and as a Basic-auth token: no hits.
   (`/proc/PID/environ` of the daemon holds a `password_env` password by design; it is
   readable only by the same user and root.)
5. **Least privilege: the daemon needs no root, but this checkout's venv cannot be run by
   another user.** `test_daemon_runs_as_an_unprivileged_user` starts `python -m framebus run`
   as `nobody:nogroup` (no supplementary groups): it streams and serves a reader (also
   `nobody`) with all four uids/gids 65534 and no effective capability, and it writes nothing
   but its FIFO (0660, owned by the daemon's user) in the directory that user owns; the
   configuration only has to be readable. But `.venv/bin/python` resolves to a pyenv
   interpreter under `/root` (mode 0700), so no other user can start it (nor the unit's
   `framebus` user, and `ProtectHome=yes` in the unit hides `/root` anyway); the test then runs
   the daemon with `/usr/bin/python3` (same 3.11) and the venv's site-packages on
   `PYTHONPATH`, and says so. For a real installation build the venv from an interpreter
   outside home directories (e.g. `make PYTHON=/usr/bin/python3`, or a venv under
   `/opt/framebus`), readable by the service's user.
6. **`request_frame(timeout=T)` with T below the daemon's `http.wait_timeout` (fixed on
   2026-11-26).** For a camera without a frame the daemon waited `wait_timeout` (5 s) before
   answering 503, while the client's reader gave up after T with a bare `TimeoutError`, and
   its helper thread then died opening the removed FIFO. The daemon now bounds the wait for a
   first frame by the request's own timeout, and the client reports the daemon's reason
   (`test_a_frame_request_waits_no_longer_than_its_own_timeout`).
7. **Threads grew in the first 30-minute soak (fixed on 2026-11-26).** Two runs saw the
   daemon's threads at quiet moments wander between 17 and 27 for minutes at a time. PyAV
   (>= 17) lets swscale start a pool of worker threads per scaler and keeps the scaler on the
   *source* frame for as long as that frame lives, so every stored frame with a converted
   rendition (and each snapshot's frame) held 2 idle threads. All conversions now run in the
   calling thread (`threads=1`), which is also faster: 0.19 vs 1.46 ms for two renditions of
   a 640x360 frame, 0.56 vs 1.29 ms at 720p, 1.16 vs 1.75 ms at 1080p. The rerun held 13
   threads and 18 descriptors at every checkpoint.
"""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the results file under an exclusive lock (parallel runs are safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        yield data
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    """Where a measurement was taken."""
    return {"cores": os.cpu_count() or 0, "python": platform.python_version(),
            "kernel": platform.release()}


def record(fault: str, *, detection_s: float | None, recovery_s: float | None,
           unaffected: float, torn: int, notes: str = "", path: Path = RESULTS,
           **details: Any) -> dict[str, Any]:
    """Append one measurement of ``fault`` (keeps the last KEEP_RUNS) and print it."""
    if fault not in FAULTS_BY_KEY:
        raise KeyError(f"unknown fault {fault!r}: add it to reliability.FAULTS")
    run = {"when": _now(), **machine(), "detection_s": detection_s, "recovery_s": recovery_s,
           "unaffected_delivered": unaffected, "torn": torn, "notes": notes, **details}
    with _locked(path) as data:
        runs = data.setdefault("faults", {}).setdefault(fault, [])
        runs.append(run)
        del runs[:-KEEP_RUNS]
    print(f"\nMEASURED {fault}: detection {_seconds(detection_s)}, recovery "
          f"{_seconds(recovery_s)}, unaffected delivered {unaffected:.1%}, torn {torn}"
          + (f" ({notes})" if notes else ""))
    return run


def record_soak(name: str, result: dict[str, Any], path: Path = RESULTS) -> None:
    """Store one soak run's summary (the last KEEP_RUNS per name)."""
    with _locked(path) as data:
        runs = data.setdefault("soak", {}).setdefault(name, [])
        runs.append({"when": _now(), **machine(), **result})
        del runs[:-KEEP_RUNS]


# -- rendering ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def _cell(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    if not values and runs:
        return "never" if key == "recovery_s" and any(r.get("notes") for r in runs) else "—"
    return _spread(values, fmt)


def render(data: dict[str, Any]) -> str:
    """The markdown document for the recorded results."""
    faults: dict[str, list[dict[str, Any]]] = data.get("faults", {})
    every = [run for runs in faults.values() for run in runs]
    latest = max((r["when"] for r in every), default="never")
    cores = sorted({r.get("cores", 0) for r in every}) or [os.cpu_count() or 0]
    lines = [
        "# framebus reliability: fault matrix and soak",
        "",
        "Generated by `tests/reliability.py` from the measurements that "
        "`tests/test_faults_*.py` and `tests/test_soak.py` record in "
        "`.cache/reliability/results.json` (the last "
        f"{KEEP_RUNS} runs per fault). Regenerate with `.venv/bin/python tests/reliability.py` "
        "after `make test` (bounded subset) and `make soak` (everything).",
        "",
        f"Machine: {', '.join(str(c) for c in cores)} CPU cores; latest measurement "
        f"{latest[:10]} ({latest} UTC).",
        "",
        "Every fault runs against the daemon as a subprocess (`python -m framebus run`), with "
        "the test RTSP server (gst-rtsp-server) on loopback, camera timeouts of 2 s "
        "(`open_timeout`, `read_timeout`, `stall_timeout`) and backoff 0.2 s → 1 s. Alongside "
        "every fault a second, healthy camera on a separate RTSP server process has its own "
        "subscriber (plus, for reader faults, a sibling subscriber of the same camera); "
        "*unaffected delivered* is the worst of them: frames received ÷ frames the daemon "
        "published for that camera, over the window from injecting the fault to recovery. "
        "*Torn* counts, over every reader of the scenario, messages that fail validation "
        "(`ProtocolError`, i.e. a reader not at a message boundary), messages that pass "
        "validation but whose payload carries the start of another message (spliced), and "
        "`seq`/`missed` discontinuities within one open of a FIFO; each reader is "
        "`tests/checked_reader.py`, built on `framebus.client.Subscriber`. A message cut short "
        "by EOF is dropped by the client, never delivered; it is counted separately and must "
        "not happen at all, except where a row says so.",
        "",
        "Cells show the median and, in brackets, the range over the recorded runs.",
        "",
        "| fault | subset | detection | recovery | unaffected delivered | torn frames (all runs)"
        " | runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fault in FAULTS:
        runs = faults.get(fault.key, [])
        delivered = _cell([{**r, "pct": 100 * r["unaffected_delivered"]} for r in runs],
                          "pct", "{:.1f} %")
        torn = str(sum(int(r["torn"]) for r in runs)) if runs else "—"
        lines.append(f"| {fault.title} | {fault.subset} | {_cell(runs, 'detection_s', '{:.2f} s')}"
                     f" | {_cell(runs, 'recovery_s', '{:.2f} s')} | {delivered} | {torn} | "
                     f"{len(runs)} |")
    lines += ["", "## What the daemon does, fault by fault", ""]
    for fault in FAULTS:
        runs = faults.get(fault.key, [])
        lines += [f"### {fault.title}", "",
                  f"*Detection:* {fault.detection}. *Recovery:* {fault.recovery}.", "",
                  fault.behaviour, ""]
        if runs and runs[-1].get("notes"):
            lines += [f"Latest run ({runs[-1]['when'][:10]}): {runs[-1]['notes']}.", ""]
    lines += [*FINDINGS.splitlines(), ""]
    lines += _render_soak(data.get("soak", {}))
    return "\n".join(lines).rstrip() + "\n"


def _render_soak(soak: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["## Soak", "",
             "`tests/test_soak.py`: 8 cameras (320x240 at 15 fps) on one RTSP server, two "
             "long-lived subscribers, and subscribers that come and go every few seconds (POST "
             "and DELETE /v1/subscriptions, each with a checked reader process for a few "
             "seconds), JPEG snapshots and `request_frame()` calls in between. At checkpoints "
             "(all short-lived subscribers gone) the daemon's RSS, open descriptors and threads "
             "are read from /proc. The full soak lasts `FRAMEBUS_SOAK_SECONDS` (default 1800 s); "
             "a 60 s smoke version exists for trying it out.", ""]
    if not soak:
        return [*lines, "No soak run recorded yet.", ""]
    lines += ["| run | when | cores | seconds | RSS after warm-up (first → last checkpoints) | "
              "descriptors (min-max) | threads (min-max; floor first half → second half) | "
              "subscribers added | frames read | torn |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in sorted(soak.items()):
        r = runs[-1]
        floors = r.get("floors_early_late", {}).get("threads")
        floor = f"; {floors[0]} → {floors[1]}" if floors else ""
        lines.append(
            f"| {name} | {r['when'][:16]} | {r.get('cores', '?')} | {r['seconds']:.0f} | "
            f"{r['rss_baseline_mb']:.1f} → {r['rss_final_mb']:.1f} MB "
            f"({100 * r['rss_drift']:+.1f} %) | {r['fds_min']}-{r['fds_max']} | "
            f"{r['threads_min']}-{r['threads_max']}{floor} | {r['subscribers_added']} | "
            f"{r['frames_read']} | {r['torn']} |")
    lines += ["", "Pass criteria: RSS drift at most 5 % after the warm-up (the first 20 %, at "
              "least 30 s; medians of the first and last three checkpoints), no upward trend in "
              "descriptors or threads (the floor of the second half of the checkpoints at most "
              "one above the first half's), no torn frame, every counter only growing and "
              "`frames_sent + dropped` of each short-lived subscriber within what its camera "
              "published (plus one per connection)."]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Render docs/RELIABILITY.md from the recorded results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=DOCUMENT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a fault of the matrix has no measurement")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text()) if args.results.exists() else {}
    args.out.write_text(render(data))
    print(f"wrote {args.out}")
    missing = [f.key for f in FAULTS if not data.get("faults", {}).get(f.key)]
    if missing:
        print(f"no measurement yet for: {', '.join(missing)}", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
