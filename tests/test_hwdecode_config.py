"""``hwaccel`` in the configuration (issue 23): a typo or a device that does not fit its kind
fails ``check-config`` naming the key; hardware this host cannot offer is a warning saying
what the camera will do; ``--probe`` opens every device and says what works; ``defaults``
gives cameras that set nothing a hwaccel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framebus.config import parse_config
from framebus.errors import ConfigError

MISSING_NODE = "/dev/dri/renderD199"  # no host has it


def check(tmp_path: Path, cameras: dict[str, dict[str, object]], *args: str,
          **top: object) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "framebus.yaml"
    path.write_text(yaml.safe_dump({"fifo_dir": str(tmp_path / "fifos"), "cameras": cameras,
                                    **top}))
    return subprocess.run([sys.executable, "-m", "framebus", "check-config", *args, str(path)],
                          capture_output=True, text=True, timeout=60)


def cam(**keys: object) -> dict[str, object]:
    return {"url": "rtsp://127.0.0.1:8554/x", **keys}


def test_a_typo_fails_check_config_with_the_key_and_the_near_value(tmp_path: Path) -> None:
    done = check(tmp_path, {"a": cam(hwaccel="vaapu")})
    assert done.returncode == 2
    assert ("cameras.a.hwaccel: Input should be 'none', 'auto', 'cuda', 'vaapi' or 'qsv', got "
            "'vaapu' (did you mean 'vaapi'?)") in done.stderr


@pytest.mark.parametrize(("keys", "expected"), [
    ({"hwaccel": "cuda", "hwaccel_device": "/dev/dri/renderD128"},
     "cameras.a.hwaccel_device: for cuda, a GPU index like '0'"),
    ({"hwaccel": "vaapi", "hwaccel_device": "0"},
     "cameras.a.hwaccel_device: for vaapi, a DRM render node like '/dev/dri/renderD128'"),
    ({"hwaccel_device": "0"}, "cameras.a.hwaccel_device: names a device, but hwaccel is 'none'"),
    ({"hwaccel_required": True},
     "cameras.a.hwaccel_required: true needs hwaccel: auto, cuda, vaapi or qsv"),
])
def test_settings_that_do_not_fit_name_the_key(tmp_path: Path, keys: dict[str, object],
                                               expected: str) -> None:
    done = check(tmp_path, {"a": cam(**keys)})
    assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_hardware_this_host_cannot_offer_is_a_warning_saying_what_happens(
        tmp_path: Path) -> None:
    done = check(tmp_path, {
        "a": cam(hwaccel="qsv", hwaccel_device=MISSING_NODE),
        "b": cam(hwaccel="qsv", hwaccel_device=MISSING_NODE, hwaccel_required=True)})
    assert done.returncode == 0, done.stderr
    assert (f"framebus: warning: cameras.a.hwaccel: qsv cannot work on this host (qsv: "
            f"{MISSING_NODE} does not exist") in done.stderr
    lines = done.stderr.splitlines()
    assert next(x for x in lines if "cameras.a." in x).endswith(
        "the camera will decode in software")
    assert next(x for x in lines if "cameras.b." in x).endswith(
        "the camera will not stream (hwaccel_required: true)")


def test_probe_opens_every_device_and_says_what_works(tmp_path: Path) -> None:
    done = check(tmp_path, {"a": cam(hwaccel="qsv", hwaccel_device=MISSING_NODE),
                            "b": cam(hwaccel="auto")}, "--probe")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for kind in ("cuda", "vaapi", "qsv"):
        line = next(x for x in lines if x.startswith(f"hwaccel {kind}: "))
        assert ": ok, decodes " in line or ": unavailable: " in line, line
        assert line.endswith("[cameras: b]"), line
    assert (f"hwaccel qsv ({MISSING_NODE}): unavailable: {MISSING_NODE} does not exist"
            in done.stdout)
    assert lines[-1].endswith(": ok (2 cameras)")


def test_defaults_apply_to_cameras_that_set_no_hwaccel() -> None:
    config = parse_config({
        "defaults": {"hwaccel": "cuda", "hwaccel_device": "1", "hwaccel_required": True},
        "cameras": {"plain": cam(), "own": cam(hwaccel="none"),
                    "other": cam(hwaccel="qsv", hwaccel_device=MISSING_NODE)}})
    got = {name: (c.hwaccel, c.hwaccel_device, c.hwaccel_required)
           for name, c in config.cameras.items()}
    assert got == {"plain": ("cuda", "1", True), "own": ("none", None, False),
                   "other": ("qsv", MISSING_NODE, False)}


def test_bad_defaults_are_one_error_not_one_per_camera() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"defaults": {"hwaccel": "cuad"}, "cameras": {"a": cam(), "b": cam()}})
    assert caught.value.problems == [
        "defaults.hwaccel: Input should be 'none', 'auto', 'cuda', 'vaapi' or 'qsv', got "
        "'cuad' (did you mean 'cuda'?)"]


def test_an_empty_hwaccel_means_software_as_before() -> None:
    config = parse_config({"cameras": {"a": cam(hwaccel=None)}})
    assert config.cameras["a"].hwaccel == "none"
