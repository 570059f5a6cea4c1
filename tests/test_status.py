"""``framebus status`` and /healthz against a running daemon with one streaming and one dark
camera: the table, --json, exit codes, and errors that name the URL and what to do."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apikit import ApiClient
from fanoutkit import running_daemon
from prockit import free_port
from rtspserver import Mount, RtspServer, RtspServerFactory
from waiting import wait_for

from framebus.daemon import Daemon


@pytest.fixture
def daemon(rtsp_server_factory: RtspServerFactory, tmp_path: Path) -> Iterator[Daemon]:
    server: RtspServer = rtsp_server_factory([Mount("cam", width=320, height=240)])
    dark = f"rtsp://127.0.0.1:{free_port()}/nothing"  # nobody listens there
    with running_daemon({"cam": {"url": server.url("cam"), "idle_decode": "all"},
                         "dark": {"url": dark}},
                        {"sub": {"camera": "cam", "format": "gray"}}, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0"}) as running:
        wait_for(lambda: running.store.latest("cam") is not None, 20, "a first frame")
        yield running


def framebus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framebus", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_status_shows_cameras_and_subscribers_and_exits_3_when_degraded(daemon: Daemon) -> None:
    api = ApiClient(daemon)
    token = str(daemon.token_path)
    shown = framebus("status", "--url", api.url, "--token-file", token)
    assert shown.returncode == 3, shown.stderr  # "dark" is not streaming
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["CAMERA", "STATE", "FPS"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows["cam"][1] == "streaming" and rows["cam"][3] == "320x240"
    assert rows["dark"][1] in ("connecting", "backoff")
    assert rows["sub"][1:4] == ["cam", "fifo", "gray"]
    as_json = framebus("status", "--url", api.url, "--token-file", token, "--json")
    data = json.loads(as_json.stdout)
    assert [c["name"] for c in data["cameras"]] == ["cam", "dark"]
    assert [s["name"] for s in data["subscriptions"]] == ["sub"]


def test_status_errors_name_the_url_and_what_to_do(daemon: Daemon, tmp_path: Path) -> None:
    api = ApiClient(daemon)
    refused = framebus("status", "--url", api.url)  # no token anywhere
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "--token-file" in refused.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = framebus("status", "--url", nowhere)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert f"cannot reach the framebus daemon at {nowhere}" in down.stderr
    snap = framebus("snapshot", "cam", "--url", nowhere, "--out", str(tmp_path / "x.jpg"))
    assert snap.returncode == 1 and f"cannot reach the framebus daemon at {nowhere}" in (
        snap.stderr)
    sock = tmp_path / "absent.sock"
    snap = framebus("snapshot", "cam", "--fifo", "--unix-socket", str(sock), "--fifo-dir",
                    str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert snap.returncode == 1 and f"unix socket {sock}" in snap.stderr, snap.stderr


def test_healthz_names_the_cameras_that_do_not_stream(daemon: Daemon) -> None:
    status, body = ApiClient(daemon, token="").json("GET", "/healthz")  # open: no token
    assert status == 200
    assert body["status"] == "degraded" and body["cameras"] == 2 and body["streaming"] == 1
    assert set(body["not_streaming"]) == {"dark"}


def test_a_taken_http_address_is_named_and_the_daemon_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "framebus.yaml"
        config.write_text(f"fifo_dir: {tmp_path / 'fifos'}\nhttp:\n  listen: 127.0.0.1:{port}\n")
        ran = subprocess.run([sys.executable, "-m", "framebus", "run", "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1, ran.stderr
    assert f"http.listen 127.0.0.1:{port}: Address already in use" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_framebus_url_is_the_default_url(daemon: Daemon) -> None:
    """Issue 21: `$FRAMEBUS_URL` names the daemon for every command that takes --url."""
    api = ApiClient(daemon)
    env = {"PATH": "/usr/bin:/bin", "FRAMEBUS_URL": api.url,
           "FRAMEBUS_TOKEN_FILE": str(daemon.token_path)}
    shown = subprocess.run([sys.executable, "-m", "framebus", "status"], capture_output=True,
                           text=True, timeout=60, env=env)
    assert shown.returncode == 3, shown.stderr  # found, and "dark" does not stream
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run([sys.executable, "-m", "framebus", "snapshot", "cam"],
                          capture_output=True, text=True, timeout=60,
                          env={**env, "FRAMEBUS_URL": nowhere})
    assert down.returncode == 1 and f"cannot reach the framebus daemon at {nowhere}" in (
        down.stderr), down.stderr
    assert "$FRAMEBUS_URL" in down.stderr


def test_a_token_file_that_cannot_be_read_is_named(daemon: Daemon, tmp_path: Path) -> None:
    """Issue 21: not silently dropped for a bare 401."""
    api = ApiClient(daemon)
    absent = tmp_path / "no-such.token"
    for named in (absent, tmp_path):  # missing, and a directory
        env = {"PATH": "/usr/bin:/bin", "FRAMEBUS_TOKEN_FILE": str(named)}
        refused = subprocess.run([sys.executable, "-m", "framebus", "status", "--url", api.url],
                                 capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 1 and "HTTP 401" not in refused.stderr, refused.stderr
        assert (f"cannot read the API token file {named} (named by $FRAMEBUS_TOKEN_FILE)"
                in refused.stderr), refused.stderr
    given = framebus("snapshot", "cam", "--url", api.url, "--token-file", str(absent),
                     "--out", str(tmp_path / "x.jpg"))
    assert given.returncode == 1
    assert f"cannot read the API token file {absent}: No such file" in given.stderr
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    refused = framebus("status", "--url", api.url, "--token-file", str(wrong))
    assert "HTTP 401" in refused.stderr
    assert f"the daemon refused the token from {wrong}" in refused.stderr, refused.stderr


def test_the_table_shows_fifo_modes_in_octal(daemon: Daemon) -> None:
    """Issue 21: the API's JSON keeps its integer (its schema says so); people read 0660."""
    api = ApiClient(daemon)
    shown = framebus("status", "--url", api.url, "--token-file", str(daemon.token_path))
    lines = shown.stdout.splitlines()
    heading = next(line for line in lines if line.startswith("SUBSCRIBER"))
    row = next(line for line in lines if line.startswith("sub "))
    assert heading.split()[4] == "MODE" and row.split()[4] == "0660", shown.stdout
    as_json = json.loads(framebus("status", "--url", api.url, "--token-file",
                                  str(daemon.token_path), "--json").stdout)
    assert as_json["subscriptions"][0]["mode"] == 0o660  # the API's answer, unchanged


def test_snapshot_writes_the_format_its_suffix_names(daemon: Daemon, tmp_path: Path) -> None:
    """Issue 21: no JPEG bytes under a .webp name; .jpeg and .png are what they say."""
    api = ApiClient(daemon)
    token = str(daemon.token_path)
    webp = tmp_path / "x.webp"
    refused = framebus("snapshot", "cam", "--url", api.url, "--token-file", token,
                       "--out", str(webp))
    assert refused.returncode == 2 and not webp.exists()
    assert "name the file .jpg, .jpeg or .png" in refused.stderr, refused.stderr
    for name, magic in (("x.jpeg", b"\xff\xd8\xff"), ("x.PNG", b"\x89PNG")):
        saved = framebus("snapshot", "cam", "--url", api.url, "--token-file", token,
                         "--out", str(tmp_path / name))
        assert saved.returncode == 0, saved.stderr
        assert (tmp_path / name).read_bytes().startswith(magic), name
