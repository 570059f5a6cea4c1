"""``framebus snapshot CAMERA``: save the newest frame as an image, over HTTP or a FIFO."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlencode

from framebus.apiclient import read_token_file, request, unauthorized_hint
from framebus.client import Frame, FrameRequestError, request_frame
from framebus.errors import FramebusError
from framebus.imaging import ImageKind, encode_image, to_video_frame
from framebus.remote.cli_support import is_remote, parse_target, remote_config


def snapshot(args: argparse.Namespace) -> int:
    """Fetch and save one frame; print the file name."""
    out: Path = args.out or Path(f"{args.camera}.jpg")
    kind: ImageKind = "png" if out.suffix.lower() == ".png" else "jpeg"
    # None: the API client finds one ($FRAMEBUS_TOKEN, ...), the Unix socket needs none
    token = read_token_file(args.token_file) if args.token_file else None
    if is_remote(args.camera):
        frame = _remote_frame(args)
        data = encode_image(to_video_frame(frame.header, frame.payload), kind, args.quality)
    elif args.fifo:
        try:
            frame = request_frame(args.camera, url=args.url, unix_socket=args.unix_socket,
                                  fifo_dir=args.fifo_dir, format="bgr24", width=args.width,
                                  height=args.height, token=token, timeout=args.timeout,
                                  ca_file=args.ca_file)
        except FrameRequestError as exc:
            raise FramebusError(str(exc)) from None
        data = encode_image(to_video_frame(frame.header, frame.payload), kind, args.quality)
    else:
        data = _get_image(args, kind, token)
    out.write_bytes(data)
    print(out, file=sys.stdout)
    return 0


def _remote_frame(args: argparse.Namespace) -> Frame:
    from framebus.remote.newest import request_remote_frame

    host, camera, rendition = parse_target(args.camera)
    try:
        return request_remote_frame(camera, host=host, rendition=rendition,
                                    config=remote_config(args), timeout=args.timeout)
    except FrameRequestError as exc:
        raise FramebusError(f"snapshot of {args.camera}: {exc.error}: {exc.detail}") from None


def _get_image(args: argparse.Namespace, kind: str, token: str | None) -> bytes:
    query = {k: v for k, v in (("width", args.width), ("height", args.height),
                               ("quality", args.quality)) if v}
    ext = "png" if kind == "png" else "jpg"
    path = f"/v1/cameras/{args.camera}/snapshot.{ext}?{urlencode(query)}"
    status, body = request("GET", args.url, args.unix_socket, path, None, token,
                           args.timeout + 5, ca_file=args.ca_file)
    if status != 200:
        detail = body[:300].decode("utf-8", "replace")
        hint = unauthorized_hint(args.token_file) if status == 401 else ""
        raise FramebusError(f"snapshot of {args.camera}: HTTP {status}: {detail}{hint}")
    return body
