"""HTTPS on the control plane (issue 21, item 5), with real certificates from openssl.

A daemon in this process serves TLS on 127.0.0.1 with a certificate from a throwaway CA
(framebus.testsrc.tlscerts); clients verify it with that CA, refuse it with another, plain HTTP
gets nothing, a handshake that never comes is closed within http.head_timeout without
holding up anyone else, and no key material reaches a log line or an error. Every wait has a
deadline (waiting.wait_for); nothing sleeps and hopes.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fanoutkit import running_daemon
from waiting import wait_for

from framebus.apiclient import DaemonUnreachable, request, request_json
from framebus.cli import main
from framebus.config import parse_config
from framebus.configcheck import check_file
from framebus.daemon import Daemon, reload
from framebus.errors import ConfigError, FramebusError
from framebus.sdnotify import Notifier
from framebus.testsrc.tlscerts import Ca, HostCert, make_ca
from framebus.tlsconfig import is_loopback, server_context

HEAD_TIMEOUT = 1.0  # also the handshake's bound: short, so the stalled cases end quickly
TOKEN = "tls-test-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ca, HostCert, Ca]:
    """The site CA, the daemon's certificate (localhost, 127.0.0.1) and a rogue CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory / "ca", "framebus-test-ca")
    server = ca.issue("localhost", ips=["127.0.0.1"], stem="daemon")
    return ca, server, make_ca(directory / "rogue", "framebus-rogue-ca")


@pytest.fixture
def daemon(pki: tuple[Ca, HostCert, Ca], tmp_path: Path) -> Iterator[Daemon]:
    _, server, _ = pki
    with running_daemon({}, {}, tmp_path / "fifos", http={
            "listen": "127.0.0.1:0", "token": TOKEN, "max_connections": 4,
            "head_timeout": f"{HEAD_TIMEOUT}s", "tls_cert": str(server.cert),
            "tls_key": str(server.key)}) as running:
        yield running


def address(daemon: Daemon) -> tuple[str, int]:
    assert daemon.control is not None
    host, _, port = daemon.control.address.rpartition(":")
    return host, int(port)


def url(daemon: Daemon) -> str:
    host, port = address(daemon)
    return f"https://{host}:{port}"


