"""Secrets never leak: camera passwords (one from a file, one from the environment, and a wrong
one) go through the fault matrix's faults, a failing and a working reload, every kind of API
answer and ``request_frame()``; then every text the run produced (API answers and headers, the
daemon's DEBUG log, the RTSP server's log, the readers' output, every process's command line)
is scanned for any form of any password. Marked ``soak`` (``make soak``).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from faultkit import STREAMING, CheckedReader, camera_config, rig
from faultproxy import FaultProxy
from matrixkit import H, W
from rtspserver import Mount, RtspServer
from waiting import wait_for

from framebus.client import FrameRequestError, request_frame

SECRET_1 = "c4m-0ne:s3cr3t pa55@x"  # a colon, a space and an @: URL-encoding changes them
SECRET_2 = "c4m-tw0/p%ss#w0rd"
SECRET_WRONG = "wr0ng-gue55:zz top"


def secret_forms(secret: str, user: str) -> list[bytes]:
    """Every way a password could leak: raw, URL-encoded, inside a Basic-auth token."""
    forms = {secret, quote(secret, safe=""), quote(secret),
             base64.b64encode(f"{user}:{secret}".encode()).decode()}
    return [form.encode() for form in forms]


def leaks(texts: dict[str, bytes], forms: list[bytes]) -> list[str]:
    """Where any form of any secret appears."""
    return [where for where, text in texts.items() if any(form in text for form in forms)]


def all_cmdlines() -> dict[str, bytes]:
    """/proc/*/cmdline of every process (what any local user can read)."""
    found: dict[str, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[f"/proc/{entry.name}/cmdline"] = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # the process ended meanwhile
    return found


@pytest.mark.soak
def test_passwords_never_leak_through_faults(tmp_path: Path) -> None:
    mounts = {"a": [Mount("cam1", user="viewer", password=SECRET_1, width=W, height=H),
                    Mount("cam2", user="viewer2", password=SECRET_2, width=W, height=H)],
              "b": [Mount("healthy", width=W, height=H)]}

    def cameras(servers: dict[str, RtspServer], proxy: FaultProxy | None) -> dict[str, Any]:
        assert proxy is not None
        return {"healthy": camera_config(servers["b"].url("healthy")),
                "cam1": camera_config(servers["a"].url("cam1"), username="viewer",
                                      password_file=str(tmp_path / "cam1.secret")),
                "cam2": camera_config(proxy.url("cam2"), username="viewer2",
                                      password_env="FRAMEBUS_TEST_CAM2_PASSWORD"),
                "wrong": camera_config(servers["a"].url("cam1"), username="viewer",
                                       password_file=str(tmp_path / "wrong.secret"))}
    forms = [*secret_forms(SECRET_1, "viewer"), *secret_forms(SECRET_2, "viewer2"),
             *secret_forms(SECRET_WRONG, "viewer")]
    texts: dict[str, bytes] = {}
    with rig(tmp_path, mounts, cameras, proxy_to=("a", "cam2"),
             env={"FRAMEBUS_TEST_CAM2_PASSWORD": SECRET_2},
             files={"cam1.secret": SECRET_1, "wrong.secret": SECRET_WRONG},
             args=("--log-level", "DEBUG"), expect_failing=("wrong",)) as the_rig:
        api, server, proxy = the_rig.api, the_rig.servers["a"], the_rig.proxy
        assert proxy is not None
        wait_for(lambda: the_rig.state("wrong") == "auth_failed", 20, "the wrong password")
        readers = []
        for camera in ("cam1", "cam2"):
            _, path = the_rig.subscribe(camera, "secret", format="gray")
            readers.append(CheckedReader(path))
        try:
            for reader in readers:
                reader.wait_frames(3)
            # faults: the server killed and restarted, paused, the network cut and corrupted
            server.kill()
            wait_for(lambda: the_rig.state("cam1") != STREAMING, 10, "cam1 down")
            server.restart()
            the_rig.wait_streaming()
            server.pause()
            try:
                wait_for(lambda: the_rig.state("cam1") != STREAMING, 10, "cam1 stalled")
            finally:
                server.resume()
            the_rig.wait_streaming()
            proxy.blackhole()
            try:
                wait_for(lambda: the_rig.state("cam2") != STREAMING, 10, "cam2 stalled")
            finally:
                proxy.forward()
            the_rig.wait_streaming()
            proxy.corrupt(after_bytes=16 * 1024, every_bytes=64)
            try:
                wait_for(lambda: the_rig.camera("cam2")["reconnects"].get("eof", 0) > 0, 20,
                         "cam2 to reconnect on the corrupted stream")
            finally:
                proxy.forward()
            the_rig.wait_streaming()
            # a reload that fails (unreadable password file), then one that works
            the_rig.write_config({**the_rig.cameras, "cam3": camera_config(
                server.url("cam1"), username="viewer",
                password_file=str(tmp_path / "missing.secret"))})
            the_rig.daemon.reload()
            the_rig.write_config({k: v for k, v in the_rig.cameras.items() if k != "cam3"})
            the_rig.daemon.reload()
            # every API answer, good and bad
            requests: list[tuple[str, str, bytes | None]] = [
                ("GET", "/v1/cameras", None), ("GET", "/v1/subscriptions", None),
                ("GET", "/metrics", None), ("GET", "/v1/cameras/nope", None),
                ("GET", "/v1/cameras/wrong/snapshot.jpg", None),
                ("GET", "/v1/cameras/cam1/snapshot.jpg", None),
                ("GET", "/v1/cameras/cam2/snapshot.png?width=64", None),
                ("POST", "/v1/subscriptions", b"{not json"),
                ("POST", "/v1/subscriptions",
                 f'{{"name": "x", "camera": "cam1", "password": "{SECRET_1}"}}'.encode()),
                ("POST", "/v1/subscriptions", b'{"name": "y", "camera": "cam1", '
                                              b'"fifo": "/etc/passwd"}'),
                ("POST", "/v1/cameras/wrong/snapshot-to-fifo", b'{"fifo": "/tmp/x.fifo"}'),
                ("DELETE", "/v1/subscriptions/nope", None),
                *[("GET", f"/v1/cameras/{name}", None) for name in the_rig.cameras],
            ]
            for method, target, body in requests:
                status, headers, reply = api.request(method, target, body)
                texts[f"{method} {target} -> {status}"] = (
                    reply + repr(headers).encode() if not target.endswith((".jpg", ".png"))
                    else repr(headers).encode())
            for name in api.json("GET", "/v1/subscriptions")[1]["subscriptions"]:
                texts[f"GET /v1/subscriptions/{name['name']}"] = api.request(
                    "GET", f"/v1/subscriptions/{name['name']}")[2]
            frame = request_frame("cam1", url=api.url, fifo_dir=the_rig.fifo_dir,
                                  format="gray", timeout=5, token=api.token)
            assert frame.camera == "cam1"
            with pytest.raises(FrameRequestError) as refused:  # longer than wait_timeout (5 s)
                request_frame("wrong", url=api.url, fifo_dir=the_rig.fifo_dir, timeout=8,
                              token=api.token)
            texts["request_frame(wrong) exception"] = str(refused.value).encode()
            texts.update(all_cmdlines())  # while everything runs
            for reader in readers:
                reader.stop()
                assert reader.torn == 0
                texts[f"reader {reader.fifo.name}"] = "\n".join(reader.lines).encode()
        finally:
            for reader in readers:
                if reader.proc.poll() is None:
                    reader.kill()
        assert the_rig.daemon.stop() == 0
        texts["daemon stderr"] = "\n".join(the_rig.daemon.lines).encode()
        texts["rtsp server a stderr"] = server.stderr_text().encode()
    assert texts["daemon stderr"].count(b"auth_failed") >= 1
    assert any(b"DEBUG" in line for line in texts["daemon stderr"].splitlines())
    found = leaks(texts, forms)
    print(f"\nMEASURED secrets: scanned {len(texts)} texts "
          f"({sum(len(t) for t in texts.values())} bytes, "
          f"{sum(k.startswith('/proc/') for k in texts)} command lines): {len(found)} leaks")
    assert found == [], f"a password appears in: {found}"
