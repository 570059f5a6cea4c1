"""framebus-bridge and framebus-router under a real systemd, for scripts/systemd-check.

README.md's "Across hosts" section, run inside the booted machine after the daemon's checks:
its "Mutual TLS" openssl block (one certificate for this machine, which is camera host,
router and consumer at once: its subjectAltName names what it is reached at here, loopback
and the router's name), then its "Under systemd" block (pip's `remote` extra, the sysusers,
the bridge's and the router's units). The daemon's config gets `remote:` exports on two
cameras and the shipped peer.json5 (`framebus-router` resolves to 127.0.0.1). Then, under
systemd: both units active with READY and the bridge's Status= as the README shows it; the
bridge as user framebus-bridge in group framebus, sandboxed, without the camera passwords;
a remote consumer (`framebus watch zenoh:...` over mTLS through the router) gets frames;
reload applies a changed remote: list; a daemon restart leaves the bridge running and frames
resume; a daemon killed with SIGKILL takes the bridge down and its restart brings it back; a
daemon stop stops the bridge, a start starts it again (enabled); `systemd-analyze verify` of
framebus-bridge.service, framebus-bridge@.service and framebus-router.service; the journal
holds no line of the TLS key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import systemd_readme as readme
from systemd_container import CheckFailed, wait_until

SECTION = "Across hosts"
WATCH_LINE = re.compile(r"^(\S+)\s+([\d.]+) fps", re.M)
# "the machine's names": what this machine is dialled at (gossip hands out its loopback
# addresses; the router is reached by the name in peer.json5)
SANS = "DNS:$NAME, DNS:framebus-router, IP:127.0.0.1, IP:::1"
EXPORTS: dict[str, object] = {
    "cameras.front.remote": [{"name": "preview", "format": "jpeg", "width": 160,
                              "quality": 80, "max_fps": 5}],
    "cameras.yard.remote": [{"format": "gray"}],
    # peer.json5's tls/[::]:0 gossips no loopback address, and the router carries no frames:
    # pinned, as the README says, to the address the certificate names
    "remote": {"host": "cam1", "zenoh_config": "/etc/framebus/zenoh/peer.json5",
               "listen": ["tls/127.0.0.1:7448"]},
}
TARGET = "zenoh:cam1/front/preview"
STATUS = re.compile(r"^(\d+) exports, (\d+) with remote subscribers$")


def groups(block: list[readme.Line]) -> dict[str, list[readme.Line]]:
    """A block's lines by the comment that heads them ("camera host, ...": its lines)."""
    found: dict[str, list[readme.Line]] = {}
    head = ""
    for line in block:
        if line.comments:
            head = " ".join(line.comments)
        found.setdefault(head, []).append(line)
    return found


def group(block: list[readme.Line], starts: str) -> list[readme.Line]:
    for head, lines in groups(block).items():
        if head.startswith(starts):
            return lines
    raise CheckFailed(f"README.md, {SECTION}, Under systemd: no lines under '# {starts}...'")


