"""The shm transport with the real store and fan-out loop, real segment files on disk and real
reader processes that check every pixel of every frame against its seq."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fanoutkit import ReaderProcess
from shmkit import PatternPublisher, PatternReader, mounted_tmpfs, running_loop
from waiting import wait_for

from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.shm import segment_mode
from framebus.slots import capacity
from framebus.store import Rendition
from framebus.wire import PixelFormat

BGR = Rendition(PixelFormat.BGR24)


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("fbshm-"))


def shm_spec(name: str, directory: Path, **options: object) -> SubscriberSpec:
    return SubscriberSpec(name, "cam", BGR, directory / f"{name}.fifo", transport="shm",
                          **options)  # type: ignore[arg-type]


def pinned(loop: FanoutLoop) -> int:
    return sum(s.segment.pool.pinned for _, s in loop.exporter.states() if s.segment)


def test_a_thousand_frames_every_pixel_right_while_fifo_readers_share_the_loop(
    tmp_path: Path,
) -> None:
    with running_loop() as (store, loop):
        for i in range(3):
            loop.add(shm_spec(f"shm{i}", tmp_path))
        loop.add(SubscriberSpec("fifo", "cam", BGR, tmp_path / "fifo.fifo"))
        readers = [PatternReader(tmp_path / f"shm{i}.fifo") for i in range(3)]
        fifo_reader = PatternReader(tmp_path / "fifo.fifo")
        with PatternPublisher(store, size=(320, 240), period_s=0.001):
            for reader in [*readers, fifo_reader]:
                reader.wait_frames(1000, timeout=120)
            state = loop.exporter.states()[0][1]
            assert state.segment is not None
            assert state.segment.pool.count == capacity(3)
            assert state.exported > 0 and not any(store.conversions.values())  # native
        results = [r.stop() for r in readers]
        fifo_result = fifo_reader.stop()
    for result in results:
        assert result["frames"] >= 1000 and result["shm"] is True
        assert (result["bad"], result["not_intact"], result["stale"]) == (0, 0, 0), result
        assert result["writeable"] is False  # a read-only view of a read-only mapping
        assert result["segments"] == 1  # one mmap for a thousand frames
    assert fifo_result["bad"] == 0 and fifo_result["shm"] is False
    assert segments(tmp_path) == []  # unlinked when the loop stopped


def test_a_stopped_reader_pins_at_most_three_slots_and_costs_others_nothing(
    tmp_path: Path,
) -> None:
    with running_loop() as (store, loop):
        for name in ("fast", "stopped"):
            loop.add(shm_spec(name, tmp_path))
        fast, stopped = (PatternReader(tmp_path / f"{n}.fifo") for n in ("fast", "stopped"))
        with PatternPublisher(store):
            fast.wait_frames(50)
            stopped.wait_frames(50)
            stopped.proc.send_signal(19)  # SIGSTOP
            sub = loop.subscribers["stopped"]
            before = fast.progress["frames"]
            fast.wait_frames(before + 1000)
            assert sub.pinned_slots <= 3
            assert pinned(loop) <= capacity(2)
            dropped = sub.outbox.stats.dropped["slow_reader"]
            assert dropped > 500  # newest wins: it misses frames, nobody waits for it
            stopped.proc.send_signal(18)  # SIGCONT: it resumes with recent frames, all intact
            resumed = stopped.progress["frames"]
            stopped.wait_frames(resumed + 50)
        for result in (fast.stop(), stopped.stop()):
            assert (result["bad"], result["not_intact"], result["stale"]) == (0, 0, 0), result


def test_a_reader_killed_mid_message_releases_what_it_pinned(tmp_path: Path) -> None:
    with running_loop() as (store, loop):
        for name in ("other", "victim"):
            loop.add(shm_spec(name, tmp_path))
        other = PatternReader(tmp_path / "other.fifo")
        victim = PatternReader(tmp_path / "victim.fifo", "--partial", "100")
        with PatternPublisher(store):
            wait_for(lambda: victim.records, 30, "the victim's partial read")
            sub = loop.subscribers["victim"]
            wait_for(lambda: sub.pinned_slots >= 1, 30, "the victim to pin a slot")
            victim.proc.kill()
            victim.proc.wait(10)
            wait_for(lambda: not sub.connected and sub.pinned_slots == 0, 30,
                     "the loop to notice the reader left and release its slots")
            assert sub.disconnects == 1
            before = other.progress["frames"]
            other.wait_frames(before + 200)
        result = other.stop()
    assert (result["bad"], result["not_intact"]) == (0, 0)


def test_a_resolution_change_makes_a_new_segment_and_unlinks_the_old(tmp_path: Path) -> None:
    with running_loop() as (store, loop):
        loop.add(shm_spec("a", tmp_path))
        reader = PatternReader(tmp_path / "a.fifo")
        with PatternPublisher(store, size=(64, 48)) as publisher:
            reader.wait_frames(50)
            first = segments(tmp_path)
            assert len(first) == 1
            publisher.resize((97, 33))  # odd sizes: line padding in PyAV's planes
            wait_for(lambda: reader.progress.get("size") == [97, 33], 30, "the new size")
            reader.wait_frames(reader.progress["frames"] + 50)
            now = segments(tmp_path)
            assert len(now) == 1 and now != first  # the old one is unlinked, not reused
        result = reader.stop()
    assert (result["bad"], result["not_intact"], result["stale"]) == (0, 0, 0), result
    assert result["segments"] == 2


def test_segment_permissions_follow_the_fifo_and_readers_cannot_write(tmp_path: Path) -> None:
    with running_loop() as (store, loop):
        loop.add(shm_spec("a", tmp_path, mode=0o640))
        with PatternPublisher(store):
            reader = ReaderProcess(tmp_path / "a.fifo", "--count", "5")
            assert reader.finish(60) == 0
            (segment,) = segments(tmp_path)
            assert stat.S_IMODE(segment.stat().st_mode) == segment_mode(0o640) == 0o640
            with open(segment, "rb") as f, contextlib.suppress(ValueError):
                import mmap

                view = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                with pytest.raises(TypeError):
                    view[0:1] = b"x"  # a reader's mapping cannot change the daemon's frames


def test_more_subscribers_than_the_segment_was_sized_for_make_a_bigger_one(
    tmp_path: Path,
) -> None:
    with running_loop() as (store, loop):
        loop.add(shm_spec("a", tmp_path))
        a = PatternReader(tmp_path / "a.fifo")
        with PatternPublisher(store):
            a.wait_frames(20)
            loop.add(shm_spec("b", tmp_path))
            b = PatternReader(tmp_path / "b.fifo")
            b.wait_frames(20)
            a.wait_frames(a.progress["frames"] + 20)
            state = loop.exporter.states()[0][1]
            assert state.segment is not None and state.segment.pool.count == capacity(2)
            loop.remove("a")
            loop.remove("b")
            wait_for(lambda: not loop.exporter.states(), 30, "the key to be forgotten")
            # unlinked once the last pins go (the readers' last frames, parked for 2 s)
            wait_for(lambda: segments(tmp_path) == [], 30, "the segment to be unlinked")
        for result in (a.stop(), b.stop()):
            assert (result["bad"], result["not_intact"], result["stale"]) == (0, 0, 0)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "256k") as where:
        yield where


def test_a_tmpfs_too_small_fails_that_subscriber_clearly_and_no_one_else(
    tmp_path: Path, small_tmpfs: Path,
) -> None:
    with running_loop() as (store, loop):
        loop.add(shm_spec("big", small_tmpfs))  # 5 slots of 320x240 bgr24: over 1 MiB
        loop.add(shm_spec("fine", tmp_path))
        fine = PatternReader(tmp_path / "fine.fifo")
        big = PatternReader(small_tmpfs / "big.fifo")
        with PatternPublisher(store, size=(320, 240)):
            fine.wait_frames(100)
            sub = loop.subscribers["big"]
            wait_for(lambda: "does not fit" in sub.error, 30, "the no-space error")
            assert str(small_tmpfs) in sub.error and "MiB" in sub.error
            state = loop.exporter.state(sub.shm_keys["cam"])
            assert state is not None and state.failures["no_space"] >= 1
            assert sub.outbox.stats.sent == 0 and segments(small_tmpfs) == []
        assert big.stop()["frames"] == 0
        assert fine.stop()["bad"] == 0


def test_switching_transport_keeps_the_reader_connected_and_its_stream_whole(
    tmp_path: Path,
) -> None:
    fifo_spec = SubscriberSpec("a", "cam", BGR, tmp_path / "a.fifo", pipe_size=65536)
    with running_loop() as (store, loop):
        loop.add(fifo_spec)
        reader = PatternReader(tmp_path / "a.fifo", "--every", "5")
        with PatternPublisher(store, size=(320, 240)):  # frames larger than the pipe
            reader.wait_frames(30)
            for spec in (shm_spec("a", tmp_path), fifo_spec, shm_spec("a", tmp_path)):
                loop.add(spec)  # a reload that changed the transport
                wanted = spec.transport == "shm"
                wait_for(lambda w=wanted: reader.progress.get("shm") is w, 30,  # type: ignore[misc]
                         f"frames over {spec.transport}")
                reader.wait_frames(reader.progress["frames"] + 30)
            sub = loop.subscribers["a"]
            assert sub.connects == 1 and sub.disconnects == 0  # adopted, never reopened
            assert sub.pinned_slots <= 3
        result = reader.stop()
    assert (result["bad"], result["not_intact"], result["stale"]) == (0, 0, 0), result
