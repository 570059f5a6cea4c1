"""A tiny zenoh node run as its own process (usually inside a network namespace) for tests.

Child side (``python tests/zenoh_proc.py [--config FILE] [--set KEY=JSON5 ...]``): opens one
zenoh session (a config file, then ``insert_json5`` overrides), prints ``{"ev": "open"}``,
then executes one JSON command per stdin line and answers with JSON lines on stdout:

- ``{"op": "info"}``: peers, routers and links (src, dst, auth identifier = peer cert CN);
- ``{"op": "sub", "key": K}``: subscribe; every sample becomes ``{"ev": "sample", ...}``
  (size, text when small, arrival time on the machine-wide monotonic clock);
- ``{"op": "put", "key": K, "text": T | "size": N, "count": C, "cc": "block" | "drop"}``;
- ``{"op": "ticker", "key": K, "period": s}``: put ``{"seq": n}`` every period (DROP, so a
  dead link never blocks it); ``{"op": "stop_ticker"}``;
- ``{"op": "queryable", "key": K, "text": T}``: answer queries on K with T;
  ``{"op": "get", "key": K}``: query K, reply ``{"replies": [text, ...]}`` (errors as
  ``"err:..."``);
- ``{"op": "token", "key": K}``: declare a liveliness token; ``{"op": "alive", "key": K}``:
  reply ``{"keys": [...]}``, the tokens alive under K.

Zenoh's own log (``RUST_LOG``, default warn) goes to stderr. It exits on stdin EOF, so it
never outlives the test. Parent side: :class:`ZenohProc` starts one in a host and waits on
its events with deadlines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

SCRIPT = Path(__file__).resolve()
_out_lock = threading.Lock()


def _emit(**event: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def _child(argv: Sequence[str]) -> int:
    import zenoh

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON5")
    args = parser.parse_args(argv)
    zenoh.init_log_from_env_or("warn")
    try:
        config = zenoh.Config.from_file(args.config) if args.config else zenoh.Config()
        for item in args.set:
            key, _, value = item.partition("=")
            try:
                config.insert_json5(key, value)
            except Exception as exc:
                raise ValueError(f"--set {item}: {exc}") from exc
        session = zenoh.open(config)
    except Exception as exc:
        _emit(ev="fatal", msg=str(exc))
        return 2
    _emit(ev="open", zid=str(session.zid()))
    keep: list[Any] = []  # subscribers live until the session closes
    ticker_stop = threading.Event()

    def on_sample(sample: Any) -> None:
        data = sample.payload.to_bytes()
        text = data.decode(errors="replace") if len(data) <= 1024 else None
        _emit(ev="sample", key=str(sample.key_expr), size=len(data), text=text,
              t=time.monotonic())

    def tick(key: str, period: float) -> None:
        seq = 0
        while not ticker_stop.wait(period):
            seq += 1
            session.put(key, json.dumps({"seq": seq}),
                        congestion_control=zenoh.CongestionControl.DROP)

    for line in sys.stdin:
        cmd = json.loads(line)
        op, rid = cmd.get("op"), cmd.get("id")
        try:
            reply: dict[str, Any] = {}
            if op == "info":
                info = session.info
                reply["peers"] = [str(z) for z in info.peers_zid()]
                reply["routers"] = [str(z) for z in info.routers_zid()]
                reply["links"] = [{"src": lk.src, "dst": lk.dst, "auth": lk.auth_identifier}
                                  for lk in info.links()]
            elif op == "sub":
                keep.append(session.declare_subscriber(cmd["key"], on_sample))
            elif op == "put":
                payload = cmd["text"].encode() if "text" in cmd else bytes(cmd["size"])
                cc = (zenoh.CongestionControl.DROP if cmd.get("cc") == "drop"
                      else zenoh.CongestionControl.BLOCK)
                start = time.monotonic()
                for _ in range(cmd.get("count", 1)):
                    session.put(cmd["key"], payload, congestion_control=cc)
                reply["seconds"] = time.monotonic() - start
            elif op == "ticker":
                ticker_stop.clear()
                threading.Thread(target=tick, args=(cmd["key"], cmd["period"]),
                                 daemon=True).start()
            elif op == "stop_ticker":
                ticker_stop.set()
            elif op == "queryable":
                text = cmd["text"]
                keep.append(session.declare_queryable(
                    cmd["key"], lambda query, text=text: query.reply(query.key_expr, text)))
            elif op == "get":
                reply["replies"] = [
                    r.ok.payload.to_string() if r.ok is not None
                    else "err:" + r.err.payload.to_string()
                    for r in session.get(cmd["key"], timeout=cmd.get("timeout", 2.0))]
            elif op == "token":
                keep.append(session.liveliness().declare_token(cmd["key"]))
            elif op == "alive":
                reply["keys"] = sorted(
                    str(r.ok.key_expr) for r in session.liveliness().get(
                        cmd["key"], timeout=cmd.get("timeout", 2.0)) if r.ok is not None)
            else:
                raise ValueError(f"unknown op {op!r}")
            _emit(ev="reply", id=rid, **reply)
        except Exception as exc:
            _emit(ev="error", id=rid, msg=f"{type(exc).__name__}: {exc}")
    ticker_stop.set()
    session.close()  # type: ignore[no-untyped-call]
    return 0


class ZenohProc:
    """Parent side: one child node started through ``popen`` (e.g. ``Host.popen``).

    Events (JSON lines on the child's stdout) and log lines (its stderr) are collected by
    reader threads; every wait has a deadline.
    """

    def __init__(
        self, popen: Callable[..., subprocess.Popen[bytes]], *args: str,
        env: dict[str, str] | None = None, open_timeout: float = 20.0,
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.log: list[str] = []
        self._cond = threading.Condition()
        self._next_id = 0
        self.proc = popen([sys.executable, str(SCRIPT), *args], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink in ((self.proc.stdout, self._on_event), (self.proc.stderr, self._on_log)):
            text = open(stream.fileno(), encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
            threading.Thread(target=self._pump, args=(text, sink), daemon=True).start()
        opened = self.wait(lambda e: e["ev"] in ("open", "fatal"), open_timeout, "session open")
        if opened["ev"] == "fatal":
            raise RuntimeError(f"zenoh node failed to open: {opened['msg']}\n" + self.log_text())
        self.zid: str = opened["zid"]

    def _pump(self, stream: TextIO, sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        with self._cond:
            self._cond.notify_all()

    def _on_event(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return self._on_log(line)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _on_log(self, line: str) -> None:
        with self._cond:
            self.log.append(line)
            self._cond.notify_all()

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.log)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str,
             start: int = 0) -> dict[str, Any]:
        """The first event from index ``start`` on that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[start:]:
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} "
                                         f"(exit {self.proc.poll()}); log:\n" + "\n".join(self.log))
                self._cond.wait(min(left, 0.5))

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply (AssertionError on an error reply)."""
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, "id": rid, **fields}) + "\n").encode())
        self.proc.stdin.flush()
        reply = self.wait(lambda e: e.get("id") == rid, timeout, f"reply to {op}")
        assert reply["ev"] == "reply", reply
        return reply

    def samples(self, key: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events
                    if e["ev"] == "sample" and (key is None or e["key"] == key)]

    def close(self, timeout: float = 10.0) -> None:
        """Close stdin (the child closes its session and exits); kill at the deadline."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
