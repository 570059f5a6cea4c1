"""Remote consumers against real zenoh sessions on loopback (no namespaces): a publisher puts
crafted samples, and RemoteSubscriber, AsyncRemoteSubscriber and request_remote_frame must
keep a ring of one, drop frames older than max_age, count what they missed by seq, refuse
what is not a framebus sample without raising, hand states to on_event, see a new daemon,
and turn query replies into frames, FrameRequestError or TimeoutError."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zenoh
from camerakit import FAST
from framegen import make_frame
from prockit import free_port
from waiting import wait_for

from framebus.camera import CameraState
from framebus.client import FrameRequestError
from framebus.config import Config, parse_config
from framebus.daemon import Daemon
from framebus.reading import RESTART, StreamEvent
from framebus.remote.aio import AsyncRemoteSubscriber
from framebus.remote.consumer import RemoteCore, RemoteSubscriber
from framebus.remote.mapping import data_key, frame_attachment, state_sample
from framebus.remote.newest import request_remote_frame
from framebus.remote.session import open_session
from framebus.remote.settings import RemoteConfig
from framebus.wire import (
    FrameHeader,
    PixelFormat,
    ShmLocation,
    StateHeader,
    StreamState,
    encode_header,
)

DEADLINE = 10.0
_names = itertools.count()


def loopback_config(**endpoints: list[str]) -> zenoh.Config:
    config = zenoh.Config()
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("transport/shared_memory/enabled", "false")
    for key, value in endpoints.items():
        config.insert_json5(f"{key}/endpoints", json.dumps(value))
    return config


@dataclasses.dataclass
class Net:
    """Two sessions joined over tcp on loopback: ``pub`` (the bridge's side) listens."""

    pub: Any  # zenoh.Session (zenoh's stubs leave close/undeclare untyped)
    sub: Any
    endpoint: str

    def publisher(self, key: str) -> Any:
        """A publisher that never drops (the test counts exactly), once a reader matches."""
        publisher = self.pub.declare_publisher(
            key, congestion_control=zenoh.CongestionControl.BLOCK)
        wait_for(lambda: publisher.matching_status.matching, DEADLINE, f"a reader of {key}")
        return publisher


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    pub: Any = zenoh.open(loopback_config(listen=[endpoint]))
    sub: Any = zenoh.open(loopback_config(connect=[endpoint]))
    yield Net(pub, sub, endpoint)
    sub.close()
    pub.close()


def camera() -> str:
    """A camera name of its own per test, so no test sees another's samples."""
    return f"cam{next(_names)}"


def frame(cam: str, seq: int, *, instance: int = 1, age_s: float = 0.0,
          missed: int = 0) -> tuple[FrameHeader, bytes, bytes]:
    """``(header, attachment, payload)`` of a small gray frame captured ``age_s`` ago."""
    header, payload = make_frame(5, seq, PixelFormat.GRAY, 8, 4, padding=1)
    header = dataclasses.replace(header, camera=cam, seq=seq, instance=instance, missed=missed,
                                 capture_time_ns=time.time_ns() - int(age_s * 1e9))
    return header, frame_attachment(header, len(payload), missed), payload


def put_frame(publisher: Any, cam: str, seq: int, **kwargs: Any) -> bytes:
    """Put a frame; its attachment (to wait for it in the ring)."""
    _, attachment, payload = frame(cam, seq, **kwargs)
    publisher.put(payload, attachment=attachment)
    return attachment


def held(sub: RemoteCore) -> bytes | None:
    """The attachment of the frame sample in the ring of one, if any."""
    ring = sub._ring
    with ring.cond:
        return None if ring.sample is None else bytes(ring.sample[0])


def waiting(sub: RemoteCore) -> bool:
    ring = sub._ring
    with ring.cond:
        return ring.sample is not None or bool(ring.states)


def subscriber(net: Net, cam: str, **kwargs: Any) -> RemoteSubscriber:
    kwargs.setdefault("max_age", 60.0)
    return RemoteSubscriber(cam, session=net.sub, timeout=DEADLINE, **kwargs)


def test_a_reader_that_does_not_read_gets_only_the_newest(net: Net) -> None:
    cam = camera()
    with subscriber(net, cam, rendition="gray") as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        put_frame(pub, cam, 1)
        first = sub.read()
        assert first is not None and first.seq == 1 and first.missed == 0
        _, _, payload = frame(cam, 1)
        assert bytes(first.payload) == payload and first.array.shape == (4, 8)
        for seq in range(2, 7):
            last = put_frame(pub, cam, seq)
        wait_for(lambda: held(sub) == last, DEADLINE, "frame 6 in the ring")
        newest = sub.read()
        assert newest is not None and (newest.seq, newest.missed) == (6, 4)
        stats = sub.stats
        assert (stats.frames, stats.missed, stats.ring_dropped) == (2, 4, 4)
        assert stats.bytes == 2 * len(payload)
        with pytest.raises(TimeoutError):  # frames 2-5 were replaced, not queued
            sub.read(timeout=0)
        assert sub.key == data_key("h1", cam, "gray")


def test_frames_older_than_max_age_are_dropped_and_count_as_missed(net: Net) -> None:
    cam = camera()
    with subscriber(net, cam, max_age=1.0) as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        put_frame(pub, cam, 1)
        assert sub.read() is not None
        old = put_frame(pub, cam, 2, age_s=5.0)
        wait_for(lambda: held(sub) == old, DEADLINE, "the old frame in the ring")
        with pytest.raises(TimeoutError):
            sub.read(timeout=0)
        assert (sub.stats.too_old, sub.stats.frames) == (1, 1)
        put_frame(pub, cam, 3)
        fresh = sub.read()
        assert fresh is not None and (fresh.seq, fresh.missed) == (3, 1)
    cam = camera()  # max_age from the config when not given
    with RemoteSubscriber(cam, session=net.sub, config=RemoteConfig(max_age=2.0)) as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        put_frame(pub, cam, 1, age_s=3.0)
        wait_for(lambda: waiting(sub), DEADLINE, "a sample")
        with pytest.raises(TimeoutError):
            sub.read(timeout=0)
        assert sub.stats.too_old == 1
        put_frame(pub, cam, 2, age_s=0.5)
        assert sub.read(timeout=DEADLINE) is not None


def test_invalid_samples_are_counted_and_never_raised(net: Net) -> None:
    cam = camera()
    header, attachment, payload = frame(cam, 1)
    shm_at = ShmLocation("fbshm-1-2", 64, len(payload), 5)
    shm = encode_header(dataclasses.replace(header, shm=shm_at), 0)
    state_att, _ = state_sample(StateHeader(cam, StreamState.DOWN, instance=1), "x")
    bad: list[tuple[bytes | None, bytes]] = [
        (None, payload), (b"garbage", payload), (attachment[:100], payload),
        (attachment + b"x", payload), (attachment, payload[:-1]), (shm, b""),
        (state_att, b"\xff\xfe"), (bytes(256), payload), (b"\xff" * 300, b""),
    ]
    with subscriber(net, cam) as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        for count, (att, body) in enumerate(bad, 1):
            pub.put(body, attachment=att)
            wait_for(lambda: waiting(sub), DEADLINE, f"bad sample {count}")
            with pytest.raises(TimeoutError):
                sub.read(timeout=0)
            assert sub.stats.invalid == count
        put_frame(pub, cam, 7)
        good = sub.read()
        assert good is not None and good.seq == 7 and sub.stats.frames == 1


def test_states_reach_on_event_and_a_frame_never_overwrites_one(net: Net) -> None:
    cam = camera()
    events: list[StreamEvent] = []
    with subscriber(net, cam, on_event=events.append) as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        put_frame(pub, cam, 4)
        assert sub.read() is not None
        lost = StateHeader(cam, StreamState.RECONNECTING, 4, 2, time.time_ns(), 9, 1)
        back = StateHeader(cam, StreamState.STREAMING, 4, 3, time.time_ns(), 10, 1)
        for state, reason, seq in ((lost, "camera lost: read timeout", 5), (back, "", 6)):
            att, reason_bytes = state_sample(state, reason)
            pub.put(reason_bytes, attachment=att)
            last = put_frame(pub, cam, seq)
        wait_for(lambda: held(sub) == last and len(sub._ring.states) == 2, DEADLINE,
                 "both states and frame 6 waiting")
        newest = sub.read()
        assert newest is not None and (newest.seq, newest.missed) == (6, 1)
        assert [(e.kind, e.camera, e.reason, e.epoch, e.seq, e.instance) for e in events] == [
            ("reconnecting", cam, "camera lost: read timeout", 2, 4, 1),
            ("streaming", cam, "", 3, 4, 1)]
        assert sub.states[cam].kind == "streaming"
        assert (sub.stats.states, sub.stats.ring_dropped, sub.stats.restarts) == (2, 1, 0)


def test_a_new_daemon_instance_is_one_restart(net: Net) -> None:
    cam = camera()
    events: list[StreamEvent] = []
    with subscriber(net, cam, on_event=events.append) as sub:
        pub = net.publisher(data_key("h1", cam, "gray"))
        for seq in (1, 2, 5):
            put_frame(pub, cam, seq, instance=111)
            frame_ = sub.read()
            assert frame_ is not None and frame_.seq == seq
        assert sub.stats.missed == 2 and not events
        att, reason = state_sample(StateHeader(cam, StreamState.STREAMING, 0, 0, 1, 1, 222), "")
        pub.put(reason, attachment=att)
        put_frame(pub, cam, 1, instance=222)
        restarted = sub.read()
        assert restarted is not None and (restarted.seq, restarted.missed) == (1, 0)
        assert restarted.instance == 222
        assert [(e.kind, e.instance) for e in events] == [(RESTART, 222), ("streaming", 222)]
        assert sub.stats.restarts == 1
        put_frame(pub, cam, 3, instance=222)
        after = sub.read()
        assert after is not None and after.missed == 1 and sub.stats.missed == 3
        put_frame(pub, cam, 3, instance=222)  # a duplicate is not a frame
        wait_for(lambda: waiting(sub), DEADLINE, "the duplicate")
        with pytest.raises(TimeoutError):
            sub.read(timeout=0)
        assert sub.stats.frames == 5 and sub.stats.restarts == 1


def test_a_wildcard_selector_keeps_the_first_key(net: Net) -> None:
    cam = camera()
    with subscriber(net, cam) as sub:
        first = net.publisher(data_key("h1", cam, "gray"))
        other = net.publisher(data_key("h2", cam, "gray"))
        put_frame(first, cam, 1)
        one = sub.read()
        assert one is not None and sub.key == data_key("h1", cam, "gray")
        put_frame(other, cam, 50)  # same session and link: it arrives before frame 2
        two = put_frame(first, cam, 2)
        wait_for(lambda: held(sub) == two, DEADLINE, "frame 2 of h1")
        got = sub.read()
        assert got is not None and got.seq == 2
        assert (sub.stats.ring_dropped, sub.stats.missed) == (0, 0)


def test_close_ends_a_waiting_read_and_iteration(net: Net) -> None:
    cam = camera()
    sub = subscriber(net, cam)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(sub.read(timeout=DEADLINE)))
    reader.start()
    sub.close()
    reader.join(DEADLINE)
    assert not reader.is_alive() and results == [None]
    assert list(sub) == []


