"""Plain zenoh sessions across real network namespaces (no framebus daemon yet).

Proves the ground the remote-consumer tests stand on (issue 20): that the namespaces of
:mod:`framebus.testsrc.netns` behave as hosts on a switch for zenoh (data crosses the veth,
``shape`` limits it both ways, ``link`` cuts and restores it), that the shipped configs
``config/zenoh/{router,peer}.json5`` give working mTLS, refuse a certificate from another CA
with a clear log line and deny unlisted certificate names, and that every namespace is
deleted afterwards. Each zenoh node is a ``tests/zenoh_proc.py`` process inside a host.
The ``shape`` and ``link`` checks run under ``make soak`` (test time): the remote tests use
both in ``make test``.

Every node disables zenoh's shared memory: two namespaces of one machine share /dev/shm,
and zenoh's SHM optimisation would otherwise carry payloads > 3 KiB around the network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for
from zenoh_proc import ZenohProc

from framebus.testsrc import netns
from framebus.testsrc.tlscerts import HostCert, Pki, make_pki

pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (the remote extra)")
_REASON = netns.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=f"no network namespaces: {_REASON}"),
    pytest.mark.timeout(120),
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config" / "zenoh"
PORT = 7447  # every host is its own namespace, so the same port never clashes
# Plain TCP nodes: no multicast scouting (each test names its endpoints), no shared memory.
PLAIN = ("--set", "scouting/multicast/enabled=false",
         "--set", "transport/shared_memory/enabled=false")
# What zenoh 1.10 logs (WARN, target zenoh_link_tls::unicast) when a TLS listener with mTLS
# refuses a client certificate that its CA did not issue. It goes on with a misleading
# "Hint: increase the system open file limit." (its generic accept-error text).
REFUSED_CERT = re.compile(
    r"WARN .*zenoh_link_tls::unicast: invalid peer certificate: UnknownIssuer"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # zenoh colours its log even into a pipe


class Net:
    """Two hosts and the zenoh nodes started in them (closed before the hosts go)."""

    def __init__(self, hosts: list[netns.Host]) -> None:
        self.a, self.b = hosts
        self.nodes: list[ZenohProc] = []

    def node(self, host: netns.Host, *args: str, **kwargs: Any) -> ZenohProc:
        node = ZenohProc(host.popen, *args, **kwargs)
        self.nodes.append(node)
        return node

    def listener(self, host: netns.Host, *extra: str) -> ZenohProc:
        """A peer listening on the host's own address (not 0.0.0.0, not loopback)."""
        return self.node(host, *PLAIN, "--set", f'listen/endpoints=["tcp/{host.address}:{PORT}"]',
                         *extra)

    def dialer(self, host: netns.Host, target: netns.Host, *extra: str) -> ZenohProc:
        """A peer that listens nowhere and dials ``target``'s listener."""
        return self.node(host, *PLAIN, "--set", "listen/endpoints=[]",
                         "--set", f'connect/endpoints=["tcp/{target.address}:{PORT}"]', *extra)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def net() -> Iterator[Net]:
    with netns.hosts(2) as hosts:
        n = Net(hosts)
        try:
            yield n
        finally:
            n.close()


def wait_delivery(pub: ZenohProc, sub: ZenohProc, key: str, timeout: float = 20.0) -> None:
    """Put a small probe until one arrives: the route (session, subscription) is complete."""
    def arrived() -> bool:
        pub.request("put", key=key, text="probe", cc="drop")
        return any(s["text"] == "probe" for s in sub.samples(key))

    wait_for(arrived, timeout, f"a put on {key} to arrive", poll=0.1)


def bulk(pub: ZenohProc, sub: ZenohProc, key: str, count: int, size: int) -> float:
    """Seconds from the first of ``count`` blocking puts of ``size`` bytes to the last arrival.

    Both ends stamp with CLOCK_MONOTONIC, which network namespaces share.
    """
    start_index = len(sub.events)
    start = time.monotonic()
    pub.request("put", key=key, size=size, count=count, timeout=60)
    pub.request("put", key=key, text="end")
    end = sub.wait(lambda e: e.get("text") == "end", 60, f"the end of the bulk on {key}",
                   start=start_index)
    got = [e for e in sub.events[start_index:] if e.get("key") == key and e["size"] == size]
    assert len(got) == count, f"{len(got)} of {count} bulk puts arrived"
    return float(end["t"]) - start


