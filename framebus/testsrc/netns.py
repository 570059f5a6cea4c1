"""Real network namespaces joined like hosts on one switch, for tests that cross hosts.

:func:`hosts` makes ``count`` "hosts" and one "switch", all Linux network namespaces::

    fbt-<pid>-<k>-sw    bridge br0 with ports p0 .. p<n-1> (switch-side veth ends)
    fbt-<pid>-<k>-h0    eth0 (peer of p0), 10.231.S.2/24, lo up
    fbt-<pid>-<k>-h1    eth0 (peer of p1), 10.231.S.3/24, lo up

Every address and route exists only inside these namespaces: the root namespace gains
nothing, not even a transient veth end (each pair is created inside the switch namespace with
its peer placed straight into the host namespace), so a crashed run leaves nothing behind
that ``ip netns del`` does not remove. ``S`` is derived from the pid and a per-process counter
so that concurrent runs pick different subnets (they are on separate bridges anyway; distinct
subnets just keep their logs and packet captures apart).

Shaping limits both directions without an ifb device: the host-side veth's egress is the
host's upload and the switch-side veth's egress is its download, so a ``tbf`` on each end is
enough. ``delay_ms`` adds a ``netem`` child on both ends (one-way delay per direction) and
needs the kernel's ``sch_netem``.

Root is required (``ip netns add`` needs CAP_SYS_ADMIN); :func:`unavailable_reason` says
why namespaces cannot be made here, for ``pytest.skip``. Every subprocess call has a timeout
and every wait a deadline. Debian packages: ``iproute2`` and ``iputils-ping``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

__all__ = [
    "PREFIX", "Host", "NetnsError", "hosts", "namespaces", "remove_stale", "unavailable_reason",
]

PREFIX: Final = "fbt-"
_NAME_RE: Final = re.compile(r"^fbt-(\d+)-(\d+)-")
_CMD_TIMEOUT: Final = 15.0
_DEV: Final = "eth0"  # the host-side veth; each host is its own namespace, so names never clash
_BRIDGE: Final = "br0"
# Counter 0 names the probe namespace of unavailable_reason(), so stale probes match _NAME_RE.
_COUNTER: Final = itertools.count(1)


class NetnsError(RuntimeError):
    """A namespace, link or qdisc command failed (the message carries the command's stderr)."""


def _cmd(*argv: str, timeout: float = _CMD_TIMEOUT, check: bool = True) -> str:
    """Run one command with a timeout; return its stdout, or raise NetnsError when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {err}")
    return done.stdout.decode(errors="replace")


@functools.cache
def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can.

    Cached: a real probe (a namespace with a bridge and a veth pair) costs ~50 ms.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_SYS_ADMIN); running as uid {os.geteuid()}"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (Debian package {package})"
    probe = f"{PREFIX}{os.getpid()}-0-probe"
    try:
        _cmd("ip", "netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _cmd("ip", "-n", probe, "link", "add", _BRIDGE, "type", "bridge")
        _cmd("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", _DEV)
        _cmd("ip", "-n", probe, "link", "set", "lo", "up")
    except NetnsError as exc:
        return f"cannot make a bridge or veth pair in a namespace: {exc}"
    finally:
        _cmd("ip", "netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in ``ns``: a live process would keep the namespace (and its
    veths and addresses) alive anonymously after ``ip netns del`` removes its name."""
    out = _cmd("ip", "netns", "pids", ns, check=False)
    for word in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def _delete(ns: str) -> None:
    _kill_inside(ns)
    _cmd("ip", "netns", "del", ns)


def namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of the existing network namespaces that start with ``prefix``."""
    # Lines look like "fbt-12-1-h0 (id: 3)" or just "fbt-12-1-h0".
    out = _cmd("ip", "netns", "list")
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


def remove_stale() -> list[str]:
    """Delete namespaces with our prefix whose creating process is gone (a killed earlier run).

    Namespaces of live processes (parallel runs) are left alone. Returns the names deleted.
    """
    removed = []
    for ns in namespaces():
        m = _NAME_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(NetnsError):
                _delete(ns)
                removed.append(ns)
    return removed


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond()`` until true, with a short back-off, or raise NetnsError at the deadline."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not cond():
        if time.monotonic() > deadline:
            raise NetnsError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


@dataclass
class Host:
    """One host: a network namespace whose ``eth0`` is plugged into the switch's bridge."""

    name: str  #: the namespace's name
    address: str  #: its IPv4 address on the shared link
    switch: str  #: the switch namespace's name
    port: str  #: the switch-side veth of this host's link
    device: str = _DEV  #: the host-side veth
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` prefixed to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside the host; :func:`hosts` kills it at exit if it still runs."""
        proc = cast("subprocess.Popen[bytes]", subprocess.Popen(self.argv(*cmd), **kwargs))
        self._procs.append(proc)
        return proc

    def run(
        self, cmd: Sequence[str], *, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``cmd`` inside the host to completion, killed after ``timeout`` seconds."""
        done = subprocess.run(self.argv(*cmd), timeout=timeout, **kwargs)
        return cast("subprocess.CompletedProcess[bytes]", done)

    def ping(self, address: str, *, timeout: float = 1.0) -> bool:
        """Whether one ICMP echo from this host to ``address`` is answered within ``timeout``."""
        argv = self.argv("ping", "-n", "-q", "-c", "1", "-W", str(max(1, round(timeout))), address)
        try:
            return subprocess.run(argv, capture_output=True, timeout=timeout + 5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_reachable(self, address: str, *, timeout: float = 15.0) -> None:
        """Wait until ``address`` answers pings from this host (NetnsError at the deadline)."""
        _wait(lambda: self.ping(address), timeout, f"{address} to answer pings from {self.name}")

    def shape(self, rate_mbit: float, *, delay_ms: float = 0.0) -> None:
        """Limit this host's link to ``rate_mbit`` each way, optionally delaying each direction.

        Replaces any earlier shaping. A ``tbf`` on both veth ends: the host end's egress is
        upload, the switch end's egress is download (no ifb needed).
        """
        if rate_mbit <= 0 or delay_ms < 0:
            raise ValueError(f"need rate_mbit > 0 and delay_ms >= 0, got {rate_mbit}, {delay_ms}")
        self.unshape()
        rate_bytes = rate_mbit * 125_000
        # A burst of 2 ms at the rate (>= 32 KiB so a few full frames pass); tbf splits GSO
        # packets bigger than that. 50 ms of queue, then drops, as a real switch port would.
        burst = max(32 * 1024, int(rate_bytes * 0.002))
        try:
            for ns, dev in ((self.name, self.device), (self.switch, self.port)):
                _cmd("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf",
                     "rate", f"{round(rate_mbit * 1000)}kbit", "burst", str(burst),
                     "latency", "50ms")
                if delay_ms > 0:  # "qdisc kind is unknown" here: the kernel lacks sch_netem
                    _cmd("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1",
                         "handle", "10:", "netem", "delay", f"{delay_ms}ms")
        except NetnsError:
            self.unshape()  # never leave one direction shaped and the other not
            raise

    def unshape(self) -> None:
        """Remove shaping from both ends of the link (a no-op when there is none)."""
        for ns, dev in ((self.name, self.device), (self.switch, self.port)):
            # Fails harmlessly when only the default qdisc is there.
            _cmd("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)

    def link(self, up: bool) -> None:
        """Unplug (``False``) or replug (``True``) this host's cable at the switch.

        The switch-side veth goes down, so the host sees carrier loss as with a real cable.
        Replugging returns once the host's device has carrier and the bridge port forwards.
        """
        _cmd("ip", "-n", self.switch, "link", "set", self.port, "up" if up else "down")
        if up:
            _wait(self._link_ready, 10.0, f"{self.name}'s link to come up")

    def _link_ready(self) -> bool:
        dev = json.loads(_cmd("ip", "-n", self.name, "-j", "link", "show", self.device))[0]
        port = json.loads(_cmd("ip", "-n", self.switch, "-d", "-j", "link", "show", self.port))[0]
        state = port.get("linkinfo", {}).get("info_slave_data", {}).get("state")
        return "LOWER_UP" in dev.get("flags", []) and state == "forwarding"

    def link_bytes(self, device: str | None = None) -> tuple[int, int]:
        """(received, sent) byte counters of ``device`` in this host (default: its ``eth0``)."""
        dev = device or self.device
        info = json.loads(_cmd("ip", "-n", self.name, "-s", "-j", "link", "show", dev))
        stats = info[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def _stop_processes(self) -> None:
        # SIGTERM first so a process can flush its output; SIGKILL after a short grace.
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def _subnet(pid: int, counter: int) -> int:
    """Third octet of this run's 10.231.S.0/24 (1..254), spread by pid and counter."""
    return (pid * 7 + counter) % 254 + 1


def _build(prefix: str, count: int, created: list[str], made: list[Host]) -> None:
    octet = _subnet(os.getpid(), int(prefix.rsplit("-", 1)[1]))
    switch = f"{prefix}-sw"
    _cmd("ip", "netns", "add", switch)
    created.append(switch)
    _cmd("ip", "-n", switch, "link", "set", "lo", "up")
    # STP off and no forward delay: a port forwards as soon as it is up.
    _cmd("ip", "-n", switch, "link", "add", _BRIDGE, "type", "bridge",
         "stp_state", "0", "forward_delay", "0")
    _cmd("ip", "-n", switch, "link", "set", _BRIDGE, "up")
    for i in range(count):
        ns, port = f"{prefix}-h{i}", f"p{i}"
        _cmd("ip", "netns", "add", ns)
        created.append(ns)
        host = Host(name=ns, address=f"10.231.{octet}.{i + 2}", switch=switch, port=port)
        made.append(host)
        # Both ends are born inside namespaces: nothing ever appears in the root namespace.
        _cmd("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", _DEV,
             "netns", ns)
        _cmd("ip", "-n", switch, "link", "set", port, "master", _BRIDGE)
        _cmd("ip", "-n", switch, "link", "set", port, "up")
        _cmd("ip", "-n", ns, "link", "set", "lo", "up")
        _cmd("ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", _DEV)
        _cmd("ip", "-n", ns, "link", "set", _DEV, "up")
    for other in made[1:]:
        made[0].wait_reachable(other.address)


def _teardown(made: list[Host], created: list[str]) -> list[str]:
    """Stop the hosts' processes and delete every namespace; return what could not be deleted."""
    for host in made:
        host._stop_processes()
    failed = []
    for ns in reversed(created):  # hosts first, then the switch
        try:
            _delete(ns)
        except NetnsError as exc:
            failed.append(str(exc))
    return failed


@contextlib.contextmanager
def hosts(count: int = 2) -> Iterator[list[Host]]:
    """``count`` hosts on one switch, reachable from each other; all deleted at exit.

    Cleans up after killed earlier runs first. The namespaces are deleted (their processes
    killed) even when the body raises; a failed deletion raises NetnsError only when the body
    did not raise, so it never hides the body's own error.
    """
    if not 1 <= count <= 200:
        raise ValueError(f"count must be 1..200, got {count}")
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsError(reason)
    remove_stale()
    prefix = f"{PREFIX}{os.getpid()}-{next(_COUNTER)}"
    created: list[str] = []
    made: list[Host] = []
    try:
        _build(prefix, count, created, made)
        yield made
    except BaseException:
        _teardown(made, created)
        raise
    failed = _teardown(made, created)
    if failed:
        raise NetnsError("could not delete: " + "; ".join(failed))
