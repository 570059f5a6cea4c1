"""The daemon as a service: sd_notify on a real NOTIFY_SOCKET, SIGHUP reload, shutdown."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apikit import ApiClient
from camerakit import FAST
from fanoutkit import ReaderProcess
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python may not name it


class DaemonProcess:
    """``python -m framebus run`` as a child process, its stderr collected line by line."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "framebus", "run", "-c", str(config)],
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def api(self) -> ApiClient:
        client = wait_for(lambda: ApiClient.from_log(self.lines), 20,
                          "the HTTP address in the log")
        assert client is not None
        return client

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._thread.join(10)


def write_config(path: Path, server: RtspServer, subscribers: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "fifo_dir": str(path.parent / "fifos"),
        "http": {"listen": "127.0.0.1:0"},
        "cameras": {"cam": {"url": server.url("cam"), "idle_decode": "all", **FAST}},
        "subscribers": subscribers,
    }))
    return path


@pytest.fixture
def server(rtsp_server_factory: RtspServerFactory) -> RtspServer:
    return rtsp_server_factory([Mount("cam", width=320, height=240)])


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, list[tuple[float, str]]]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    # the kernel stamps each datagram on arrival: gaps do not depend on this thread's luck
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    received: list[tuple[float, str]] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            stamp = time.time()
            for level, kind, value in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    stamp = seconds + nanoseconds / 1e9
            received.append((stamp, data.decode()))
    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    yield path, received
    stop.set()
    thread.join(5)
    sock.close()


def test_sd_notify_ready_watchdog_reload_stopping_in_order(
    server: RtspServer, tmp_path: Path, notify_socket: tuple[str, list[tuple[float, str]]]
) -> None:
    path, received = notify_socket
    config = write_config(tmp_path / "framebus.yaml", server, {"s1": {"camera": "cam"}})
    daemon = DaemonProcess(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: any("READY=1" in m for _, m in received), 20, "READY=1")
        ready = next(m for _, m in received if "READY=1" in m)
        assert re.search(r"STATUS=\d+/1 cameras streaming, 1 subscribers", ready)
        assert (tmp_path / "fifos" / "s1.fifo").exists()  # FIFOs are set up before READY
        wait_for(lambda: sum("WATCHDOG=1" in m for _, m in received) >= 8, 20, "8 pings")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sum("READY=1" in m for _, m in received) >= 2, 20, "READY after reload")
    finally:
        assert daemon.stop() == 0
    wait_for(lambda: any("STOPPING=1" in m for _, m in received), 5, "STOPPING=1")
    first_ready = next(t for t, m in received if "READY=1" in m)
    assert all(t >= first_ready for t, m in received if "WATCHDOG=1" in m)  # armed at READY
    kinds = [kind for _, m in received for kind in ("READY=1", "RELOADING=1", "STOPPING=1")
             if kind in m]
    assert kinds == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for _, m in received)
    pings = [t for t, m in received if "WATCHDOG=1" in m]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    print(f"\nMEASURED watchdog ping gaps: max {max(gaps):.3f}s (interval 1 s)")
    assert max(gaps) <= 0.5  # at most half the watchdog interval apart