def test_a_subscriber_with_its_own_session(net: Net) -> None:
    cam = camera()
    with RemoteSubscriber(cam, connect=[net.endpoint], timeout=DEADLINE) as sub:
        put_frame(net.publisher(data_key("h9", cam, "gray")), cam, 3)
        got = next(iter(sub))
        assert got.seq == 3 and got.camera == cam
    assert sub._session is None  # closed with the subscriber


def test_async_read_timeout_and_cancel(net: Net) -> None:
    cam = camera()

    async def until(condition: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                await asyncio.sleep(0.01)  # polling with a deadline, as wait_for does

    async def main() -> None:
        async with AsyncRemoteSubscriber(cam, session=net.sub, max_age=60.0,
                                         timeout=DEADLINE) as sub:
            pub: Any = net.pub.declare_publisher(data_key("h1", cam, "gray"),
                                            congestion_control=zenoh.CongestionControl.BLOCK)
            await until(lambda: pub.matching_status.matching, "a matching reader")
            put_frame(pub, cam, 1)
            got = await sub.read()
            assert got is not None and got.seq == 1
            with pytest.raises(TimeoutError):
                await sub.read(timeout=0.05)
            task = asyncio.create_task(sub.read())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            put_frame(pub, cam, 2)  # the subscriber is still usable
            got = await sub.read()
            assert got is not None and (got.seq, got.missed) == (2, 0)
            for seq in (3, 4, 5):
                last = put_frame(pub, cam, seq)
            await until(lambda: held(sub) == last, "frame 5 in the ring")
            async for newest in sub:
                assert (newest.seq, newest.missed) == (5, 2)
                break
            assert sub.stats.ring_dropped == 2
            pending = asyncio.create_task(sub.read())
            await asyncio.sleep(0)
            sub.close()
            assert await pending is None

    asyncio.run(asyncio.wait_for(main(), 60))


# -- "newest frame now" ----------------------------------------------------------------------


class Answer:
    """A plain queryable standing in for a bridge: answers each query with ``reply``."""

    def __init__(self, net: Net, key: str, reply: Callable[[Any], None]) -> None:
        self.parameters: list[str] = []
        self._reply = reply
        self.queryable: Any = net.pub.declare_queryable(key, self._on_query)

    def _on_query(self, query: Any) -> None:
        self.parameters.append(str(query.parameters))
        self._reply(query)


def test_request_remote_frame(net: Net) -> None:
    cam = camera()
    key = data_key("h1", cam, "gray")
    header, attachment, payload = frame(cam, 42, missed=3)
    answer = Answer(net, key, lambda q: q.reply(key, payload, attachment=attachment))
    got = request_remote_frame(cam, session=net.sub, rendition="gray", newer_than=41,
                               max_age=0.5, timeout=DEADLINE)
    assert got.header == header and bytes(got.payload) == payload and got.missed == 3
    assert answer.parameters[-1] == "timeout=10;newer_than=41;max_age=0.5"
    again = request_remote_frame(cam, connect=[net.endpoint], timeout=DEADLINE)
    assert again.seq == 42
    answer.queryable.undeclare()


@pytest.mark.parametrize(("reply", "error", "detail"), [
    (lambda q: q.reply_err("frame_too_old: no frame newer than 41"), "frame_too_old",
     "no frame newer than 41"),
    (lambda q: q.reply_err("busy"), "busy", ""),
    (lambda q: q.reply(q.key_expr, b"pixels", attachment=b"garbage"), "invalid reply",
     "attachment of 7 bytes: no framebus prefix"),
])
def test_a_refused_request_is_a_frame_request_error(
        net: Net, reply: Callable[[Any], None], error: str, detail: str) -> None:
    cam = camera()
    answer = Answer(net, data_key("h1", cam, "gray"), reply)
    with pytest.raises(FrameRequestError) as info:
        request_remote_frame(cam, session=net.sub, timeout=DEADLINE)
    assert (info.value.status, info.value.error, info.value.detail) == (503, error, detail)
    answer.queryable.undeclare()


def test_a_state_reply_is_not_a_frame(net: Net) -> None:
    cam = camera()
    key = data_key("h1", cam, "gray")
    att, reason = state_sample(StateHeader(cam, StreamState.DOWN, instance=1), "auth failed")
    answer = Answer(net, key, lambda q: q.reply(key, reason, attachment=att))
    with pytest.raises(FrameRequestError, match="a STATE message"):
        request_remote_frame(cam, session=net.sub, timeout=DEADLINE)
    answer.queryable.undeclare()


def test_nobody_answering_is_a_timeout(net: Net) -> None:
    with pytest.raises(TimeoutError, match="no host answered"):
        request_remote_frame(camera(), session=net.sub, timeout=0.3)


def test_a_reload_that_changes_remote_reopens_zenoh_cameras(net: Net, tmp_path: Path) -> None:
    """An operator who fixes ``remote.connect`` and reloads gets the camera streaming: the
    running zenoh: camera must not keep its session to the old endpoint."""
    cam = camera()

    def config(endpoint: str) -> Config:
        return parse_config({
            "fifo_dir": str(tmp_path), "http": {"enabled": False},
            "cameras": {"relay": {**FAST, "url": f"zenoh:h1/{cam}/gray", "open_timeout": "1s"}},
            "remote": {"connect": [endpoint]}})

    stop = threading.Event()
    pub = net.pub.declare_publisher(data_key("h1", cam, "gray"),
                                    congestion_control=zenoh.CongestionControl.DROP)

    def feed() -> None:  # a camera host's bridge at 50 fps
        for seq in itertools.count(1):
            if stop.wait(0.02):
                return
            put_frame(pub, cam, seq)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    daemon = Daemon(config(f"tcp/127.0.0.1:{free_port()}"), {"relay": None})  # nobody there
    daemon.start()
    try:
        relay = daemon.cameras.cameras["relay"]
        wait_for(lambda: relay.state is CameraState.BACKOFF and "no frame from" in relay.reason,
                 DEADLINE, "the camera backing off without frames")
        daemon.reconcile(config(net.endpoint), {"relay": None})
        wait_for(lambda: daemon.cameras.cameras["relay"].state is CameraState.STREAMING,
                 DEADLINE, "the camera streaming through the endpoint the reload named")
    finally:
        stop.set()
        daemon.stop()
        feeder.join(DEADLINE)
        pub.undeclare()


def test_a_key_that_is_not_a_framebus_data_key_is_never_kept(net: Net) -> None:
    """A wildcard selector (no host) matches any first chunk zenoh allows; a reader must not
    lock onto one that is not a host name (PROTOCOL.md section 15)."""
    cam = camera()
    with subscriber(net, cam) as sub:
        bad = net.publisher(f"framebus/-h1/{cam}/gray")
        put_frame(bad, cam, 1)
        wait_for(lambda: sub._ring.bad_keys == 1, DEADLINE, "the bad key counted")
        good = net.publisher(data_key("h1", cam, "gray"))
        put_frame(good, cam, 2)
        frame = sub.read()
        assert frame is not None and frame.seq == 2
        assert sub.key == data_key("h1", cam, "gray") and sub.stats.invalid == 1


def test_the_bridge_session_refuses_a_query_larger_than_1_mib_and_goes_on(net: Net) -> None:
    """A peer cannot make the bridge hold a huge message (zenoh's default is 1 GiB): the
    oversized query is dropped unanswered and the link keeps serving normal ones."""
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    bridge: Any = open_session(RemoteConfig(listen=[endpoint]), publisher=True)
    peer: Any = zenoh.open(loopback_config(connect=[endpoint]))
    seen: list[int] = []
    queryable = bridge.declare_queryable("framebus/h1/big/q", lambda q: (
        seen.append(len(q.payload) if q.payload is not None else 0), q.reply(q.key_expr, b"ok")))
    try:
        def answers(**kwargs: Any) -> list[bytes]:
            return [r.ok.payload.to_bytes() for r in peer.get("framebus/h1/big/q", timeout=1.0,
                                                              **kwargs) if r.ok is not None]
        wait_for(lambda: answers() == [b"ok"], DEADLINE, "the small query answered")
        assert answers(payload=bytes(2 << 20)) == []
        assert answers(payload=bytes(1000)) == [b"ok"]
        assert 2 << 20 not in seen
    finally:
        queryable.undeclare()
        peer.close()
        bridge.close()
