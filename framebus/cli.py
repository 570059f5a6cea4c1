"""framebus: decode each camera once, fan frames out to local consumers over FIFOs.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration, 130 interrupted.
Errors print one line to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from framebus import __version__
from framebus.apiclient import default_url
from framebus.errors import ConfigError, FramebusError
from framebus.remote.cli_support import add_remote_options, remote_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
URL_HELP = ("the daemon's control URL, http:// or https:// (default: $FRAMEBUS_URL, else "
            "http://127.0.0.1:8470)")
CA_HELP = ("for an https:// URL: trust only this PEM file (the daemon's self-signed certificate "
           "or its CA; default: $FRAMEBUS_CA_FILE, else the system's CAs)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what snapshot can encode (imaging.encode_image)


def _image_path(text: str) -> Path:
    # the format follows the suffix: JPEG bytes under a .webp name would mislead every viewer
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: snapshot writes JPEG or PNG, chosen by the suffix: name the file "
            f"{', '.join(IMAGE_SUFFIXES[:-1])} or {IMAGE_SUFFIXES[-1]}")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="framebus", description=__doc__.splitlines()[0].removeprefix("framebus: "),
        epilog="framebus COMMAND --help shows a command's options; docs: README.md")
    parser.add_argument("--version", action="version", version=f"framebus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, required=True)
    run.add_argument("--log-level", default="INFO",
                     choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.add_argument("--host", help="this host's name in a fleet config: run only the cameras "
                     "without host: or with this one (default: remote.host, else the hostname)")

    bridge = sub.add_parser("bridge", help="export the config's remote: renditions to zenoh")
    bridge.add_argument("-c", "--config", type=Path, required=True)
    bridge.add_argument("--host", help="this host's name in keys (default: remote.host, "
                        "else the hostname)")
    bridge.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    router = sub.add_parser("router", help="run a zenoh router for a site (as zenohd would)")
    router.add_argument("--zenoh-config", type=Path, help="e.g. /etc/framebus/zenoh/router.json5")
    router.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                        help="e.g. tcp/0.0.0.0:7447 (repeatable; replaces the file's)")
    router.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    where = check.add_mutually_exclusive_group(required=True)
    where.add_argument("config", type=Path, nargs="?")
    where.add_argument("-c", "--config", type=Path, dest="config_option",
                       metavar="CONFIG", help="the same, as run and bridge take it")
    check.add_argument("--probe", action="store_true",
                       help="also open every hardware decoding device (cuda, vaapi, qsv) and "
                       "say what works on this host")

    snap = sub.add_parser("snapshot", help="save the newest frame of a camera as JPEG/PNG")
    snap.add_argument("camera", help="a camera name, or zenoh:[HOST/]CAMERA[/RENDITION] for a "
                      "camera another host exports")
    snap.add_argument("--out", type=_image_path,
                      help="image file (.jpg, .jpeg or .png: the suffix picks the format); "
                      "default CAMERA.jpg")
    snap.add_argument("--fifo", action="store_true",
                      help="fetch the raw frame through a private FIFO instead of HTTP")
    snap.add_argument("--url", default=default_url(), help=URL_HELP)
    snap.add_argument("--unix-socket")
    snap.add_argument("--ca-file", type=Path, help=CA_HELP)
    snap.add_argument("--fifo-dir", help="where to make the private FIFO (with --fifo)")
    snap.add_argument("--width", type=_positive_int)
    snap.add_argument("--height", type=_positive_int)
    snap.add_argument("--quality", type=_positive_int, default=85)
    snap.add_argument("--token-file", type=Path)
    snap.add_argument("--timeout", type=float, default=5.0)
    add_remote_options(snap)

    stat = sub.add_parser("status", help="cameras and subscribers at a glance (exit 3: degraded)")
    stat.add_argument("--url", default=default_url(), help=URL_HELP)
    stat.add_argument("--unix-socket")
    stat.add_argument("--ca-file", type=Path, help=CA_HELP)
    stat.add_argument("--token-file", type=Path,
                      help="default: $FRAMEBUS_TOKEN, $FRAMEBUS_TOKEN_FILE, "
                      "/run/framebus/api.token")
    stat.add_argument("--json", action="store_true", help="the API's answers as JSON")
    stat.add_argument("--timeout", type=_positive_float, default=5.0)
    stat.add_argument("--fleet", action="store_true",
                      help="every framebus host on the zenoh network (bridges), not this one")
    add_remote_options(stat)

    watch = sub.add_parser("watch", help="show fps, size, latency and misses of FIFOs")
    watch.add_argument("fifo", type=Path, nargs="+", help="one or more subscriber FIFOs, or "
                       "zenoh:[HOST/]CAMERA[/RENDITION] for cameras other hosts export")
    watch.add_argument("--duration", type=float, help="stop after this many seconds")
    watch.add_argument("--count", type=_positive_int, help="stop after this many frames")
    watch.add_argument("-c", "--config", type=Path,
                       help="the daemon's config: a missing FIFO is told its fifo_dir")
    add_remote_options(watch)

    dump = sub.add_parser("dump", help="save frames from a FIFO as PNG or JPEG files")
    dump.add_argument("fifo", type=Path, help="a subscriber FIFO, or zenoh:[HOST/]CAMERA")
    dump.add_argument("--out", type=Path, required=True, help="directory for the images")
    dump.add_argument("--count", type=_positive_int, default=1)
    dump.add_argument("--image", choices=("png", "jpeg"), default="png")
    dump.add_argument("--timeout", type=float, default=None, help="seconds to wait per frame")
    dump.add_argument("-c", "--config", type=Path,
                      help="the daemon's config: a missing FIFO is told its fifo_dir")
    add_remote_options(dump)

    demo = sub.add_parser("demo", help="run two RTSP test cameras, the daemon and a live watch")
    demo.add_argument("--duration", type=_positive_float,
                      help="watch for this many seconds, then stop")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary directory (config, FIFOs, daemon log)")
    from framebus.testsrc.command import add_parser as add_testsrc

    add_testsrc(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``framebus`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"framebus: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FramebusError, OSError, TimeoutError) as exc:
        print(f"framebus: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from framebus.config import for_host, load_config, resolve_passwords
        from framebus.daemon import run
        from framebus.logs import setup_logging
        from framebus.signals import exit_past_stuck_threads

        config = for_host(load_config(args.config), args.host)
        passwords = resolve_passwords(config)
        setup_logging(args.log_level)
        return exit_past_stuck_threads(run(config, passwords, args.config, host=args.host))
    if args.command == "bridge":
        from framebus.logs import setup_logging
        from framebus.remote.bridge import run_bridge

        setup_logging(args.log_level)
        return run_bridge(args.config, args.host)
    if args.command == "router":
        from framebus.logs import setup_logging
        from framebus.remote.router import run_router

        setup_logging(args.log_level)
        return run_router(args.zenoh_config, args.listen)
    if args.command == "check-config":
        from framebus.configcheck import check_file

        path = args.config or args.config_option
        config, warnings = check_file(path)
        for warning in warnings:
            print(f"framebus: warning: {warning}", file=sys.stderr)
        if args.probe:
            from framebus.hwdecode.probe import probe_lines

            for line in probe_lines((n, c.decoding) for n, c in config.cameras.items()):
                print(line)
        print(f"{path}: ok ({len(config.cameras)} cameras)")
        return EXIT_OK
    if args.command == "snapshot":
        from framebus.snapshot import snapshot

        return snapshot(args)
    if args.command == "status" and args.fleet:
        from framebus.remote.fleet import fleet_status
        from framebus.remote.session import open_session

        session = open_session(remote_config(args))
        try:
            return fleet_status(session, args.timeout, args.json, sys.stdout)
        finally:
            session.close()
    if args.command == "status":
        from framebus.status import status

        return status(args, sys.stdout)
    if args.command == "watch":
        from framebus.watch import consumer_log, remote_log, watch

        with consumer_log(args.config):
            remote_log(args.fifo)
            return watch(args.fifo, args.duration, args.count, sys.stdout,
                         remote=remote_config(args))
    if args.command == "dump":
        from framebus.watch import consumer_log, dump, remote_log

        with consumer_log(args.config):
            remote_log([args.fifo])
            return dump(args.fifo, args.out, args.count, args.image, args.timeout,
                        remote=remote_config(args))
    if args.command == "testsrc":
        from framebus.testsrc.command import run_testsrc

        return run_testsrc(args, sys.stdout)
    if args.command == "demo":
        from framebus.demo import run_demo

        return run_demo(args.duration, args.keep, sys.stdout)
    raise AssertionError(f"unhandled command {args.command}")
