"""A throwaway Debian 12 machine booted with systemd-nspawn, for scripts/systemd-check.

The root file system is made once by mmdebstrap and cached (keyed by the package list); each
boot puts a tmpfs overlay on it (--volatile=overlay), so nothing a run writes survives it. The
machine has loopback only (--private-network), its own mount, PID, IPC and UTS namespaces, and
is always powered off (then killed, if it does not go) by ``Machine.close``.

Commands run inside through nsenter(1): no machined, D-Bus or systemd is needed on the host,
which may itself be a container whose /sys/fs/cgroup is a cgroup v1 tmpfs (systemd 252 boots
on that). Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

SUITE = "bookworm"  # Debian 12: what README.md's install section is written for
# Besides the README's own apt-get line, what a standard Debian 12 host has: an init,
# usermod/useradd, /bin/kill (procps: the units' ExecReload=), python3 for the venv.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "passwd", "procps", "python3",
                 "ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T = TypeVar("T")


class CheckFailed(Exception):
    """A check did not hold; the message says what was expected and what happened."""


def wait_until(what: str, probe: Callable[[], T | None], timeout: float,
               interval: float = 0.3) -> T:
    """``probe()``'s first true value, polled until ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= end:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def rootfs(cache: Path, packages: Sequence[str], say: Callable[[str], None]) -> Path:
    """A minimal Debian 12 tree with ``packages`` (plus BASE_PACKAGES), made once and cached
    under ``cache``; trees for other package lists are removed."""
    names = sorted({*BASE_PACKAGES, *packages})
    key = hashlib.sha256(f"{SUITE} {' '.join(names)}".encode()).hexdigest()[:12]
    target = cache / f"rootfs-{key}"
    if (target / "usr/lib/systemd/systemd").exists():
        say(f"rootfs: cached {target}")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("rootfs-*"):
        shutil.rmtree(old, ignore_errors=True)
    partial = cache / f"rootfs-{key}.partial"
    say(f"rootfs: mmdebstrap {SUITE} with {' '.join(names)} (about a minute)")
    started = time.monotonic()
    result = subprocess.run(["mmdebstrap", "--variant=apt", "--include=" + ",".join(names),
                             SUITE, str(partial)], capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckFailed(f"mmdebstrap failed ({result.returncode}): {result.stderr[-2000:]}")
    partial.rename(target)
    say(f"rootfs: made in {time.monotonic() - started:.0f} s")
    return target


# nspawn keeps per-machine state in /run/systemd/nspawn and refuses to clean it up unless it
# is a tmpfs, which /run is not on a host that was not booted by systemd: give it one, in a
# mount namespace of its own so the host sees nothing.
_BOOT = ("mkdir -p /run/systemd/nspawn && "
         "mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn && exec systemd-nspawn \"$@\"")


class Machine:
    """One booted container. Use as a context manager: it always ends powered off."""

    def __init__(self, root: Path, name: str, binds: Sequence[tuple[Path, str]],
                 console: Path) -> None:
        self.root, self.name, self.binds, self.console_path = root, name, binds, console
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it
        self._console: IO[bytes] | None = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def boot(self, timeout: float = 90) -> str:
        """Start it and wait until systemd says the boot is over; returns its state."""
        self._console = self.console_path.open("wb")
        args = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BOOT, "sh",
                f"--directory={self.root}", "--boot", "--volatile=overlay",
                "--private-network", "--register=no", "--keep-unit",
                f"--machine={self.name}", "--console=pipe",
                *(f"--bind={host}:{inside}" for host, inside in self.binds)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._console,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = wait_until("the container's init", self._find_leader, 30)
        end = time.monotonic() + timeout

        def booted() -> str | None:
            # an empty answer: init has not made its private bus socket yet, ask again
            state = self.sh("systemctl is-system-running --wait", check=False,
                            timeout=max(1.0, end - time.monotonic()))
            if not state.stdout.strip() and time.monotonic() < end:
                return None
            if state.stdout.strip() not in ("running", "degraded"):
                raise CheckFailed(f"boot ended {state.stdout.strip()!r} "
                                  f"({state.stderr.strip()}): {self.console_tail()}")
            return state.stdout.strip()
        return wait_until("the end of the boot", booted, timeout)

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise CheckFailed(f"systemd-nspawn exited {self.proc.returncode}: "
                              f"{self.console_tail()}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return None

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def sh(self, command: str, *, timeout: float = 60, check: bool = True,
           user: str | None = None, cwd: str = "/",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``bash -c command`` inside (as root, or ``user`` with its groups), a clean
        environment; CheckFailed on a non-zero exit when ``check``."""
        if not self.leader:
            raise CheckFailed("the machine is not running")
        environ = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        inner = ["env", "-i", *(f"{k}={v}" for k, v in environ.items()),
                 "bash", "-o", "pipefail", "-c", f"cd {cwd} && {command}"]
        if user is not None:
            inner = ["runuser", "-u", user, "--", *inner]
        args = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", *inner]
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"timed out after {timeout:.0f} s: {command}") from None
        if check and result.returncode != 0:
            raise CheckFailed(f"exit {result.returncode}: {command}\n"
                              f"{(result.stdout + result.stderr)[-3000:]}")
        return result

    def close(self, timeout: float = 30) -> None:
        """Power off; past ``timeout``, kill nspawn and the container's init (which takes
        every process of its PID namespace with it)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if self.leader:
                with contextlib.suppress(OSError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: poweroff
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in (self.leader, proc.pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(10)
        self.leader = 0
        if self._console is not None:
            self._console.close()
            self._console = None