def test_reload_applies_only_differences_and_survives_a_bad_file(
    server: RtspServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "framebus.yaml", server, {"s1": {"camera": "cam",
                                                                      "format": "gray"}})
    daemon = DaemonProcess(config)
    try:
        api = daemon.api()
        wait_for(lambda: api.json("GET", "/v1/cameras/cam")[1]["state"] == "streaming", 20,
                 "streaming")
        reader = ReaderProcess(tmp_path / "fifos" / "s1.fifo", "--reopen")
        reader.wait_frames(5)
        assert api.json("POST", "/v1/subscriptions", {"name": "dyn", "camera": "cam"})[0] == 201
        before = api.json("GET", "/v1/cameras/cam")[1]
        write_config(config, server, {"s1": {"camera": "cam", "format": "gray"},
                                      "s2": {"camera": "cam", "format": "bgr24"}})
        daemon.proc.send_signal(signal.SIGHUP)
        names = lambda: [s["name"] for s in api.json("GET", "/v1/subscriptions")[1][  # noqa: E731
            "subscriptions"]]
        wait_for(lambda: names() == ["dyn", "s1", "s2"], 20, "the new subscriber")
        seen = len(reader.frames)
        reader.wait_frames(seen + 10)  # the unchanged subscriber kept streaming
        after = api.json("GET", "/v1/cameras/cam")[1]
        assert (after["epoch"], after["reconnects"]) == (before["epoch"], before["reconnects"])
        assert api.json("GET", "/v1/subscriptions/s1")[1]["disconnects"] == 0  # FIFO stayed open
        config.write_text("cameras: {cam: {url: [unclosed\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("reload: keeping the running configuration"), 20,
                 "the invalid reload to be refused")
        assert names() == ["dyn", "s1", "s2"]
        assert api.json("GET", "/v1/cameras/cam")[1]["state"] == "streaming"
        reader.kill()
    finally:
        assert daemon.stop() == 0
    assert not any("Traceback" in line for line in daemon.lines)


def test_bad_config_exits_2_and_a_taken_port_exits_1(server: RtspServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: {cam: {url: rtsp://h/x, read_timeout: soon}}\n")
    result = subprocess.run([sys.executable, "-m", "framebus", "run", "-c", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        config = write_config(tmp_path / "taken.yaml", server, {})
        data = yaml.safe_load(config.read_text())
        data["http"]["listen"] = f"127.0.0.1:{port}"
        config.write_text(yaml.safe_dump(data))
        daemon = DaemonProcess(config)
        assert daemon.proc.wait(20) == 1
        daemon.stop()
        assert daemon.logged("cannot start")
    finally:
        holder.close()


def test_logs_go_to_journald_with_fields_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    probe = ("import logging, sys; from framebus.logs import setup_logging; setup_logging(); "
             "print(type(logging.getLogger().handlers[0]).__name__)")
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        info = os.fstat(stderr.fileno())
        for stream, expected in ((f"{info.st_dev}:{info.st_ino}", "JournalHandler"),
                                 ("1:2", "StreamHandler"), ("", "StreamHandler")):
            result = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                                    stderr=stderr, text=True, timeout=60,
                                    env={**os.environ, "JOURNAL_STREAM": stream})
            assert result.stdout.strip() == expected, stream


def test_redaction_filter_removes_userinfo_from_any_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from framebus.logs import RedactingFilter

    logger = logging.getLogger("framebus.test-redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("opening %s", "rtsp://admin:hunter2@192.0.2.1/live")
    assert "hunter2" not in caplog.text and "rtsp://***@192.0.2.1/live" in caplog.text


def test_reload_counts_after_applying_and_a_removed_fifo_dir_ends_the_daemon(
    tmp_path: Path,
) -> None:
    # issue 21: the "reloaded" line (and READY's STATUS=) counted subscribers before the loop
    # thread had added the new one; and framebus@NAME never noticed /run/framebus/NAME being
    # removed by framebus.service's stop (now: exit 1, which systemd's Restart= answers)
    config = tmp_path / "framebus.yaml"
    camera = {"url": "lavfi:testsrc2=size=160x120:rate=10,realtime"}

    def write(subscribers: list[str]) -> None:
        config.write_text(yaml.safe_dump({
            "fifo_dir": str(tmp_path / "fifos"), "http": {"enabled": False},
            "cameras": {"cam": camera},
            "subscribers": {name: {"camera": "cam"} for name in subscribers}}))
    write(["s1"])
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: daemon.logged("framebus running"), 20, "the daemon to start")
        write(["s1", "s2", "s3"])
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("reloaded"), 20, "the reload")
        assert daemon.logged(", 3 subscribers (0 connected)")
        for path in (tmp_path / "fifos").iterdir():
            path.unlink()
        (tmp_path / "fifos").rmdir()
        assert daemon.proc.wait(10) == 1
        assert daemon.logged("was removed under the daemon")
    finally:
        daemon.stop()
