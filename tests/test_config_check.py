"""``framebus check-config`` tells everything at once (issue 21): every problem of a file, "did
you mean" for a mistyped key, a warning for a file without cameras, and a subscriber FIFO whose
directory does not exist (which ``run`` fails on) - through the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from framebus.config import Config, parse_config
from framebus.configcheck import keys_at
from framebus.errors import ConfigError


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framebus", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin"})


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "framebus.yaml"
    path.write_text(text)
    return path


def test_a_mistyped_key_is_named_with_what_was_meant_and_nothing_is_hidden(
        tmp_path: Path) -> None:
    text = ("cameras:\n  front:\n    uri: rtsp://h/x\n    read_timout: 5s\n"
            "subscribers:\n  det: {camera: front, fromat: gray}\n")
    result = check_config(written(tmp_path, text))
    assert result.returncode == 2, result.stdout
    [line] = result.stderr.splitlines()  # one line still: logs and scripts read one
    assert "more)" not in line
    for problem in ("4 problems",
                    "cameras.front.uri: unknown key (did you mean 'url'?)",
                    "cameras.front.read_timout: unknown key (did you mean 'read_timeout'?)",
                    "subscribers.det.fromat: unknown key (did you mean 'format'?)",
                    "cameras.front.url: required key is missing"):
        assert problem in line, line
    assert line.index("unknown key") < line.index("required key")  # the cause comes first


def test_problems_are_listed_one_by_one_for_callers() -> None:
    try:
        parse_config({"cameraz": {}, "fifo_dri": "/tmp", "http": {"listne": "x"}})
    except ConfigError as exc:
        assert sorted(exc.problems) == ["cameraz: unknown key (did you mean 'cameras'?)",
                                "fifo_dri: unknown key (did you mean 'fifo_dir'?)",
                                "http.listne: unknown key (did you mean 'listen'?)"]
    else:
        raise AssertionError("accepted")


def test_did_you_mean_looks_where_the_key_is() -> None:
    assert "url" in keys_at(Config, ("cameras", "front"))
    assert "initial" in keys_at(Config, ("cameras", "front", "backoff"))
    assert "rendition" not in keys_at(Config, ("cameras", "front"))
    assert "format" in keys_at(Config, ("subscribers", "det"))
    assert keys_at(Config, ("cameras", "front", "url")) == []  # a string, not a mapping
    assert keys_at(BaseModel, ("nothing",)) == []
    one_unknown = {"cameras": {"c": {"url": "rtsp://h/x", "zzzzqq": 1}}}
    try:
        parse_config(one_unknown)
    except ConfigError as exc:
        assert str(exc) == "config: cameras.c.zzzzqq: unknown key"  # nothing near: no guess
    else:
        raise AssertionError("accepted")


def test_an_empty_file_is_warned_about(tmp_path: Path) -> None:
    result = check_config(written(tmp_path, ""))
    assert result.returncode == 0, result.stderr
    assert "the file is empty: the daemon would run with nothing to decode" in result.stderr
    only_subscribers = check_config(written(tmp_path, "fifo_dir: /tmp/x\n"))
    assert "no cameras are configured" in only_subscribers.stderr


def test_a_fifo_in_a_missing_directory_fails_check_config_as_it_fails_run(
        tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifos"
    typo = tmp_path / "fifoz" / "det.fifo"
    text = (f"fifo_dir: {fifo_dir}\nhttp: {{enabled: false}}\ncameras:\n  c: {{url: "
            f"rtsp://127.0.0.1:9/x}}\nsubscribers:\n  det: {{camera: c, fifo: {typo}}}\n"
            f"  fine: {{camera: c}}\n  beside: {{camera: c, fifo: {tmp_path}/b.fifo}}\n")
    config = written(tmp_path, text)
    checked = check_config(config)
    assert checked.returncode == 2, checked.stdout
    expected = (f"subscribers.det.fifo: {typo}: cannot create the FIFO: directory "
                f"{typo.parent} does not exist")
    assert expected in checked.stderr and "fine" not in checked.stderr, checked.stderr
    run = subprocess.run([sys.executable, "-m", "framebus", "run", "-c", str(config)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and expected in run.stderr, run.stderr  # the same words
    assert not typo.parent.exists()
