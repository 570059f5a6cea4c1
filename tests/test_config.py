"""Configuration: every kind of bad key or value gets a one-line, key-path error and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from framebus.config import load_config, parse_config, parse_duration, resolve_passwords
from framebus.errors import ConfigError

GOOD = """
fifo_dir: /run/framebus
cameras:
  front:
    url: rtsp://127.0.0.1:8554/front
    username: viewer
    password_env: FRONT_PASSWORD
    read_timeout: 500ms
    backoff: {initial: 1s, max: 2m}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "framebus.yaml"
    path.write_text(text)
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framebus", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"FRONT_PASSWORD": "s3cret-pw", "PATH": "/usr/bin:/bin"})


def test_a_good_file_loads_into_typed_frozen_values(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, GOOD))
    front = config.cameras["front"]
    assert front.read_timeout == 0.5 and front.backoff.max == 120.0 and front.transport == "tcp"
    with pytest.raises(Exception, match="frozen"):
        front.url = "rtsp://elsewhere/x"  # type: ignore[misc]
    monkeypatch.setenv("FRONT_PASSWORD", "s3cret-pw")
    password = resolve_passwords(config)["front"]
    assert password is not None and password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(config) + repr(password) + str(password)


@pytest.mark.parametrize(("text", "error"), [
    ("cameras:\n  front:\n    url: rtsp://h/x\n    read_timeout: soon\n",
     "cameras.front.read_timeout: expected a duration like '5s', got 'soon'"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    stall_timeout: -1s\n",
     "cameras.front.stall_timeout: expected a duration like '5s', got '-1s'"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    colour: red\n",
     "cameras.front.colour: unknown key"),
    ("cameraz: {}\n", "cameraz: unknown key"),
    ("cameras:\n  c: {url: rtsp://h/x}\nsubscribers:\n  s: {camera: c, transport: shm, "
     "format: jpeg}\n", "subscribers.s: transport shm carries raw formats"),
    ("cameras:\n  c: {url: rtsp://h/x}\nsubscribers:\n  s: {cameras: '*', transport: shm, "
     "format: jpeg}\n", "subscribers.s: transport shm carries raw formats (bgr24, rgb24, "
     "gray, yuv420p, nv12), for one camera or several; jpeg frames are small: use transport "
     "fifo"),
    ("cameras:\n  c: {url: rtsp://h/x}\nsubscribers:\n  s: {camera: c, transport: tcp}\n",
     "subscribers.s.transport: Input should be 'fifo' or 'shm'"),
    ("cameras:\n  front: {transport: udp}\n", "cameras.front.url: required key is missing"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    transport: quic\n",
     "cameras.front.transport: Input should be 'tcp', 'udp' or 'auto', got 'quic'"),
    ("cameras:\n  front:\n    url: http://h/x\n", "cameras.front.url: expected an rtsp://"),
    ("cameras:\n  front:\n    url: rtsp://bob:hunter2@h/x\n",
     "cameras.front.url: credentials in the URL are not allowed"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    password: pw\n",
     "cameras.front: password needs a username"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    username: u\n    password: a\n"
     "    password_env: B\n", "give one password source, not password and password_env"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    decoder_threads: 99\n",
     "cameras.front.decoder_threads: Input should be less than or equal to 16, got 99"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    backoff: {initial: 1m, max: 1s}\n",
     "cameras.front.backoff: initial must not exceed max"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    backoff: {jitter: 2}\n",
     "cameras.front.backoff.jitter: Input should be less than or equal to 1"),
    ("cameras:\n  'a b':\n    url: rtsp://h/x\n", "cameras: camera name 'a b' must be"),
    ("cameras: [1, 2]\n", "cameras: Input should be a valid dictionary"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("cameras:\n  front: {url: rtsp://h/x\n", "YAML syntax error at line 3"),
    ("cameras:\n  front:\n    url: rtsp://h/x\n    username: u\n    password_file: /nope\n",
     "cameras.front.password_file: cannot read: No such file or directory"),
])
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path: Path, text: str,
                                                         error: str) -> None:
    result = check_config(write(tmp_path, text))
    assert result.returncode == 2, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert error in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = check_config(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml: cannot read: No such file or directory" in result.stderr


def test_check_config_accepts_the_good_file(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "ok (1 cameras)" in result.stdout


def test_passwords_never_appear_in_errors(tmp_path: Path) -> None:
    text = ("cameras:\n  front:\n    url: rtsp://viewer:TopSecret9@h/x\n    password: TopSecret9\n"
            "    username: 7\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "TopSecret9" not in str(info.value)


def test_credential_from_the_systemd_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "front.pass").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config({"cameras": {"front": {"url": "rtsp://h/x", "username": "u",
                                                 "password_credential": "front.pass"}}})
    password = resolve_passwords(config)["front"]
    assert password is not None and password.get_secret_value() == "from-systemd"


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0),
                                               ("1.5s", 1.5), ("1h", 3600.0), (3, 3.0)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("option", [[], ["-c"]])  # -c as run and bridge take it
def test_the_shipped_example_config_is_valid(tmp_path: Path, option: list[str]) -> None:
    (tmp_path / "front.pass").write_text("example\n")
    example = Path(__file__).resolve().parent.parent / "config" / "framebus.yaml"
    result = subprocess.run([sys.executable, "-m", "framebus", "check-config", *option,
                             str(example)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"CREDENTIALS_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{example}: ok (")


def test_the_shipped_example_checks_outside_systemd_with_a_warning() -> None:
    """README: `framebus check-config config/framebus.yaml` as written, no credentials dir."""
    example = Path(__file__).resolve().parent.parent / "config" / "framebus.yaml"
    result = subprocess.run([sys.executable, "-m", "framebus", "check-config", str(example)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "warning: cameras.front.password_credential: not checked" in result.stderr
    assert "ok (" in result.stdout


@pytest.mark.parametrize(("source", "warning"), [
    ("password_env: NOT_SET_X", "cameras.front.password_env: not checked: NOT_SET_X is not set"),
    ("password_credential: c", "cameras.front.password_credential: not checked"),
])
def test_passwords_only_the_service_can_see_are_warnings_here_and_errors_at_run(
        tmp_path: Path, source: str, warning: str) -> None:
    path = write(tmp_path, f"cameras:\n  front:\n    url: rtsp://h/x\n    username: u\n"
                           f"    {source}\n")
    checked = check_config(path)
    assert checked.returncode == 0 and warning in checked.stderr, checked.stderr
    run = subprocess.run([sys.executable, "-m", "framebus", "run", "-c", str(path)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "is not set" in run.stderr, run.stderr


def test_check_config_still_fails_on_an_unreadable_password_file(tmp_path: Path) -> None:
    config = write(tmp_path, "cameras:\n  c:\n    url: rtsp://h/x\n    username: u\n"
                             f"    password_file: {tmp_path / 'missing.pass'}\n")
    result = check_config(config)
    assert result.returncode == 2
    assert "cameras.c.password_file: cannot read: No such file or directory" in result.stderr


@pytest.mark.parametrize("token", [123456789, 12.5, ["s3cret-list"], {"k": "s3cret-list"}])
def test_a_bad_token_of_any_type_is_never_echoed(token: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"http": {"token": token}})
    message = str(info.value)
    assert message.startswith("config: http.token")
    for shown in ("123456789", "12.5", "s3cret-list"):
        assert shown not in message


@pytest.mark.parametrize("query", ["password=hunter2", "user=a&pwd=hunter2", "Token=hunter2",
                                   "api_key=hunter2", "auth=hunter2"])
def test_credentials_in_the_url_query_are_refused_without_echo(query: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cameras": {"c": {"url": f"rtsp://h/x?{query}"}}})
    assert "cameras.c.url: credentials in the URL's query" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_urls_are_shown_with_credential_query_values_redacted() -> None:
    from framebus.urls import redact_url

    assert redact_url("rtsp://u:p@h:554/x?channel=1&password=hunter2") == (
        "rtsp://h:554/x?channel=1&password=REDACTED")
    assert redact_url("rtsp://h/x?subtype=0") == "rtsp://h/x?subtype=0"


@pytest.mark.parametrize("kind", ["cameras", "subscribers"])
def test_names_with_a_trailing_newline_are_refused(kind: str) -> None:
    # a regex ending in "$" matches before a final newline; names go into paths and keys
    data: dict[str, Any] = {"cameras": {"front": {"url": "rtsp://h/x"}}}
    if kind == "cameras":
        data["cameras"]["front\n"] = {"url": "rtsp://h/y"}
    else:
        data["subscribers"] = {"s\n": {"camera": "front"}}
    with pytest.raises(ConfigError, match="must be 1-64 of"):
        parse_config(yaml.safe_load(yaml.safe_dump(data)))  # as a file would give it


@pytest.mark.parametrize("url", ["lavfi:testsrc2", "/srv/clip.mp4", "zenoh:cam1/lobby/nv12"])
def test_credentials_on_a_source_that_cannot_use_them_are_refused(url: str) -> None:
    # a lavfi graph took them and failed with "filter not found", far from the cause
    with pytest.raises(ConfigError, match="username and password are for rtsp://"):
        parse_config({"cameras": {"c": {"url": url, "username": "u", "password": "p"}}})