def test_put_crosses_the_veth_between_host_addresses(net: Net) -> None:
    b = net.listener(net.b)
    b.request("sub", key="t/**")
    a = net.dialer(net.a, net.b)
    wait_delivery(a, b, "t/probe")

    # The session's one link joins the two host addresses.
    (link,) = b.request("info")["links"]
    assert link["src"] == f"tcp/{net.b.address}:{PORT}"
    assert link["dst"].startswith(f"tcp/{net.a.address}:")

    # A 2 MB put leaves A's eth0 and enters B's, and not B's loopback.
    size = 2_000_000
    a_tx, b_rx, b_lo = net.a.link_bytes()[1], net.b.link_bytes()[0], net.b.link_bytes("lo")[0]
    a.request("put", key="t/big", size=size)
    b.wait(lambda e: e.get("key") == "t/big", 20, "the 2 MB sample")
    assert net.a.link_bytes()[1] - a_tx >= size
    assert net.b.link_bytes()[0] - b_rx >= size
    assert net.b.link_bytes("lo")[0] - b_lo < size // 10


@pytest.mark.soak  # test_remote_netns's 100 Mbit/s test shapes a link in make test
def test_shape_limits_both_directions_and_unshape_lifts_it(net: Net) -> None:
    b = net.listener(net.b)
    b.request("sub", key="up/**")
    a = net.dialer(net.a, net.b)
    a.request("sub", key="down/**")
    wait_delivery(a, b, "up/probe")
    wait_delivery(b, a, "down/probe")

    count, size, rate_mbit = 100, 125_000, 100.0  # 12.5 MB: 1.0 s at 100 Mbit/s
    at_rate = count * size * 8 / (rate_mbit * 1e6)
    free = bulk(a, b, "up/bulk", count, size)

    net.a.shape(rate_mbit)
    upload = bulk(a, b, "up/bulk", count, size)  # limited by the host-side tbf
    download = bulk(b, a, "down/bulk", count, size)  # limited by the switch-side tbf
    net.a.unshape()
    freed = bulk(a, b, "up/bulk", count, size)

    timings = f"free {free:.3f} s, up {upload:.3f} s, down {download:.3f} s, freed {freed:.3f} s"
    # A token bucket lets nothing through faster than its rate (its 32 KiB burst aside), so
    # 0.8x the time at rate is a hard floor; an unshaped veth is far faster than 100 Mbit/s.
    assert upload >= 0.8 * at_rate, timings
    assert download >= 0.8 * at_rate, timings
    assert upload >= 1.5 * free, timings
    assert freed < 0.8 * at_rate, timings


def test_shape_delay_adds_latency_each_way(net: Net) -> None:
    try:
        net.a.shape(1000, delay_ms=20)
    except netns.NetnsError as exc:
        if "qdisc kind is unknown" in str(exc):
            pytest.skip(f"this kernel has no sch_netem: {exc}")
        raise
    ping = net.a.run(["ping", "-n", "-q", "-c", "3", "-i", "0.2", net.b.address],
                     capture_output=True, text=True, check=True)
    rtt_min = float(re.search(r"= ([0-9.]+)/", ping.stdout).group(1))  # type: ignore[union-attr]
    assert rtt_min >= 0.9 * 40, ping.stdout  # 20 ms each way
    net.a.unshape()


@pytest.mark.soak  # test_remote_netns's link-down test cuts one in make test
def test_link_down_stops_delivery_and_link_up_restores_it(net: Net) -> None:
    # A 2 s lease so that both sides notice the dead link quickly; a fast connect retry.
    quick = ("--set", "transport/link/tx/lease=2000",
             "--set", "connect/retry={period_init_ms:200,period_max_ms:500}")
    b = net.listener(net.b, *quick)
    b.request("sub", key="t/**")
    a = net.dialer(net.a, net.b, *quick)
    a.request("ticker", key="t/tick", period=0.05)  # 20 puts/s, DROP
    wait_for(lambda: len(b.samples("t/tick")) >= 3, 20, "ticks to flow")

    down = time.monotonic()
    net.a.link(False)
    wait_for(lambda: not b.request("info")["peers"], 15, "B to drop the session")
    wait_for(lambda: not a.request("info")["peers"], 15, "A to drop the session")
    up = time.monotonic()
    net.a.link(True)
    b.wait(lambda e: e["ev"] == "sample" and e["t"] > up, 20, "ticks after the link came back")
    assert a.request("info")["peers"] == [b.zid]

    ticks = b.samples("t/tick")
    # 0.2 s covers a tick already in B's socket when the cable went.
    during = [s["text"] for s in ticks if down + 0.2 < s["t"] < up]
    assert during == []
    seq_before = max(json.loads(s["text"])["seq"] for s in ticks if s["t"] <= down + 0.2)
    seq_after = min(json.loads(s["text"])["seq"] for s in ticks if s["t"] > up)
    # The ~2 s of ticks put while the link was down were dropped, not delivered late.
    assert seq_after - seq_before > 5, (seq_before, seq_after)