class BridgeCheck:
    def __init__(self, check: Any, root: Path, checkout: str) -> None:
        self.c = check  # systemd-check's Check: sh, show, journal, patch, active, run_line
        self.m = check.m
        self.readme = root / "README.md"
        self.checkout = checkout
        self.seen = 0
        self.promised = ""

    def sh(self, command: str, **kw: object) -> str:
        return self.m.sh(command, **kw).stdout

    # -- README blocks ----------------------------------------------------------------------

    def tls(self) -> None:
        """The "Mutual TLS" openssl block, as one script (it sets NAME and writes a here
        document), with this machine's subjectAltName; router.json5 too ("on the router")."""
        block = next((b for b in readme.raw_blocks(self.readme, SECTION, "Mutual TLS")
                      if "openssl genpkey" in b), None)
        if block is None:
            raise CheckFailed(f"README.md, {SECTION}, Mutual TLS: no openssl block")
        script, n = re.subn(r"^subjectAltName = .*$", f"subjectAltName = {SANS}", block,
                            flags=re.M)
        script = script.replace(" config/zenoh/", f" {self.checkout}/config/zenoh/")
        if n != 1 or "/etc/framebus/tls/host.key" not in script:
            raise CheckFailed("README.md's openssl block: expected one subjectAltName line "
                              "and the install of /etc/framebus/tls/host.key")
        result = self.m.sh(f"mkdir -p /root/fbcheck-tls && cd /root/fbcheck-tls && "
                           f"bash -euo pipefail -c {sh_quote(script)}", check=False)
        if result.returncode != 0:
            raise CheckFailed(f"README.md's openssl block exited {result.returncode}:\n"
                              f"{(result.stdout + result.stderr)[-3000:]}")
        self.sh(f"install -m 0644 {self.checkout}/config/zenoh/router.json5 /etc/framebus/zenoh/"
                " && echo '127.0.0.1 framebus-router' >> /etc/hosts")
        modes = self.sh("stat -c '%n %a %U' /etc/framebus/tls/*").split("\n")
        if "/etc/framebus/tls/host.key 600 root" not in modes:
            raise CheckFailed(f"the TLS files are {modes}")

    def install(self) -> str:
        """The "Under systemd" block: every machine's, the camera host's and the router's
        lines (this machine is all three), after the exports are in the daemon's config."""
        block = next(b for b in readme.blocks(self.readme, SECTION, "Under systemd")
                     if any("framebus-bridge" in ln.command for ln in b))
        for line in group(block, "every machine"):
            self.c.run_line(line)
        self.c.patch("/etc/framebus/framebus.yaml", EXPORTS)
        for line in group(block, "router machine"):
            self.c.run_line(line)
        for line in group(block, "camera host"):
            self.c.run_line(line)
            if "enable --now framebus-bridge" in line.command:
                self.c.active("framebus-bridge")
            promised = re.search(r'Status: "([^"]+)"', line.command)
            if promised:
                self.promised = promised.group(1)  # with a remote subscriber (below)
        router = self.c.active("framebus-router", timeout=20)
        bridge = self.c.show("framebus-bridge", "StatusText")
        status = STATUS.match(bridge["StatusText"])
        if status is None or status.group(1) != "2":
            raise CheckFailed(f"the bridge's Status= is {bridge['StatusText']!r}, expected "
                              "'2 exports, 0 with remote subscribers'")
        return f"bridge {bridge['StatusText']!r}, router {router['StatusText']!r}"

    # -- checks -----------------------------------------------------------------------------

    def verify(self) -> None:
        self.sh(f"cp {self.checkout}/systemd/framebus-bridge@.service /etc/systemd/system/ "
                "&& systemctl daemon-reload")
        units = ("/etc/systemd/system/framebus-bridge.service",
                 "/etc/systemd/system/framebus-router.service", "framebus-bridge@garage.service")
        result = self.m.sh(f"systemd-analyze verify {' '.join(units)} 2>&1", check=False)
        if result.returncode != 0 or re.search(r"framebus-(bridge|router)", result.stdout):
            raise CheckFailed(f"systemd-analyze verify exited {result.returncode}:\n"
                              f"{result.stdout}")

    def sandbox(self) -> str:
        pid = self.c.show("framebus-bridge", "MainPID")["MainPID"]
        uid = self.sh("id -u framebus-bridge").strip()
        gid = self.sh("getent group framebus | cut -d: -f3").strip()
        fields = dict(re.findall(r"^(\w+):\s+(.*)$", self.sh(f"cat /proc/{pid}/status"),
                                 re.M))
        want = {"Uid": "\t".join([uid] * 4), "Gid": "\t".join([gid] * 4),
                "CapEff": "0" * 16, "NoNewPrivs": "1", "Seccomp": "2"}
        wrong = {k: fields.get(k) for k, v in want.items() if fields.get(k) != v}
        if wrong or uid == self.sh("id -u framebus").strip():
            raise CheckFailed(f"the bridge's /proc/{pid}/status has {wrong}, expected {want}")
        hidden = self.sh(f"nsenter -t {pid} -m ls -A /etc/framebus/credentials")
        if hidden.strip():
            raise CheckFailed(f"the bridge sees the camera passwords: {hidden.split()}")
        return f"uid {uid} (framebus-bridge), gid {gid} (framebus)"

    def lines(self) -> list[tuple[str, float]]:
        out = self.sh("journalctl -u fbcheck-remote -o cat --no-pager")
        return [(camera, float(fps)) for camera, fps in WATCH_LINE.findall(out)]

    def frames_after(self, after: int, what: str, timeout: float = 30) -> str:
        """Wait for a line of the remote consumer with frames, at least two lines past line
        ``after`` (watch prints one a second: older frames are out of its window by then)."""
        def probe() -> int | None:
            lines = self.lines()
            return len(lines) if any(fps > 0 for _, fps in lines[after + 2:]) else None
        try:
            self.seen = wait_until(what, probe, timeout)
        except CheckFailed as exc:
            logs = "\n".join(f"-- {unit}:\n{self.c.journal(unit, 15)}" for unit in (
                "fbcheck-remote", "framebus-bridge", "framebus-router"))
            raise CheckFailed(f"{exc}\n{logs}") from None
        return ""

    def consumer(self) -> str:
        self.sh("systemd-run -q --unit=fbcheck-remote -p Environment=PYTHONUNBUFFERED=1 "
                f"/usr/local/bin/framebus watch {TARGET} "
                "--zenoh-config /etc/framebus/zenoh/peer.json5")
        self.frames_after(-2, f"frames of {TARGET} over mTLS")
        if not STATUS.match(self.promised):
            raise CheckFailed(f"README.md, {SECTION}: `systemctl status framebus-bridge` "
                              f"promises no Status: like '2 exports, 1 with remote subscribers'")
        wait_until(f"the bridge's Status= {self.promised!r}", lambda: self.c.show(
            "framebus-bridge", "StatusText")["StatusText"] == self.promised, 15)
        rate = [fps for _, fps in self.lines()[-3:]]
        return f"{TARGET} {rate} fps; Status: {self.promised!r}"

    def reload(self) -> None:
        pid = self.c.show("framebus-bridge", "MainPID")["MainPID"]
        self.c.patch("/etc/framebus/framebus.yaml", {
            "cameras.front.remote": [*EXPORTS["cameras.front.remote"],
                                     {"format": "gray", "width": 80}]})
        self.sh("systemctl reload framebus-bridge")
        wait_until("the bridge's reload", lambda: re.search(
            r"bridge reloaded \S+: 3 exports", self.c.journal("framebus-bridge", 50)), 15)
        wait_until("Status= with 3 exports", lambda: self.c.show(
            "framebus-bridge", "StatusText")["StatusText"].startswith("3 exports"), 15)
        after = self.c.show("framebus-bridge", "MainPID")["MainPID"]
        if after != pid:
            raise CheckFailed(f"the bridge's reload restarted it ({pid} -> {after})")
        self.frames_after(self.seen, "frames after the bridge's reload")

    def daemon_restart(self) -> None:
        bridge = self.c.show("framebus-bridge", "MainPID")["MainPID"]
        daemon = self.c.show("framebus", "MainPID")["MainPID"]
        self.sh("systemctl restart framebus")
        self.c.active("framebus", other_than=daemon)
        after = self.c.active("framebus-bridge", timeout=5)
        if after["MainPID"] != bridge:
            raise CheckFailed(f"`systemctl restart framebus` restarted the bridge "
                              f"({bridge} -> {after['MainPID']})")
        self.frames_after(len(self.lines()), "frames after the daemon's restart")

    def daemon_killed(self) -> None:
        bridge = self.c.show("framebus-bridge", "MainPID")["MainPID"]
        daemon = self.c.show("framebus", "MainPID")["MainPID"]
        self.sh(f"kill -9 {daemon}")
        self.c.active("framebus", timeout=40, other_than=daemon)
        self.c.active("framebus-bridge", timeout=30, other_than=bridge)
        self.frames_after(len(self.lines()), "frames after the daemon's kill -9")

    def daemon_stopped(self) -> None:
        self.sh("systemctl stop framebus")
        state = self.sh("systemctl is-active framebus-bridge", check=False).strip()
        if state != "inactive":
            raise CheckFailed(f"after `systemctl stop framebus` the bridge is {state}")
        self.sh("systemctl stop fbcheck-remote")
        self.sh("systemctl start framebus")
        self.c.active("framebus-bridge", timeout=30)

    def key_kept(self) -> None:
        found = self.m.sh("journalctl -o export --no-pager | grep -c -F -f "
                          "<(grep -v -- ----- /etc/framebus/tls/host.key)",
                          check=False).stdout.strip()
        if found != "0":
            raise CheckFailed(f"the journal holds a line of host.key {found} times")


def sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def checks(check: Any, root: Path, checkout: str,
           stage: Callable[[Any, str, Callable[[], object]], object]) -> None:
    """The bridge's checks, as stages of systemd-check; the daemon is running, and is again
    (with the bridge, enabled) afterwards."""
    b = BridgeCheck(check, root, checkout)
    stage(check, "README Mutual TLS: the openssl block, this machine's names", b.tls)
    stage(check, "README Under systemd: bridge and router enabled, READY, Status=", b.install)
    stage(check, "systemd-analyze verify bridge, bridge@, router", b.verify)
    stage(check, "bridge: own user, group framebus, sandbox, no passwords", b.sandbox)
    stage(check, "remote consumer gets frames (mTLS, router)", b.consumer)
    stage(check, "reload framebus-bridge applies a changed remote: list", b.reload)
    stage(check, "restart framebus: bridge keeps running, frames resume", b.daemon_restart)
    stage(check, "kill -9 framebus: bridge restarted with it, frames resume", b.daemon_killed)
    stage(check, "stop framebus stops the bridge; start starts it", b.daemon_stopped)
    stage(check, "journal without the TLS key", b.key_kept)