def https_get(daemon: Daemon, path: str, ca: Path, token: str | None = TOKEN
              ) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(*address(daemon), timeout=10, context=context)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"}
                           if token else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_by_peer(sock: socket.socket, within: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails past ``within``."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        data = sock.recv(4096)
        assert data == b"", f"the server sent {data[:40]!r} to a stalled handshake"
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept a stalled handshake open for over {within}s")
    return time.monotonic() - started


def test_status_api_and_metrics_over_https_with_the_ca(
        pki: tuple[Ca, HostCert, Ca], daemon: Daemon, capsys: pytest.CaptureFixture[str]
        ) -> None:
    ca, _, _ = pki
    assert https_get(daemon, "/healthz", ca.cert, token=None)[0] == 200
    status, body = https_get(daemon, "/v1/cameras", ca.cert)
    assert (status, json.loads(body)) == (200, {"cameras": []})
    status, body = https_get(daemon, "/metrics", ca.cert, token=None)
    assert status == 200 and b"framebus_" in body
    assert https_get(daemon, "/v1/cameras", ca.cert, token="wrong")[0] == 401

    # the CLI and the Python client: https:// URLs, --ca-file
    status, answer = request_json("GET", url(daemon), None, "/v1/subscriptions", None, TOKEN,
                                  10, ca_file=ca.cert)
    assert (status, answer) == (200, {"subscriptions": []})
    token_file = daemon.config.fifo_dir / "token"
    token_file.write_text(TOKEN)
    assert main(["status", "--url", url(daemon), "--ca-file", str(ca.cert),
                 "--token-file", str(token_file)]) == 0
    assert "CAMERA" in capsys.readouterr().out
    # by the name in the certificate as well as the address
    port = address(daemon)[1]
    assert request("GET", f"https://localhost:{port}", None, "/healthz", None, TOKEN, 10,
                   ca_file=ca.cert)[0] == 200


def test_ca_file_from_the_environment(pki: tuple[Ca, HostCert, Ca], daemon: Daemon,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ca, _, _ = pki
    monkeypatch.setenv("FRAMEBUS_CA_FILE", str(ca.cert))
    assert request("GET", url(daemon), None, "/healthz", None, TOKEN, 10)[0] == 200


def test_a_client_trusting_another_ca_refuses_the_daemon(
        pki: tuple[Ca, HostCert, Ca], daemon: Daemon, capsys: pytest.CaptureFixture[str]
        ) -> None:
    ca, _, rogue = pki
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(daemon, "/healthz", rogue.cert)
    with pytest.raises(FramebusError, match=r"was not verified: .*--ca-file"):
        request("GET", url(daemon), None, "/healthz", None, TOKEN, 10, ca_file=rogue.cert)
    # the system's CAs do not know a throwaway CA either
    with pytest.raises(FramebusError, match="was not verified"):
        request("GET", url(daemon), None, "/healthz", None, TOKEN, 10)
    assert main(["status", "--url", url(daemon), "--ca-file", str(rogue.cert)]) == 1
    assert "was not verified" in capsys.readouterr().err
    assert https_get(daemon, "/healthz", ca.cert, token=None)[0] == 200  # others unaffected
    assert daemon.control is not None
    assert daemon.control.server.tls_failed >= 3


def test_plain_http_to_the_tls_port_fails_cleanly(
        pki: tuple[Ca, HostCert, Ca], daemon: Daemon, caplog: pytest.LogCaptureFixture
        ) -> None:
    ca, _, _ = pki
    caplog.set_level(logging.DEBUG)
    connection = http.client.HTTPConnection(*address(daemon), timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        connection.request("GET", "/healthz")
        connection.getresponse()
    connection.close()
    plain = url(daemon).replace("https:", "http:")
    with pytest.raises(DaemonUnreachable, match="use an https:// URL"):
        request("GET", plain, None, "/healthz", None, TOKEN, 10)
    assert https_get(daemon, "/healthz", ca.cert, token=None)[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith(("framebus", "asyncio"))], "a refused client logged"
    # not logged, but counted: an operator sees refused handshakes in /metrics
    status, body = https_get(daemon, "/metrics", ca.cert)
    assert status == 200
    counted = re.search(rb'framebus_http_connections_closed_total\{reason="tls_failed"\} (\S+)',
                        body)
    assert counted is not None and float(counted.group(1)) >= 2, body[-2000:]


def test_https_client_to_a_plain_daemon_says_what_to_check(tmp_path: Path) -> None:
    with running_daemon({}, {}, tmp_path / "fifos",
                        http={"listen": "127.0.0.1:0", "token": TOKEN}) as plain, \
            pytest.raises(FramebusError, match="does it serve HTTPS"):
        request("GET", url(plain), None, "/healthz", None, TOKEN, 10)


def test_a_stalled_handshake_holds_nobody_up_and_is_closed_in_time(
        pki: tuple[Ca, HostCert, Ca], daemon: Daemon) -> None:
    ca, _, _ = pki
    assert daemon.control is not None
    server = daemon.control.server
    host, port = address(daemon)
    silent = socket.create_connection((host, port), timeout=10)  # sends nothing at all
    partial = socket.create_connection((host, port), timeout=10)
    partial.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, no more
    try:
        wait_for(lambda: len(server.connections) >= 2, 10, "both stalled connections counted")
        started = time.monotonic()
        for _ in range(3):  # answered at once, though both handshakes hang
            assert https_get(daemon, "/healthz", ca.cert, token=None)[0] == 200
        assert time.monotonic() - started < HEAD_TIMEOUT, "a stalled handshake held others"
        bound = HEAD_TIMEOUT + 5.0  # the deadline plus a loaded machine's slack
        assert closed_by_peer(silent, bound) < bound
        assert closed_by_peer(partial, bound) < bound
        wait_for(lambda: not server.connections, 10, "the stalled connections to be gone")
        assert server.tls_failed >= 2
    finally:
        silent.close()
        partial.close()


def test_stalled_handshakes_count_against_the_cap_and_are_evicted(
        pki: tuple[Ca, HostCert, Ca], daemon: Daemon) -> None:
    ca, _, _ = pki
    assert daemon.control is not None
    server = daemon.control.server
    cap = server.limits.max_connections
    assert cap == 4
    stalled = [socket.create_connection(address(daemon), timeout=10) for _ in range(cap + 3)]
    try:
        wait_for(lambda: server.evicted >= 3, 10, "stalled handshakes evicted at the cap")
        assert len(server.connections) <= cap
        assert https_get(daemon, "/healthz", ca.cert, token=None)[0] == 200
    finally:
        for sock in stalled:
            sock.close()


def test_no_key_material_in_logs_or_errors(
        pki: tuple[Ca, HostCert, Ca], tmp_path: Path, caplog: pytest.LogCaptureFixture
        ) -> None:
    ca, server, rogue = pki
    caplog.set_level(logging.DEBUG)
    key_lines = [line for line in server.key.read_text().splitlines()
                 if line and not line.startswith("-----")]
    # a key file that is no key, holding what could be a secret
    bogus = tmp_path / "bogus.key"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nSECRET-MARKER-7f3a\n-----END PRIVATE KEY-----\n")
    other = rogue.issue("other", stem="other")
    errors = []
    for cert, key in ((server.cert, bogus), (server.cert, other.key), (bogus, server.key),
                      (server.cert, tmp_path / "missing.key")):
        http = parse_config({"http": {"tls_cert": str(cert), "tls_key": str(key)}}).http
        with pytest.raises(ConfigError) as caught:
            server_context(http)
        errors.append(str(caught.value))
    assert "cannot read: No such file" in errors[-1]
    # a daemon serving TLS, with failed handshakes, then stopped
    with running_daemon({}, {}, tmp_path / "fifos", http={
            "listen": "127.0.0.1:0", "token": TOKEN, "tls_cert": str(server.cert),
            "tls_key": str(server.key)}) as running:
        with pytest.raises(ssl.SSLError):
            https_get(running, "/healthz", rogue.cert)
        assert https_get(running, "/healthz", ca.cert, token=None)[0] == 200
    text = "\n".join([*errors, caplog.text])
    assert "SECRET-MARKER" not in text
    for line in key_lines:
        assert line not in text


def test_an_encrypted_key_is_refused_without_a_prompt(
        pki: tuple[Ca, HostCert, Ca], tmp_path: Path) -> None:
    _, server, _ = pki
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(server.key), "-aes256", "-passout",
                    "pass:x", "-out", str(encrypted)], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)
    http = parse_config({"http": {"tls_cert": str(server.cert), "tls_key": str(encrypted)}}).http
    with pytest.raises(ConfigError, match="encrypted"):
        server_context(http)


def test_certificates_from_systemd_credentials(
        pki: tuple[Ca, HostCert, Ca], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, server, _ = pki
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "https.pem").write_bytes(server.cert.read_bytes())
    (credentials / "https.key").write_bytes(server.key.read_bytes())
    http: dict[str, Any] = {"listen": "0.0.0.0:0", "token": TOKEN,
                            "tls_cert_credential": "https.pem",
                            "tls_key_credential": "https.key"}
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"http.tls_cert_credential: \$CREDENTIALS_DIRECTORY"):
        server_context(parse_config({"http": http}).http)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with running_daemon({}, {}, tmp_path / "fifos", http=http) as running:
        assert running.control is not None
        port = address(running)[1]
        assert request("GET", f"https://127.0.0.1:{port}", None, "/healthz", None, TOKEN, 10,
                       ca_file=ca.cert)[0] == 200


