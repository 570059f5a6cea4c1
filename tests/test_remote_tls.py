"""framebus across hosts over mutual TLS, with the shipped zenoh configs unchanged (issue 20).

The router (``framebus router``), the camera host's bridge and the remote consumers load
config/zenoh/router.json5 and peer.json5 as shipped; their certificates come the way systemd's
``LoadCredential=`` hands them over, in ``$CREDENTIALS_DIRECTORY`` (ca.pem, host.pem,
host.key), with the common names the shipped ACLs list. A consumer whose certificate another
CA issued, under a listed name, gets nothing while the good consumer streams, and both ends
say why in their own logs. The router, the side that accepts the connection and checks the
client certificate, logs on stderr like every framebus line ``WARNING zenoh:
zenoh_link_tls::unicast: invalid peer certificate: UnknownIssuer (refused a connecting peer's
TLS certificate)``; the refused consumer (the library's reader, and ``framebus watch``) logs
``TLS handshake with tls/ROUTER:7447 failed: received fatal alert: UnknownCA (retrying)``.
zenoh writes its log to stdout, which this test's Proc reads for JSON and drops otherwise:
framebus.remote.session.init_zenoh_log forwards it into framebus's logging.
"""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pytest
from remotekit import FLAT, PORT, Proc, framebus, reader, wait_frames, wait_streaming, window
from remotekit import write_config as write_yaml
from waiting import wait_for

from framebus.testsrc import netns
from framebus.testsrc.tlscerts import HostCert, make_pki

pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (the remote extra)")
_REASON = netns.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=f"no network namespaces: {_REASON}"),
    pytest.mark.timeout(180),
]
ZENOH = Path(__file__).resolve().parent.parent / "config" / "zenoh"
# The router's line (zenoh's WARN, forwarded into framebus's log) when a client certificate
# is not from the site CA, and the dialing side's (zenoh's DEBUG, which framebus keeps).
REFUSED_CERT = re.compile(r"WARNING zenoh: zenoh_link_tls::unicast: invalid peer certificate: "
                          r"UnknownIssuer \(refused a connecting peer's TLS certificate\)$",
                          re.MULTILINE)
REFUSED_DIAL = re.compile(r"TLS handshake with tls/\S+ failed: received fatal alert: UnknownCA")


def credentials(directory: Path, ca: Path, cert: HostCert) -> dict[str, str]:
    """What LoadCredential=ca.pem/host.pem/host.key would give the service."""
    directory.mkdir(parents=True)
    shutil.copy(ca, directory / "ca.pem")
    shutil.copy(cert.cert, directory / "host.pem")
    shutil.copy(cert.key, directory / "host.key")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_mtls_with_the_shipped_configs_streams_and_refuses_a_wrong_certificate(
        tmp_path: Path) -> None:
    with netns.hosts(3) as (cam, gpu, rtr):
        pki = make_pki(tmp_path / "pki", {"framebus-router": rtr.address,
                                          "framebus-cam1": cam.address,
                                          "framebus-gpu1": gpu.address},
                       rogue_name="framebus-gpu1", rogue_ip=gpu.address)
        router = f"tls/{rtr.address}:{PORT}"
        run = tmp_path / "cam1"
        run.mkdir()
        config = write_yaml(tmp_path / "cam1.yaml", {
            "fifo_dir": str(run),
            "http": {"listen": "127.0.0.1:0", "unix_socket": str(run / "control.sock")},
            "cameras": {"gen": {"url": FLAT, "remote": [
                {"name": "nv12", "format": "nv12", "width": 640, "height": 360}]}},
            "remote": {"host": "cam1", "zenoh_config": str(ZENOH / "peer.json5"),
                       "connect": [router], "metrics_listen": None}})
        procs: list[Proc] = []

        def start(argv: list[str], host: netns.Host, name: str, cert: HostCert) -> Proc:
            env = credentials(tmp_path / "creds" / name, pki.ca.cert, cert)
            procs.append(Proc(argv, host, tmp_path / f"{name}.log", env=env))
            return procs[-1]

        consumer = [*reader("zenoh:cam1/gen/nv12", "--connect", router,
                            "--zenoh-config", str(ZENOH / "peer.json5"))]
        try:
            rtr_proc = start(framebus("router", "--zenoh-config", str(ZENOH / "router.json5"),
                                      "--listen", router), rtr, "router",
                             pki.hosts["framebus-router"])
            procs.append(Proc(framebus("run", "-c", str(config)), cam, tmp_path / "daemon.log"))
            wait_streaming(run / "control.sock", ["gen"])
            bridge = start(framebus("bridge", "-c", str(config)), cam, "bridge",
                           pki.hosts["framebus-cam1"])
            good = start(consumer, gpu, "good", pki.hosts["framebus-gpu1"])
            rogue = start(consumer, gpu, "rogue", pki.rogue)
            rogue_watch = start(framebus("watch", "zenoh:cam1/gen/nv12", "--connect", router,
                                         "--zenoh-config", str(ZENOH / "peer.json5")),
                                gpu, "rogue-watch", pki.rogue)
            wait_frames(good, 25, 60, "frames at the consumer with the site's certificate")
            window([good, rogue], 5.0)
            assert rogue.frames() == [], "a certificate from another CA got frames"
            wait_for(lambda: REFUSED_CERT.search(rtr_proc.log_text()), 10,
                     "the router to log the refused certificate")
            for refused in (rogue, rogue_watch):  # the library's reader, and framebus watch
                wait_for(lambda p=refused: REFUSED_DIAL.search(p.log_text()), 10,
                         f"{refused.log.name} to log the failed handshake")
            assert not REFUSED_CERT.search(good.log_text() + bridge.log_text())
            assert rogue.proc.poll() is None
            assert all(f["uniform"] for f in good.frames())
        finally:
            for proc in reversed(procs):
                proc.stop(signal.SIGTERM)