# --- mTLS and ACL with the shipped configs ------------------------------------------------

ROUTER_CN, GOOD_CN, STRANGER_CN = "framebus-router", "framebus-gpu1", "framebus-stranger"
LISTED = [ROUTER_CN, GOOD_CN]


@pytest.fixture
def pki(net: Net, tmp_path: Path) -> Pki:
    # The rogue certificate carries a *listed* name: only its issuer is wrong.
    return make_pki(tmp_path / "tls", {ROUTER_CN: net.a.address, GOOD_CN: net.b.address,
                                       STRANGER_CN: net.b.address},
                    rogue_name=GOOD_CN, rogue_ip=net.b.address)


def shipped(name: str, cert: HostCert, ca: Path, listen: str, *extra: str) -> list[str]:
    """Args that load config/zenoh/<name>.json5 and rewrite its paths and endpoints (the
    certificates carry the names its ACL lists)."""
    args = ["--config", str(CONFIG_DIR / f"{name}.json5"),
            "--set", f'listen/endpoints=["{listen}"]',
            "--set", f'transport/link/tls/root_ca_certificate="{ca}"']
    for side in ("listen", "connect"):
        args += ["--set", f'transport/link/tls/{side}_certificate="{cert.cert}"',
                 "--set", f'transport/link/tls/{side}_private_key="{cert.key}"']
    return args + list(extra)


def router(net: Net, pki: Pki) -> ZenohProc:
    return net.node(net.a, *shipped("router", pki.hosts[ROUTER_CN], pki.ca.cert,
                                    f"tls/{net.a.address}:{PORT}"))


def peer(net: Net, cert: HostCert, ca: Path) -> ZenohProc:
    return net.node(net.b, *shipped("peer", cert, ca, f"tls/{net.b.address}:0",
                                    "--set", f'connect/endpoints=["tls/{net.a.address}:{PORT}"]'))


def test_shipped_configs_accept_the_site_ca_and_refuse_another(net: Net, pki: Pki) -> None:
    r = router(net, pki)
    good = peer(net, pki.hosts[GOOD_CN], pki.ca.cert)
    good.request("sub", key="framebus/**")
    wait_delivery(r, good, "framebus/router/probe")
    # Both ends know each other by certificate name.
    assert [lk["auth"] for lk in good.request("info")["links"]] == [ROUTER_CN]
    assert [lk["auth"] for lk in r.request("info")["links"]] == [GOOD_CN]

    # Trusts the site CA, but its own certificate is the rogue CA's.
    rogue = peer(net, pki.rogue, pki.ca.cert)
    rogue.request("sub", key="framebus/**")
    wait_for(lambda: REFUSED_CERT.search(_ANSI.sub("", r.log_text())), 20,
             "the router to log the refused certificate")
    r.request("ticker", key="framebus/cam1/frames", period=0.05)
    wait_for(lambda: len(good.samples("framebus/cam1/frames")) >= 10, 20, "ticks at the good peer")
    assert rogue.samples() == []
    info = rogue.request("info")
    assert (info["routers"], info["peers"], info["links"]) == ([], [], [])


