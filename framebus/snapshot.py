"""``framebus snapshot CAMERA``: save the newest frame as an image, over HTTP or a FIFO."""

from __future__ import annotations

import argparse
import http.client
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from framebus.apiclient import UNREACHABLE, default_token, unreachable
from framebus.client import FrameRequestError, request_frame
from framebus.errors import FramebusError
from framebus.imaging import ImageKind, encode_image, to_video_frame


def snapshot(args: argparse.Namespace) -> int:
    """Fetch and save one frame; print the file name."""
    out: Path = args.out or Path(f"{args.camera}.jpg")
    kind: ImageKind = "png" if out.suffix.lower() == ".png" else "jpeg"
    token = args.token_file.read_text().strip() if args.token_file else (
        None if args.unix_socket else default_token())
    if args.fifo:
        try:
            frame = request_frame(args.camera, url=args.url, unix_socket=args.unix_socket,
                                  fifo_dir=args.fifo_dir, format="bgr24", width=args.width,
                                  height=args.height, token=token, timeout=args.timeout)
        except FrameRequestError as exc:
            raise FramebusError(str(exc)) from None
        data = encode_image(to_video_frame(frame.header, frame.payload), kind, args.quality)
    else:
        data = _get_image(args, kind, token)
    out.write_bytes(data)
    print(out, file=sys.stdout)
    return 0


def _get_image(args: argparse.Namespace, kind: str, token: str | None) -> bytes:
    query = {k: v for k, v in (("width", args.width), ("height", args.height),
                               ("quality", args.quality)) if v}
    ext = "png" if kind == "png" else "jpg"
    path = f"/v1/cameras/{args.camera}/snapshot.{ext}?{urlencode(query)}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.unix_socket:
        from framebus.apiclient import UnixHTTPConnection

        connection: http.client.HTTPConnection = UnixHTTPConnection(args.unix_socket, args.timeout)
    else:
        parts = urlsplit(args.url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                                parts.port or 8470, timeout=args.timeout + 5)
    where = f"unix socket {args.unix_socket}" if args.unix_socket else args.url
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except UNREACHABLE as exc:
        raise unreachable(where, exc) from None
    finally:
        connection.close()
    if response.status != 200:
        detail = body[:300].decode("utf-8", "replace")
        raise FramebusError(f"snapshot of {args.camera}: HTTP {response.status}: {detail}")
    return body
