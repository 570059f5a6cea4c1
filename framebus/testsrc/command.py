"""``framebus testsrc``: the test RTSP server as a command, to try a config against cameras
that behave like real ones and to rehearse outages before they happen.

It serves generated test patterns (or existing Annex-B clips) on 127.0.0.1 with
gst-rtsp-server (:mod:`framebus.testsrc.harness`), prints each camera's URL and the
``cameras:`` block to paste into a config, and runs until Ctrl-C or SIGTERM. Outages are
rehearsed with signals to the server process it names: SIGSTOP freezes every stream (the
daemon sees a stall), SIGCONT resumes it, and stopping this command then starting it again on
the same ``--port`` is a camera reboot.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

import yaml

from framebus.errors import FramebusError
from framebus.testsrc.harness import Mount, RtspServer, RtspServerError

_SIZE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``testsrc`` subcommand's arguments."""
    parser = sub.add_parser(
        "testsrc", help="serve test RTSP cameras on 127.0.0.1 (try a config, rehearse outages)")
    parser.add_argument("cameras", nargs="*", metavar="NAME",
                        help="a test-pattern camera per name (default: cam)")
    parser.add_argument("--clip", action="append", default=[], metavar="NAME=FILE",
                        help="serve an existing H.264/H.265 Annex-B file as camera NAME")
    parser.add_argument("--size", default="1280x720", help="pattern size (default 1280x720)")
    parser.add_argument("--fps", type=int, default=25, help="frames per second (default 25)")
    parser.add_argument("--codec", choices=("h264", "h265"), default="h264")
    parser.add_argument("--port", type=int, default=8554,
                        help="TCP port on 127.0.0.1 (default 8554, 0: any free one)")
    parser.add_argument("--user", help="require this user name (Basic auth) on every camera")
    parser.add_argument("--password-file", type=Path,
                        help="its password, read from this file (never from the command line)")


def mounts(args: argparse.Namespace) -> list[Mount]:
    """The mounts the arguments ask for; ValueError naming the argument otherwise."""
    size = _SIZE.fullmatch(args.size)
    if size is None:
        raise ValueError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
    width, height = int(size.group(1)), int(size.group(2))
    if width % 2 or height % 2:
        raise ValueError(f"--size {args.size}: width and height must be even (4:2:0 video)")
    if not 1 <= args.fps <= 120:
        raise ValueError(f"--fps {args.fps}: expected 1..120")
    user = password = None
    if (args.user is None) != (args.password_file is None):
        raise ValueError("--user and --password-file go together")
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"--password-file {args.password_file}: {exc.strerror}") from None
        if not password:
            raise ValueError(f"--password-file {args.password_file}: the file is empty")
        user = args.user
    clips: dict[str, Path] = {}
    for item in args.clip:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise ValueError(f"--clip {item!r}: expected NAME=FILE")
        if not Path(file).is_file():
            raise ValueError(f"--clip {item!r}: {file} is not a file")
        clips[name] = Path(file)
    names = list(args.cameras) or ([] if clips else ["cam"])
    for name in [*names, *clips]:
        if not _NAME.fullmatch(name):
            raise ValueError(f"camera name {name!r}: 1-64 of A-Z a-z 0-9 _ . - "
                             "starting with a letter or digit")
    if len(set(names) | set(clips)) != len(names) + len(clips):
        raise ValueError("camera names must be unique")
    gop = args.fps  # a keyframe a second, as cameras usually send
    made = [Mount(name, codec=args.codec, width=width, height=height, fps=args.fps,
                  seconds=2.0, gop=gop, user=user, password=password) for name in names]
    made += [Mount(name, codec=args.codec, fps=args.fps, user=user, password=password,
                   path=path) for name, path in clips.items()]
    return made


def config_block(server: RtspServer, args: argparse.Namespace) -> str:
    """The ``cameras:`` block for a framebus config (the password stays in its file)."""
    cameras: dict[str, dict[str, str]] = {}
    for name in server.mounts:
        entry = {"url": server.url(name)}
        if args.user is not None:
            entry["username"] = args.user
            entry["password_file"] = str(args.password_file.resolve())
        cameras[name] = entry
    return yaml.safe_dump({"cameras": cameras}, sort_keys=False)


def run_testsrc(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until SIGINT/SIGTERM; 0 then, 2 for bad arguments, 1 if the server fails."""
    try:
        wanted = mounts(args)
    except ValueError as exc:
        print(f"framebus testsrc: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _n, _f: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        out.write(f"testsrc: encoding {len(wanted)} clip(s) if not cached yet ...\n")
        out.flush()
        try:
            server = RtspServer(wanted, port=args.port).start()
        except (RtspServerError, OSError) as exc:
            raise FramebusError(f"testsrc: the RTSP server did not start: {exc}") from None
        with server:
            for name in server.mounts:
                out.write(f"  {name}: {server.url(name)}\n")
            out.write(f"server pid {server.pid}: kill -STOP {server.pid} freezes every camera "
                      f"(a stall), kill -CONT {server.pid} resumes; Ctrl-C stops.\n"
                      "For a framebus config:\n\n" + config_block(server, args) + "\n")
            out.flush()
            while not stop.wait(0.5):
                if not server.running:
                    raise FramebusError("testsrc: the RTSP server exited: "
                                        + server.stderr_text()[-500:])
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