def test_acl_denies_a_site_certificate_with_an_unlisted_name(net: Net, pki: Pki) -> None:
    r = router(net, pki)
    r.request("sub", key="framebus/**")
    good = peer(net, pki.hosts[GOOD_CN], pki.ca.cert)
    good.request("sub", key="framebus/**")
    wait_delivery(r, good, "framebus/router/probe")
    wait_delivery(good, r, "framebus/gpu1/probe")

    stranger = peer(net, pki.hosts[STRANGER_CN], pki.ca.cert)
    stranger.request("sub", key="framebus/**")
    # TLS accepts it (right CA), and gossip links it to the good peer directly too, so the
    # peers' own ACL is tested along with the router's.
    wait_for(lambda: set(stranger.request("info")["peers"]) == {good.zid}, 20,
             "the stranger to link to the good peer")
    assert stranger.request("info")["routers"] == [r.zid]
    r.request("ticker", key="framebus/cam1/frames", period=0.05)
    good.request("ticker", key="framebus/gpu1/frames", period=0.05)
    wait_for(lambda: len(good.samples("framebus/cam1/frames")) >= 10
             and len(r.samples("framebus/gpu1/frames")) >= 10, 20, "ticks between listed nodes")
    assert stranger.samples() == []


def test_acl_lets_a_host_publish_only_under_its_own_name(net: Net, tmp_path: Path) -> None:
    """A listed machine (framebus-gpu1) with a valid certificate cannot put frames on another
    host's key, answer its queries or declare its liveliness; a watcher (framebus-cam2, and
    the router) gets cam1's frames and gpu1's own. The attacker links to the watcher directly
    (gossip), so the peers' ACL is tested along with the router's."""
    names = ["framebus-cam1", "framebus-gpu1", "framebus-cam2"]
    pki = make_pki(tmp_path / "tls", {ROUTER_CN: net.a.address,
                                      **{name: net.b.address for name in names}})
    r = router(net, pki)
    r.request("sub", key="framebus/**")
    cam1, attacker, watcher = (peer(net, pki.hosts[name], pki.ca.cert) for name in names)
    watcher.request("sub", key="framebus/**")
    wait_for(lambda: attacker.zid in watcher.request("info")["peers"], 20,
             "the attacker to link to the watcher directly")
    cam1.request("ticker", key="framebus/cam1/gen/nv12", period=0.05)
    cam1.request("queryable", key="framebus/cam1/gen/nv12", text="cam1-answer")
    cam1.request("token", key="framebus/cam1/gen/nv12")
    wait_delivery(attacker, watcher, "framebus/gpu1/own")  # its own name: allowed
    attacker.request("queryable", key="framebus/cam1/gen/nv12", text="forged-answer")
    attacker.request("token", key="framebus/cam1/forged")
    for node in (r, watcher):  # both see cam1's frames and cam1 alone answering its key
        wait_for(lambda node=node: len(node.samples("framebus/cam1/gen/nv12")) >= 5, 20,
                 "cam1's frames")
        wait_for(lambda node=node: node.request("get", key="framebus/cam1/**")["replies"]
                 == ["cam1-answer"], 20, "cam1's answer alone")
        wait_for(lambda node=node: node.request("alive", key="framebus/cam1/**")["keys"]
                 == ["framebus/cam1/gen/nv12"], 20, "cam1's token alone")
    attacker.request("put", key="framebus/cam1/gen/nv12", text="forged", count=20, cc="drop")
    attacker.request("put", key="framebus/gpu1/own", text="after", cc="drop")
    for node in (r, watcher):  # the put after the forged ones came: they would have too
        wait_for(lambda node=node: any(s["text"] == "after" for s in node.samples()), 20,
                 "the attacker's own put after the forged ones")
        assert not [s for s in node.samples() if s["text"] in ("forged", "forged-answer")]
    assert r.request("get", key="framebus/cam1/**")["replies"] == ["cam1-answer"]


# --- namespace lifecycle -------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30, check=True)
    return int(proc.stdout)


def test_hosts_deletes_every_namespace_even_when_the_body_raises() -> None:
    stale = f"{netns.PREFIX}{_dead_pid()}-1-h0"  # as a killed earlier run would leave it
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=30)
    with pytest.raises(RuntimeError, match="boom"), netns.hosts(2) as hosts:
        assert stale not in netns.namespaces()
        names = [h.name for h in hosts] + [hosts[0].switch]
        assert set(names) <= set(netns.namespaces())
        sleeper = hosts[1].popen(["sleep", "300"])
        raise RuntimeError("boom")
    assert set(names).isdisjoint(netns.namespaces())
    assert sleeper.poll() is not None

    with netns.hosts(1) as hosts:
        names = [hosts[0].name, hosts[0].switch]
    assert set(names).isdisjoint(netns.namespaces())
