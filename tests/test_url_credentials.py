"""Credentials anywhere in a camera URL are refused, naming the camera's key and the
alternatives, and redacted wherever a URL is shown (issue 22, hole 2).

The table holds one URL of each format real cameras use (framebus/urls.py names them), with
what the config does with it and how the API and the log show it. Then the same through
``framebus check-config`` (exit 2) and through a running daemon: a refused reload and a refused
start never put the secret into the log or an API answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from faultkit import DaemonProcess, camera_config, rig, write_daemon_config
from rtspserver import Mount, RtspServer

from framebus.config import parse_config
from framebus.errors import ConfigError
from framebus.logs import redact
from framebus.urls import find_credentials, is_credential_key, redact_url

S = "S3cr3t-9x"  # the secret in every refused URL of the table
ALTERNATIVES = ("give the camera username: and one of password_credential: (a systemd "
                "credential), password_file:, password_env: or password:")

# (format, URL, where and key refused or None when accepted, URL as shown)
FORMATS: list[tuple[str, str, str | None, str]] = [
    # accepted and shown unchanged: no credential in them
    ("Hikvision", "rtsp://192.168.1.64:554/Streaming/Channels/101", None, ""),
    ("Hikvision, old firmware", "rtsp://192.168.1.64:554/h264/ch1/main/av_stream", None, ""),
    ("Hikvision ISAPI", "rtsp://192.168.1.64/ISAPI/Streaming/channels/101"
     "?transportmode=unicast&profile=Profile_1", None, ""),
    ("Dahua, Amcrest", "rtsp://192.168.1.108:554/cam/realmonitor?channel=1&subtype=0", None, ""),
    ("Dahua ONVIF", "rtsp://192.168.1.108/cam/realmonitor?channel=1&subtype=0&unicast=true"
     "&proto=Onvif", None, ""),
    ("Axis", "rtsp://192.168.0.90/axis-media/media.amp?videocodec=h264&resolution=1280x720"
     "&fps=25", None, ""),
    ("Reolink", "rtsp://192.168.1.10:554/h264Preview_01_main", None, ""),
    ("Foscam", "rtsp://192.168.1.20:88/videoMain", None, ""),
    ("Uniview", "rtsp://192.168.1.13:554/unicast/c1/s0/live", None, ""),
    ("Uniview, media", "rtsp://192.168.1.13/media/video1", None, ""),
    ("Vivotek", "rtsp://192.168.1.30/live.sdp", None, ""),
    ("Bosch", "rtsp://192.168.1.40/?inst=1&h26x=4", None, ""),
    ("Hanwha Wisenet", "rtsp://192.168.1.50/profile2/media.smp", None, ""),
    ("TP-Link Tapo", "rtsp://192.168.1.60:554/stream1", None, ""),
    ("VStarcam", "rtsp://192.168.1.70:10554/tcp/av0_0", None, ""),
    ("Geovision", "rtsp://192.168.0.10:8554/CH001.sdp", None, ""),
    # a user name alone is not a secret, and XMEye's factory empty password hides nothing
    ("XMEye, user only", "rtsp://192.168.1.10:554/user=admin&channel=1&stream=0.sdp"
     "?real_stream", None, ""),
    ("XMEye, empty password", "rtsp://192.168.1.10:554/user=admin&password=&channel=1"
     "&stream=0.sdp?real_stream", None, ""),
    ("key-like words", "rtsp://h/x?keyframe=1&monkey=2&author=a&passes=", None, ""),
    # refused, and shown with the value replaced
    ("userinfo", f"rtsp://admin:{S}@192.168.1.64:554/Streaming/Channels/101", "userinfo ",
     "rtsp://192.168.1.64:554/Streaming/Channels/101"),
    ("userinfo, user only", "rtsp://admin@192.168.1.64/x", "userinfo ", "rtsp://192.168.1.64/x"),
    ("userinfo, unencoded '/' and '@'", f"rtsp://admin:{S[:3]}/{S[3:]}@h/x", "userinfo ",
     "rtsp://h/x"),
    ("XMEye/Xiongmai", f"rtsp://192.168.1.10:554/user=admin&password={S}&channel=1"
     "&stream=0.sdp?real_stream", "path password",
     "rtsp://192.168.1.10:554/user=admin&password=REDACTED&channel=1&stream=0.sdp?real_stream"),
    ("XMEye, underscores", f"rtsp://192.168.1.10:554/user=admin_password={S}_channel=1"
     "_stream=0.sdp?real_stream", "path password",
     "rtsp://192.168.1.10:554/user=admin_password=REDACTED_channel=1_stream=0.sdp?real_stream"),
    ("XMEye, percent-encoded key", f"rtsp://h/user=admin&pass%77ord={S}&channel=1",
     "path password", "rtsp://h/user=admin&pass%77ord=REDACTED&channel=1"),
    ("percent-encoded separators", f"rtsp://h/live%3Fuser%3Dadmin%26PASSWORD%3D{S}",
     "path PASSWORD", "rtsp://h/live%3Fuser%3Dadmin%26PASSWORD%3DREDACTED"),
    ("path parameter", f"rtsp://h/live;pwd={S}/ch1", "path pwd", "rtsp://h/live;pwd=REDACTED/ch1"),
    ("Reolink ?user=&password=", f"rtsp://h:554/bcs/channel0_main.bcs?channel=0&stream=0"
     f"&user=admin&password={S}", "query password",
     "rtsp://h:554/bcs/channel0_main.bcs?channel=0&stream=0&user=admin&password=REDACTED"),
    ("Foscam ?usr=&pwd=", f"rtsp://h:88/videoMain?usr=admin&pwd={S}", "query pwd",
     "rtsp://h:88/videoMain?usr=admin&pwd=REDACTED"),
    ("VStarcam ?loginpas=", f"rtsp://h:10554/tcp/av0_0?loginuse=admin&loginpas={S}",
     "query loginpas", "rtsp://h:10554/tcp/av0_0?loginuse=admin&loginpas=REDACTED"),
    ("Hikvision ?auth= (base64)", "rtsp://h/ISAPI/Streaming/channels/101?auth="
     "YWRtaW46UzNjcjN0LTl4", "query auth", "rtsp://h/ISAPI/Streaming/channels/101?auth=REDACTED"),
    ("?pw=", f"rtsp://h/live?pw={S}", "query pw", "rtsp://h/live?pw=REDACTED"),
    ("?Pwd= upper case", f"rtsp://h/live?Pwd={S}", "query Pwd", "rtsp://h/live?Pwd=REDACTED"),
    ("token", f"rtsps://h/stream?token={S}&a=1", "query token",
     "rtsps://h/stream?token=REDACTED&a=1"),
    ("access_token", f"rtsps://h/s?access_token={S}", "query token",
     "rtsps://h/s?access_token=REDACTED"),
    ("api_key", f"rtsp://h/s?api_key={S}", "query key", "rtsp://h/s?api_key=REDACTED"),
    ("X-Api-Key", f"rtsp://h/s?X-Api-Key={S}", "query X-Api-Key", "rtsp://h/s?X-Api-Key=REDACTED"),
    ("signed URL", f"rtsps://h/s?X-Amz-Date=1&X-Amz-Signature={S}", "query X-Amz-Signature",
     "rtsps://h/s?X-Amz-Date=1&X-Amz-Signature=REDACTED"),
    ("?sig=", f"rtsp://h/s?sig={S}", "query sig", "rtsp://h/s?sig=REDACTED"),
    ("?secret=", f"rtsp://h/s?secret={S}", "query secret", "rtsp://h/s?secret=REDACTED"),
    ("fragment", f"rtsp://h/x#password={S}", "fragment password", "rtsp://h/x#password=REDACTED"),
    ("a value with '&' in it", f"rtsp://h/x?password={S[:4]}&{S[4:]}&channel=1",
     "query password", "rtsp://h/x?password=REDACTED&channel=1"),
]


@pytest.mark.parametrize(("url", "refused", "shown"), [row[1:] for row in FORMATS],
                         ids=[row[0] for row in FORMATS])
def test_real_camera_url_formats(url: str, refused: str | None, shown: str) -> None:
    assert redact_url(url) == (shown or url)
    assert S not in redact_url(url) and S[:4] not in redact_url(url)
    if refused is None:
        assert find_credentials(url) == []
        config = parse_config({"cameras": {"cam": {"url": url}}})
        assert config.cameras["cam"].url == url  # accepted unchanged
        return
    where, key = refused.split(" ")
    with pytest.raises(ConfigError) as info:
        parse_config({"cameras": {"cam": {"url": url}}})
    message = str(info.value)
    what = "the URL" if where == "userinfo" else f"the URL's {where} ({key}=...)"
    assert message == f"config: cameras.cam.url: credentials in {what} are not allowed: " \
                      f"{ALTERNATIVES}", message
    assert S not in message and S[:4] not in message


@pytest.mark.parametrize(("key", "credential"), [
    ("password", True), ("PassWord", True), ("pass%77ord", True), ("pwd", True), ("pw", True),
    ("loginpas", True), ("token", True), ("auth", True), ("api_key", True), ("apikey", True),
    ("key", True), ("secret", True), ("sig", True), ("signature", True),
    ("user", False), ("username", False), ("usr", False), ("loginuse", False),
    ("channel", False), ("subtype", False), ("keyframe", False), ("author", False),
])
def test_credential_keys(key: str, credential: bool) -> None:
    assert is_credential_key(key) is credential


def test_file_paths_and_lavfi_graphs_are_not_urls_to_redact() -> None:
    for source in ("/srv/clips/pass=word.h264", "lavfi:testsrc2=size=320x240:rate=25"):
        assert find_credentials(source) == [] and redact_url(source) == source


@pytest.mark.parametrize(("url", "refused", "shown"), [row[1:] for row in FORMATS if row[2]],
                         ids=[row[0] for row in FORMATS if row[2]])
def test_the_log_filter_redacts_every_url_in_any_message(url: str, refused: str,
                                                         shown: str) -> None:
    """The last line of defence: a URL from any code (FFmpeg's error text, a library) loses
    its credentials in the log as it does in redact_url, userinfo marked ``***@``."""
    message = redact(f"camera x: opening {url} failed ('{url}'), [{url}].")
    expected = redact_url(url, userinfo="***@")
    assert message == f"camera x: opening {expected} failed ('{expected}'), [{expected}].", \
        message
    assert S not in message and S[:4] not in message, message


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``framebus check-config PATH``."""
    return subprocess.run([sys.executable, "-m", "framebus", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_config_refuses_credentials_in_the_path_with_exit_2(tmp_path: Path) -> None:
    url = f"rtsp://192.168.1.10:554/user=admin&password={S}&channel=1&stream=0.sdp?real_stream"
    path = tmp_path / "framebus.yaml"
    path.write_text(yaml.safe_dump({"cameras": {"dvr": {"url": url}}}))
    result = check_config(path)
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        f"framebus: config error: {path}: cameras.dvr.url: credentials in the URL's path "
        f"(password=...) are not allowed: {ALTERNATIVES}")
    assert S not in result.stdout + result.stderr
    # what the message says to do is accepted
    path.write_text(yaml.safe_dump({"cameras": {"dvr": {
        "url": "rtsp://192.168.1.10:554/user=admin&channel=1&stream=0.sdp?real_stream",
        "username": "admin", "password_env": "FRAMEBUS_DVR_PASSWORD"}}}))
    result = check_config(path)
    assert result.returncode == 0, result


# secrets of the daemon test, one per way to hide them
SECRETS = {"path": "xm-S3cr3t-1", "query": "pw-S3cr3t-2", "percent": "pct-S3cr3t-3",
           "userinfo": "ui-S3cr3t-4"}


def hiding(base: str) -> dict[str, str]:
    """URLs on the test server with each secret in another place."""
    host = base.split("://", 1)[1].split("/", 1)[0]
    return {"path": f"{base}/user=admin&password={SECRETS['path']}&channel=1&stream=0.sdp",
            "query": f"{base}?pw={SECRETS['query']}",
            "percent": f"{base}?user=admin&pass%77ord={SECRETS['percent']}",
            "userinfo": f"rtsp://admin:{quote(SECRETS['userinfo'])}@{host}/cam"}


def test_a_running_daemon_never_shows_a_url_secret(tmp_path: Path) -> None:
    def cameras(servers: dict[str, RtspServer], _: object) -> dict[str, dict[str, Any]]:
        # XMEye's form with the user name alone: accepted, streams, shown as it is
        return {"xm": camera_config(servers["a"].url("cam") + "?user=admin&channel=1"
                                    "&stream=0.sdp")}

    texts: dict[str, str] = {}
    with rig(tmp_path, {"a": [Mount("cam", width=160, height=120)]}, cameras,
             args=("--log-level", "DEBUG")) as the_rig:
        base = the_rig.servers["a"].url("cam")
        shown = the_rig.camera("xm")["url"]
        assert shown == f"{base}?user=admin&channel=1&stream=0.sdp"
        good = dict(the_rig.cameras)
        for name, url in hiding(base).items():
            the_rig.write_config({**good, name: camera_config(url)})
            the_rig.daemon.reload()
            refused = [line for line in the_rig.daemon.lines if f"cameras.{name}.url" in line]
            assert len(refused) == 1 and "reload: keeping the running configuration" in \
                refused[0] and ALTERNATIVES in refused[0], the_rig.daemon.lines[-3:]
            # a daemon started with it refuses to start, exit 2, with the same message
            bad = write_daemon_config(tmp_path / f"{name}.yaml", tmp_path / f"{name}-fifos",
                                      {name: camera_config(url)}, {})
            started = DaemonProcess(bad)
            assert started.proc.wait(60) == 2
            started.stop()  # collects the rest of its log
            assert any(f"cameras.{name}.url: credentials in the URL" in line
                       for line in started.lines), started.lines
            texts[f"daemon started with {name}"] = "\n".join(started.lines)
        for target in ("/v1/cameras", "/v1/cameras/xm", "/metrics", "/healthz"):
            status, _, body = the_rig.api.request("GET", target)
            assert status == 200, target
            texts[target] = body.decode()
        assert the_rig.state("xm") == "streaming"
        assert the_rig.daemon.stop() == 0
        texts["daemon log"] = "\n".join(the_rig.daemon.lines)
    assert "DEBUG" in texts["daemon log"]
    leaks = [(where, name) for where, text in texts.items() for name, secret in SECRETS.items()
             if secret in text or quote(secret, safe="") in text]
    assert leaks == [], leaks
