"""The ``remote:`` configuration and what the remote CLI parses: export renditions, endpoints,
``zenoh:`` camera URLs, host names, a fleet config cut to one host, ``zenoh:`` targets, query
parameters and the bridge's daemon-side subscription names. Pure: no zenoh session."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framebus.config import Config, for_host, parse_config
from framebus.errors import ConfigError
from framebus.remote.cli_support import is_remote, parse_target, remote_config
from framebus.remote.export import QUERY_TIMEOUT_MAX_S, parse_query, subscription_name
from framebus.remote.settings import RemoteConfig, RemoteExport, host_name

SECRET = "hunter2-s3cret"
DAEMON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # api_handlers' subscription name


def camera(url: str = "rtsp://cam.local/stream", **extra: Any) -> dict[str, Any]:
    return {"url": url, **extra}


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# -- exports ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "name"), [
    ({}, "nv12"),
    ({"format": "bgr24"}, "bgr24"),
    ({"format": "nv12", "width": 1280, "height": 720}, "nv12-1280x720"),
    ({"format": "jpeg", "width": 640, "quality": 80}, "jpeg-w640"),
    ({"format": "gray", "height": 360}, "gray-h360"),
    ({"name": "preview", "format": "jpeg", "width": 640}, "preview"),
])
def test_export_rendition_names(spec: dict[str, Any], name: str) -> None:
    assert RemoteExport.model_validate(spec).rendition() == name


@pytest.mark.parametrize("exports", [
    [{"format": "nv12"}, {"format": "nv12", "max_fps": 5}],
    [{"name": "a"}, {"name": "a", "format": "gray"}],
    [{"format": "gray"}, {"name": "gray", "format": "bgr24"}],
    [{"format": "jpeg", "width": 640}, {"format": "jpeg", "width": 640, "quality": 50}],
])
def test_two_exports_of_one_camera_may_not_share_a_name(exports: list[dict[str, Any]]) -> None:
    message = refused({"cameras": {"lobby": camera(remote=exports)}})
    name = RemoteExport.model_validate(exports[0]).rendition()
    assert message.startswith("config: cameras.lobby.remote: two exports named")
    assert repr(name) in message and "give one a name" in message


def test_exports_that_differ_in_name_are_accepted() -> None:
    config = parse_config({"cameras": {"lobby": camera(remote=[
        {"format": "nv12", "width": 640}, {"format": "nv12", "height": 640},
        {"name": "nv12", "format": "nv12"}, {"format": "gray"}])}})
    assert [e.rendition() for e in config.cameras["lobby"].remote] == [
        "nv12-w640", "nv12-h640", "nv12", "gray"]
    assert parse_config({"cameras": {"lobby": camera()}}).cameras["lobby"].remote == []


@pytest.mark.parametrize(("export", "key"), [
    ({"name": "a/b"}, "name"), ({"name": "*"}, "name"), ({"name": ""}, "name"),
    ({"name": "-x"}, "name"), ({"name": "x\n"}, "name"), ({"format": "h264"}, "format"),
    ({"width": 0}, "width"), ({"max_fps": 0}, "max_fps"), ({"quality": 101}, "quality"),
    ({"colour": "red"}, "colour"),
])
def test_bad_exports_name_the_key(export: dict[str, Any], key: str) -> None:
    message = refused({"cameras": {"lobby": camera(remote=[{"format": "gray"}, export])}})
    assert message.startswith(f"config: cameras.lobby.remote.1.{key}: ")


# -- endpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["tcp/10.0.0.5:7447", "tls/router.site:7447",
                                      "udp/[::1]:7447", "quic/h:1", "unixsock-stream/run/z.s"])
def test_good_endpoints(endpoint: str) -> None:
    config = parse_config({"remote": {"listen": [endpoint], "connect": [endpoint]}})
    assert config.remote.listen == [endpoint] and config.remote.connect == [endpoint]


@pytest.mark.parametrize("endpoint", ["10.0.0.5:7447", "http/h:1", "tcp/", "tcp/a b",
                                      "", "TCP/h:1", "tcp/h:1\n", "ws/h:1"])
@pytest.mark.parametrize("key", ["listen", "connect"])
def test_bad_endpoints_name_the_key(endpoint: str, key: str) -> None:
    message = refused({"remote": {key: ["tcp/10.0.0.1:7447", endpoint]}})
    assert message.startswith(f"config: remote.{key}: expected zenoh endpoints like")
    args = argparse.Namespace(zenoh_config=None, connect=[endpoint])
    with pytest.raises(ConfigError, match=r"^--connect: expected zenoh endpoints"):
        remote_config(args)


def test_remote_config_from_the_command_line() -> None:
    args = argparse.Namespace(zenoh_config=Path("/etc/z.json5"), connect=["tcp/h:7447"])
    assert remote_config(args) == RemoteConfig(zenoh_config=Path("/etc/z.json5"),
                                               connect=["tcp/h:7447"])


# -- zenoh: camera URLs ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["zenoh:*/lobby/nv12-1280x720", "zenoh:camhost1/lobby/jpeg",
                                 "zenoh:h.site/cam_2/preview"])
def test_good_zenoh_urls(url: str) -> None:
    assert parse_config({"cameras": {"relay": camera(url)}}).cameras["relay"].url == url


@pytest.mark.parametrize("url", [
    "zenoh:lobby", "zenoh:*/lobby", "zenoh:*/lobby/*", "zenoh:**/lobby/nv12", "zenoh:/lobby/nv12",
    "zenoh:h/lobby/nv12/x", "zenoh:*/lobby/nv12\n", "zenoh:h/lo by/nv12", "ZENOH:h/lobby/nv12",
    f"zenoh://admin:{SECRET}@h/lobby/nv12", f"zenoh:h/lobby/nv12?password={SECRET}",
    f"zenoh:{SECRET}:{SECRET}/lobby/nv12", "zenoh:" + "h" * 65 + "/lobby/nv12",
])
def test_bad_zenoh_urls_name_the_key_and_never_echo_the_url(url: str) -> None:
    message = refused({"cameras": {"relay": camera(url)}})
    assert message == ("config: cameras.relay.url: expected zenoh:<host or *>/<camera>/"
                       "<rendition>, e.g. zenoh:*/lobby/nv12-1280x720")  # nothing echoed


def test_camera_host_must_be_a_name() -> None:
    assert refused({"cameras": {"a": camera(host="b/c")}}).startswith("config: cameras.a.host:")
    assert parse_config({"cameras": {"a": camera(host="cam-1")}}).cameras["a"].host == "cam-1"


# -- host names and fleet configs ------------------------------------------------------------


def test_host_name_override_then_config_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "box7.site.example")
    assert host_name(RemoteConfig()) == "box7"
    assert host_name(RemoteConfig(host="cam-a")) == "cam-a"
    assert host_name(RemoteConfig(host="cam-a"), "gpu1") == "gpu1"


@pytest.mark.parametrize("bad", ["bad_host!", "-x", "a/b", "*", "gpu1\n", "x" * 65])
def test_an_unusable_host_name_is_a_config_error(bad: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^remote\.host: .* set remote\.host or --host"):
        host_name(RemoteConfig(), bad)
    monkeypatch.setattr(socket, "gethostname", lambda: bad)
    with pytest.raises(ConfigError, match=r"^remote\.host: "):
        host_name(RemoteConfig())


FLEET: dict[str, Any] = {
    "remote": {"host": "h1"},
    "cameras": {"a": camera(host="h1"), "b": camera(host="h2"), "c": camera()},
    "subscribers": {
        "sa": {"camera": "a"}, "sb": {"camera": "b"}, "sc": {"camera": "c"},
        "sab": {"cameras": ["a", "b"]}, "sbb": {"cameras": ["b"]}, "all": {"cameras": "*"},
    },
}


def test_for_host_keeps_this_hosts_cameras_and_their_subscribers() -> None:
    config = parse_config(FLEET)
    mine = for_host(config)  # remote.host: h1
    assert list(mine.cameras) == ["a", "c"]
    assert sorted(mine.subscribers) == ["all", "sa", "sab", "sc"]
    assert mine.subscribers["sab"].cameras == ["a"]
    assert mine.subscribers["all"].names(mine.cameras) == ("a", "c")
    theirs = for_host(config, "h2")
    assert list(theirs.cameras) == ["b", "c"]
    assert sorted(theirs.subscribers) == ["all", "sab", "sb", "sbb", "sc"]
    assert theirs.subscribers["sab"].cameras == ["b"]
    nobody = for_host(config, "h3")
    assert list(nobody.cameras) == ["c"] and sorted(nobody.subscribers) == ["all", "sc"]
    assert config.cameras.keys() == {"a", "b", "c"}  # the whole config is left as it was


def test_for_host_leaves_a_config_naming_no_host_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "not a usable name!")
    config = parse_config({"cameras": {"a": camera(), "b": camera()},
                           "subscribers": {"s": {"cameras": ["a", "b"]}}})
    assert for_host(config) is config  # the hostname is not even asked
    assert for_host(config, "gpu1") == config
    fleet = parse_config(FLEET | {"remote": {}})
    with pytest.raises(ConfigError, match=r"remote\.host"):
        for_host(fleet)  # a fleet config on a host with an unusable name


def test_an_empty_config_is_unchanged() -> None:
    assert for_host(Config()) == Config()


# -- zenoh: targets --------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "parsed"), [
    ("zenoh:lobby", (None, "lobby", None)),
    ("zenoh:h1/lobby", ("h1", "lobby", None)),
    ("zenoh:*/lobby", (None, "lobby", None)),
    ("zenoh:h1/lobby/nv12-1280x720", ("h1", "lobby", "nv12-1280x720")),
    ("zenoh:*/lobby/preview", (None, "lobby", "preview")),
    (Path("zenoh:lobby"), (None, "lobby", None)),
])
def test_parse_target(target: str | Path, parsed: tuple[str | None, str, str | None]) -> None:
    assert is_remote(target)
    assert parse_target(target) == parsed


@pytest.mark.parametrize("target", [
    "zenoh:", "zenoh:*", "zenoh:/lobby", "zenoh:h1/", "zenoh:a/b/c/d", "zenoh:h1/*/nv12",
    "zenoh:h1/lobby/*", "zenoh:**/lobby", "zenoh:../lobby", "zenoh:lobby\n", "zenoh:h1\n/lobby",
    "zenoh:lo by", "zenoh:" + "x" * 10_000,
])
def test_parse_target_refusals(target: str) -> None:
    with pytest.raises(ConfigError, match="expected zenoh:CAMERA") as info:
        parse_target(target)
    assert len(str(info.value)) < 300


def test_fifo_paths_are_not_remote() -> None:
    assert not is_remote("/run/framebus/a.fifo") and not is_remote(Path("zenoh"))


# -- query parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(("parameters", "parsed"), [
    ("", (None, None, QUERY_TIMEOUT_MAX_S)),
    (";;", (None, None, QUERY_TIMEOUT_MAX_S)),
    ("newer_than=41", (41, None, QUERY_TIMEOUT_MAX_S)),
    ("newer_than=0", (0, None, QUERY_TIMEOUT_MAX_S)),
    (f"newer_than={2**63 - 1}", (2**63 - 1, None, QUERY_TIMEOUT_MAX_S)),
    ("max_age=0.5", (None, 0.5, QUERY_TIMEOUT_MAX_S)),
    ("max_age=0", (None, 0.0, QUERY_TIMEOUT_MAX_S)),
    ("max_age=86400", (None, 86400.0, QUERY_TIMEOUT_MAX_S)),
    ("timeout=2", (None, None, 2.0)),
    ("timeout=0", (None, None, 0.1)),
    ("timeout=3600", (None, None, QUERY_TIMEOUT_MAX_S)),
    ("newer_than=7;max_age=1.5;timeout=1", (7, 1.5, 1.0)),
    ("timeout=1;;newer_than=7;", (7, None, 1.0)),
])
def test_parse_query(parameters: str, parsed: tuple[int | None, float | None, float]) -> None:
    assert parse_query(parameters) == parsed


@pytest.mark.parametrize(("parameters", "why"), [
    ("newer_than=-1", "newer_than: expected a seq"),
    (f"newer_than={2**63}", "newer_than: expected a seq"),
    ("newer_than=1.5", "newer_than: expected a seq"),
    ("newer_than", "newer_than: expected a seq"),
    ("newer_than=" + "9" * 100_000, "newer_than: expected a seq"),
    ("max_age=-0.1", "max_age: expected seconds"),
    ("max_age=nan", "max_age: expected seconds"),
    ("max_age=inf", "max_age: expected seconds"),
    ("max_age=86401", "max_age: expected seconds"),
    ("max_age=soon", "max_age: expected seconds"),
    ("timeout=-1", "timeout: expected seconds"),
    ("timeout=" + "1" * 100_000, "timeout: expected seconds"),
    ("newer_than=1;wait=1", "unknown parameter 'wait'"),
    ("=1", "unknown parameter ''"),
    ("x" * 100_000 + "=1", "unknown parameter"),
])
def test_parse_query_refusals(parameters: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_query(parameters)
    assert len(str(info.value)) < 200


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="newr_thamxgiuo=;.0123456789-+e ", max_size=80) | st.text(max_size=80))
def test_parse_query_raises_nothing_but_value_error(parameters: str) -> None:
    try:
        newer_than, max_age, timeout = parse_query(parameters)
    except ValueError:
        return
    assert newer_than is None or 0 <= newer_than < 2**63
    assert max_age is None or 0 <= max_age <= 86400
    assert 0.1 <= timeout <= QUERY_TIMEOUT_MAX_S


# -- the bridge's subscription names ---------------------------------------------------------


def test_subscription_names_are_readable_when_short_and_always_fit() -> None:
    assert re.fullmatch(r"bridge-h1-lobby-nv12-[0-9a-f]{8}",
                        subscription_name("h1", "lobby", "nv12"))
    longest = [("h" * 64, "c" * 64, "r" * 64), ("h" * 64, "c" * 64, "s" * 64),
               ("h", "c" * 64, "r"), ("h", "c" * 63, "r"), ("h" * 20, "c" * 20, "r" * 20)]
    names = [subscription_name(*parts) for parts in longest]
    assert all(len(name) <= 64 and DAEMON_NAME.fullmatch(name) for name in names)
    assert len(set(names)) == len(names)
    assert names[0] == subscription_name("h" * 64, "c" * 64, "r" * 64)  # stable across runs


def test_subscription_names_of_one_bridge_are_unique() -> None:
    assert subscription_name("h1", "lobby-east", "nv12") != subscription_name(
        "h1", "lobby", "east-nv12")
