"""Least privilege: the daemon started as an unprivileged user (``nobody``; the test needs
root) streams with no supplementary groups and no capabilities, and writes nothing but its
FIFO. Marked ``soak`` (``make soak``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from faultkit import STREAMING, CheckedReader, DaemonProcess, camera_config, write_daemon_config
from matrixkit import H, W
from rtspserver import Mount, RtspServerFactory
from waiting import wait_for


def closed_to_others(path: str) -> str:
    """The first directory on the way to ``path`` (symlinks resolved) that users other than its
    owner and group cannot traverse, as ``dir (mode owner:group)``; empty if there is none."""
    real = Path(os.path.realpath(path))
    for directory in [*reversed(real.parents), real]:
        info = directory.stat()
        needed = 0o001 if directory.is_dir() else 0o004
        if not info.st_mode & needed:
            owner = pwd.getpwuid(info.st_uid).pw_name
            group = grp.getgrgid(info.st_gid).gr_name
            return f"{directory} ({stat.filemode(info.st_mode)} {owner}:{group})"
    return ""


def python_for(uid: int, gid: int) -> tuple[str, dict[str, str], str]:
    """An interpreter the user can run with framebus importable: (path, env, note).

    This checkout's own (the venv's) if the user can reach it; otherwise a system Python of
    the same version given the venv's site-packages and the checkout on PYTHONPATH (skips if
    there is none), with a note saying why."""
    candidates: list[tuple[str, dict[str, str], str]] = []
    blocked = closed_to_others(sys.executable)
    if not blocked:
        candidates.append((sys.executable, {}, ""))
    system = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    paths = sysconfig.get_paths()
    root = str(Path(__file__).resolve().parent.parent)
    candidates.append((system, {"PYTHONPATH": os.pathsep.join(
        dict.fromkeys([paths["purelib"], paths["platlib"], root]))},
        f"{sys.executable} is behind {blocked}, so the daemon ran as {system} with the venv's "
        "site-packages on PYTHONPATH"))
    failures = []
    for python, env, note in candidates:
        probe = subprocess.run(
            [python, "-c", "import sys; assert sys.version_info[:2] == "
                           f"{tuple(sys.version_info[:2])}; import av, framebus.daemon"],
            user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=60,
            cwd="/", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env})
        if probe.returncode == 0:
            return python, env, note
        failures.append(f"{python}: {probe.stderr.strip()[-300:]}")
    pytest.skip(f"no Python that uid {uid} can run imports framebus ({blocked or 'venv'}; "
                + "; ".join(failures) + ")")


@pytest.mark.soak
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to start the daemon as another user")
def test_daemon_runs_as_an_unprivileged_user(rtsp_server_factory: RtspServerFactory) -> None:
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")
    uid, gid = user.pw_uid, user.pw_gid
    python, env, note = python_for(uid, gid)
    tests_blocked = closed_to_others(str(Path(__file__).resolve()))
    assert not tests_blocked, f"{user.pw_name} cannot read the checkout: {tests_blocked}"
    server = rtsp_server_factory([Mount("cam", width=W, height=H)])
    # not under pytest's tmp_path: /tmp/pytest-of-root is 0700, nobody cannot get through
    root = Path(tempfile.mkdtemp(prefix="framebus-unprivileged-"))
    daemon: DaemonProcess | None = None
    reader: CheckedReader | None = None
    try:
        os.chmod(root, 0o755)
        fifos = root / "fifos"
        fifos.mkdir(mode=0o750)
        os.chown(fifos, uid, gid)  # the only place the daemon writes
        config = write_daemon_config(root / "framebus.yaml", fifos,
                                     {"cam": camera_config(server.url("cam"))},
                                     {"sub": {"camera": "cam", "format": "gray"}})
        config.chmod(0o644)
        daemon = DaemonProcess(config, env, user=uid, group=gid, python=python)
        api = daemon.api()
        wait_for(lambda: api.json("GET", "/v1/cameras/cam")[1]["state"] == STREAMING, 30,
                 "streaming as an unprivileged user")
        reader = CheckedReader(fifos / "sub.fifo", user=uid, group=gid, python=python, env=env)
        reader.wait_frames(10)
        status = {line.split(":")[0]: line.split(":", 1)[1].split()
                  for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                  if line.startswith(("Uid", "Gid", "Groups", "CapEff"))}
        fifo = (fifos / "sub.fifo").stat()
        written = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                         if p.stat().st_uid == uid)
        reader.stop()
        assert reader.torn == 0
        assert daemon.stop() == 0
    finally:
        if reader is not None and reader.proc.poll() is None:
            reader.kill()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nMEASURED unprivileged daemon: {status}; FIFO {fifo.st_uid}:{fifo.st_gid} "
          f"{stat.filemode(fifo.st_mode)}; files owned by {user.pw_name}: {written}"
          + (f"; NOTE {note}" if note else ""))
    assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4
    assert status.get("Groups", []) == []
    assert int(status["CapEff"][0], 16) == 0
    assert (fifo.st_uid, fifo.st_gid) == (uid, gid)
    # it wrote nothing but its FIFO, the lock that keeps a second daemon off fifo_dir and the
    # API token it makes when none is configured
    assert written == ["fifos", "fifos/.framebus.lock", "fifos/api.token", "fifos/sub.fifo"]
    assert not any("Traceback" in line for line in daemon.lines)
