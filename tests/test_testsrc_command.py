"""``framebus testsrc``: the test RTSP server as a documented command. Real processes: the
command, gst-rtsp-server under it, PyAV as the client."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest
import yaml
from prockit import LineProcess
from waiting import wait_for

from framebus.config import parse_config

TIMEOUT_S = 60.0


class Command(LineProcess):
    """``framebus testsrc ...`` with its stdout lines collected."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", "framebus", "testsrc", *args],
                         stderr=subprocess.PIPE)

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, cameras: int) -> None:
        """Until the config block lists ``cameras`` URLs (AssertionError if it exits)."""
        wait_for(lambda: self.proc.poll() is not None or self.text().count("url: ") >= cameras,
                 TIMEOUT_S, "testsrc to print its config block", poll=0.05)
        if self.proc.poll() is not None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"testsrc exited ({self.proc.returncode}): {err}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT_S)
        finally:
            self.collected(5)


def first_frame(url: str) -> av.VideoFrame:
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=10) as container:
        return next(container.decode(video=0))


def test_serves_patterns_with_auth_and_prints_a_config_without_the_password(
        tmp_path: Path) -> None:
    secret = "s3cret-Pw"
    password = tmp_path / "cam.pass"
    password.write_text(secret + "\n")
    cmd = Command("lobby", "--size", "320x180", "--fps", "15", "--port", "0",
                  "--user", "alice", "--password-file", str(password))
    try:
        cmd.wait_ready(1)
        url = re.search(r"rtsp://127\.0\.0\.1:\d+/lobby", cmd.text())
        assert url is not None, cmd.text()
        with pytest.raises(av.error.FFmpegError):  # no credentials: refused
            first_frame(url.group(0))
        frame = first_frame(url.group(0).replace("rtsp://", f"rtsp://alice:{secret}@"))
        assert (frame.width, frame.height) == (320, 180)
        block = cmd.text().split("For a framebus config:", 1)[1]
        config = parse_config(yaml.safe_load(block))
        assert config.cameras["lobby"].username == "alice"
        assert config.cameras["lobby"].password_file == password.resolve()
        pid = re.search(r"server pid (\d+)", cmd.text())
        assert pid is not None
        server_pid = int(pid.group(1))
        cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        assert secret not in cmd.text()
    finally:
        assert cmd.stop() == 0
    # the server never outlives the command (it is ended with it, or exits at stdin EOF)
    wait_for(lambda: not Path(f"/proc/{server_pid}").exists(), TIMEOUT_S,
             "the RTSP server to exit with the command")


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "100"], "--size '100': expected WIDTHxHEIGHT"),
    (["--size", "321x180"], "must be even"),
    (["--user", "alice"], "--user and --password-file go together"),
    (["--clip", "cam"], "expected NAME=FILE"),
    (["bad/name"], "camera name 'bad/name'"),
    (["a", "a"], "camera names must be unique"),
])
def test_bad_arguments_say_which_and_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "framebus", "testsrc", *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
