"""``framebus status``: the daemon's cameras and subscribers at a glance, from its API.

Exit status 0 when every camera streams, 3 when the daemon answers but some camera does not
(so scripts can tell "degraded" from "down"), 1 when it cannot be reached or refuses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, TextIO

from framebus.apiclient import read_token_file, request_json, unauthorized_hint
from framebus.errors import FramebusError

EXIT_DEGRADED = 3


def fetch(args: argparse.Namespace) -> dict[str, Any]:
    """GET /v1/cameras and /v1/subscriptions; FramebusError naming the reason on refusal."""
    token = read_token_file(args.token_file) if args.token_file else None
    result: dict[str, Any] = {}
    for key, path in (("cameras", "/v1/cameras"), ("subscriptions", "/v1/subscriptions")):
        status, body = request_json("GET", args.url, args.unix_socket, path, None, token,
                                    args.timeout, args.ca_file)
        if status != 200:
            hint = unauthorized_hint(args.token_file) if status == 401 else ""
            raise FramebusError(f"GET {path}: HTTP {status} {body.get('error', '')}: "
                                f"{body.get('detail', '')}{hint}")
        result[key] = body[key]
    return result


def age_text(value: object) -> str:
    """A frame age for a table: ``1.2s``, ``-`` when there is none."""
    return "-" if value is None else f"{float(value):.1f}s"  # type: ignore[arg-type]


def mode_text(mode: object) -> str:
    """A FIFO's permissions as people write them (``0660``): the API's JSON has the number,
    whose decimal form (432) nobody reads as a mode."""
    return f"{mode:04o}" if isinstance(mode, int) else "-"


def render(data: dict[str, Any], out: TextIO) -> None:
    """Two aligned tables: cameras, then subscribers."""
    rows = [("CAMERA", "STATE", "FPS", "SIZE", "CODEC", "AGE", "RECONNECTS", "REASON")]
    for cam in data["cameras"]:
        size = f"{cam['width']}x{cam['height']}" if cam["width"] else "-"
        reconnects = sum(cam["reconnects"].values())
        reason = "" if cam["state"] == "streaming" else cam["reason"]
        codec, hw = cam["codec"] or "-", cam.get("hwaccel") or {}  # an older daemon: absent
        if hw.get("active"):
            codec += f" ({hw['active']})"
        elif hw.get("fallback"):
            codec += " (software)"
            reason = reason or f"hwaccel not used: {hw['fallback']}"
        rows.append((cam["name"], cam["state"], f"{cam['fps']:.1f}", size, codec,
                     age_text(cam["frame_age_s"]), str(reconnects), reason))
    write_table(rows, out)
    out.write("\n")
    subs = [("SUBSCRIBER", "CAMERA", "TRANSPORT", "FORMAT", "MODE", "CONNECTED", "SENT",
             "DROPPED", "ERROR")]
    for sub in data["subscriptions"]:
        dropped = sum(sub.get("dropped", {}).values())
        camera = sub["camera"] or ",".join(sub["cameras"] or [])
        subs.append((sub["name"], camera, sub["transport"], sub["format"],
                     mode_text(sub.get("mode")), "yes" if sub["connected"] else "no",
                     str(sub.get("frames_sent", 0)), str(dropped), sub.get("error") or ""))
    write_table(subs, out)


def write_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    """Rows as left-aligned columns (the first row is the heading)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                  .rstrip() + "\n")


def status(args: argparse.Namespace, out: TextIO) -> int:
    """Print the status (a table, or JSON with --json); see the module doc for exit codes."""
    data = fetch(args)
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        render(data, out)
    streaming = all(cam["state"] == "streaming" for cam in data["cameras"])
    return 0 if streaming else EXIT_DEGRADED
