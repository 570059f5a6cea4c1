"""``framebus status --fleet``: every framebus host on the zenoh network, its cameras and
exports, from liveliness tokens and each bridge's ``framebus/<host>/_status`` queryable.

A host is listed when its bridge's liveliness token ``framebus/<host>`` is alive; a host whose
bridge is alive but cannot reach its daemon shows ``daemon unreachable``. Exit status as for
``framebus status``: 0 every camera streams, 3 some host or camera does not, 1 no host found.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from framebus.errors import FramebusError
from framebus.remote.settings import KEY_PREFIX
from framebus.status import EXIT_DEGRADED, age_text, write_table

MAX_STATUS_BYTES = 4 << 20  # a status reply larger than this is not read
MAX_HOSTS = 4096


def _ok_keys(replies: Any) -> list[str]:
    keys: list[str] = []
    for reply in replies:
        if reply.ok is not None and len(keys) < 64 * MAX_HOSTS:
            keys.append(str(reply.ok.key_expr))
    return keys


def gather(session: Any, timeout: float) -> dict[str, Any]:
    """``{"hosts": [...]}``: each host's status reply (or why there is none) and the exports
    alive on the network, within ``timeout`` seconds."""
    began = time.monotonic()
    # a session just opened learns the network's tokens over a moment, one declaration at a
    # time: the first answer may hold one host of two, so ask until two answers agree
    previous: list[str] | None = None
    while True:
        left = timeout - (time.monotonic() - began)
        tokens = sorted(_ok_keys(session.liveliness().get(f"{KEY_PREFIX}/**",
                                                          timeout=max(0.1, left))))
        if (tokens and tokens == previous) or time.monotonic() - began >= timeout / 2:
            break
        previous = tokens
        time.sleep(0.1)
    hosts: dict[str, dict[str, Any]] = {}
    alive: dict[str, list[str]] = {}
    for key in tokens:
        parts = key.split("/")
        if len(parts) == 2:
            hosts.setdefault(parts[1], {"host": parts[1]})
        elif len(parts) == 4:
            alive.setdefault(parts[1], []).append(key)
    left = max(0.1, timeout - (time.monotonic() - began))
    for reply in session.get(f"{KEY_PREFIX}/*/_status", timeout=left):
        sample = reply.ok
        if sample is None:
            continue
        data = sample.payload.to_bytes()
        host = str(sample.key_expr).split("/")[1]
        entry = hosts.setdefault(host, {"host": host})
        if len(data) > MAX_STATUS_BYTES:
            entry["error"] = "status reply too large"
            continue
        try:
            answer = json.loads(data)
        except ValueError:
            entry["error"] = "status reply is not JSON"
            continue
        if isinstance(answer, dict):
            entry.update({k: answer.get(k) for k in ("daemon", "error", "cameras", "exports")})
    for host, entry in hosts.items():
        entry.setdefault("daemon", "no answer")
        entry.setdefault("cameras", [])
        entry.setdefault("exports", [])
        entry["alive_exports"] = sorted(alive.get(host, []))
    return {"hosts": [hosts[name] for name in sorted(hosts)]}


def render(data: dict[str, Any], out: TextIO) -> None:
    """One row per host and camera, with the renditions exported (``*``: someone watches)."""
    rows = [("HOST", "CAMERA", "STATE", "FPS", "SIZE", "AGE", "EXPORTS", "REASON")]
    for host in data["hosts"]:
        if host["daemon"] != "ok":
            rows.append((host["host"], "-", f"daemon {host['daemon']}", "-", "-", "-", "-",
                         str(host.get("error") or "")[:80]))
            continue
        exports: dict[str, list[str]] = {}
        for export in host["exports"]:
            mark = "*" if export.get("matching") else ""
            exports.setdefault(export["camera"], []).append(export["rendition"] + mark)
        for cam in host["cameras"]:
            size = f"{cam['width']}x{cam['height']}" if cam.get("width") else "-"
            reason = "" if cam["state"] == "streaming" else str(cam.get("reason") or "")
            rows.append((host["host"], cam["name"], cam["state"], f"{cam['fps'] or 0:.1f}",
                         size, age_text(cam.get("frame_age_s")),
                         ",".join(exports.get(cam["name"], [])) or "-", reason))
    write_table(rows, out)


def fleet_status(session: Any, timeout: float, as_json: bool, out: TextIO) -> int:
    """Print the fleet's status; see the module doc for exit codes."""
    data = gather(session, timeout)
    if not data["hosts"]:
        raise FramebusError(f"no framebus host answered within {timeout:g}s (is a bridge "
                            "running, and is this session connected to its router or peer?)")
    if as_json:
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        render(data, out)
    healthy = all(host["daemon"] == "ok" and
                  all(cam["state"] == "streaming" for cam in host["cameras"])
                  for host in data["hosts"])
    return 0 if healthy else EXIT_DEGRADED
