"""``pip install <checkout>`` writes nothing into the checkout and warns about nothing
(issue 21, newcomer finding 7: it left ``build/`` behind, and setuptools printed its license
deprecation box on every install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def setuptools_version() -> tuple[int, ...]:
    import setuptools

    return tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())


def copy_checkout(into: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as a fresh clone would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                            timeout=60).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (into / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name.decode())


@pytest.mark.skipif(setuptools_version() < (77,),
                    reason="the venv's setuptools predates SPDX licenses (make setup upgrades it)")
def test_building_the_wheel_leaves_the_checkout_as_it_was(tmp_path: Path) -> None:
    checkout = tmp_path / "framebus"
    copy_checkout(checkout)
    before = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))
    # the venv's own setuptools (no download): the same backend pip's isolated build gets
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path / "dist"),
                             str(checkout)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    after = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))
    assert after == before  # no build/, no framebus.egg-info
    assert "deprecated" not in result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("framebus-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist()
                                     if n.endswith(".dist-info/METADATA"))).decode()
        assert "framebus/daemon.py" in archive.namelist()
        assert not any(name.startswith(("tests/", "bench/")) for name in archive.namelist())
    assert "License-Expression: MIT" in metadata.splitlines()


def test_the_build_directories_are_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "build/x", "dist/x", "x.egg-info/y"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ignored.stdout.split() == ["build/x", "dist/x", "x.egg-info/y"]