def test_reload_loads_a_renewed_certificate(
        pki: tuple[Ca, HostCert, Ca], tmp_path: Path) -> None:
    ca, server, _ = pki
    cert, key = tmp_path / "https.pem", tmp_path / "https.key"
    cert.write_bytes(server.cert.read_bytes())
    key.write_bytes(server.key.read_bytes())
    http_settings = {"listen": "127.0.0.1:0", "token": TOKEN, "tls_cert": str(cert),
                     "tls_key": str(key)}
    config_path = tmp_path / "framebus.yaml"  # what SIGHUP re-reads: the same settings
    config_path.write_text(yaml.safe_dump({"fifo_dir": str(tmp_path / "fifos"),
                                           "cameras": {}, "http": http_settings}))
    with running_daemon({}, {}, tmp_path / "fifos", http=http_settings) as running:
        assert running.control is not None

        def serial() -> int:
            context = ssl.create_default_context(cafile=str(ca.cert))
            with socket.create_connection(address(running), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return int(tls.getpeercert()["serialNumber"], 16)  # type: ignore[index,arg-type]
        first = serial()
        renewed = ca.issue("localhost", ips=["127.0.0.1"], stem="renewed")
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        reload(running, config_path, Notifier())  # what SIGHUP runs
        second = wait_for(lambda: (s := serial()) != first and s, 10, "the renewed certificate")
        key.write_text("not a key\n")  # a broken renewal keeps the loaded certificate
        reload(running, config_path, Notifier())
        assert serial() == second


@pytest.mark.parametrize(("listen", "extra", "accepted"), [
    ("127.0.0.1:8470", {}, True),
    ("[::1]:8470", {}, True),
    ("localhost:8470", {}, True),
    ("0.0.0.0:8470", {}, False),
    ("192.0.2.7:8470", {}, False),
    ("camera-box.lan:8470", {}, False),
    ("0.0.0.0:8470", {"allow_plain_http": True}, True),
    ("0.0.0.0:8470", {"tls_cert": "/c.pem", "tls_key": "/k.pem"}, True),
    ("0.0.0.0:8470", {"enabled": False}, True),
])
def test_listening_beyond_loopback_needs_tls_or_an_opt_out(
        listen: str, extra: dict[str, Any], accepted: bool) -> None:
    data = {"http": {"listen": listen, **extra}}
    if accepted:
        parse_config(data)
    else:
        with pytest.raises(ConfigError, match=r"tls_cert and tls_key .* allow_plain_http"):
            parse_config(data)


def test_tls_settings_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="give both a certificate"):
        parse_config({"http": {"tls_cert": "/c.pem"}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"http": {"tls_cert": "/c.pem", "tls_cert_credential": "c",
                               "tls_key": "/k.pem"}})
    with pytest.raises(ConfigError, match="tls_key_credential"):
        parse_config({"http": {"tls_cert": "/c.pem", "tls_key_credential": "../../etc/x"}})
    assert is_loopback("127.3.4.5") and not is_loopback("::")


def test_check_config_loads_the_certificate(
        pki: tuple[Ca, HostCert, Ca], tmp_path: Path) -> None:
    _, server, rogue = pki
    config = tmp_path / "framebus.yaml"
    body = 'cameras: {front: {url: "rtsp://192.0.2.1/s"}}\nhttp: {listen: "0.0.0.0:8470", '
    config.write_text(body + f"tls_cert: {server.cert}, tls_key: {server.key}}}\n")
    assert check_file(config, {})[1] == []
    config.write_text(body + f"tls_cert: {rogue.cert}, tls_key: {server.key}}}\n")
    with pytest.raises(ConfigError, match="cannot load"):
        check_file(config, {})
    config.write_text(body + "tls_cert_credential: a.pem, tls_key_credential: a.key}\n")
    assert "not checked" in check_file(config, {})[1][0]
    config.write_text(body[:-2] + "}\n")
    with pytest.raises(ConfigError, match="allow_plain_http"):
        check_file(config, {})
