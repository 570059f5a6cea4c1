"""The shm memory bound with readers that never read and subscribers that come and go, and
joins that cannot get a bigger segment: the real store and fan-out loop, real segment files,
SIGSTOPped reader processes that check every pixel, a real small tmpfs."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shmkit import PatternPublisher, PatternReader, mounted_tmpfs, running_loop
from waiting import wait_for

from framebus.fanout import FanoutLoop, SubscriberSpec
from framebus.store import Rendition
from framebus.wire import PixelFormat

BGR = Rendition(PixelFormat.BGR24)
SLOT = 61440  # a 160x120 bgr24 frame (57600 bytes) and its stamp, in whole pages


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("fbshm-"))


def spec(name: str, directory: Path) -> SubscriberSpec:
    return SubscriberSpec(name, "cam", BGR, directory / f"{name}.fifo", transport="shm")


def documented_bound(seats: int) -> int:
    """PROTOCOL.md section 12: a rendition's segment files of one frame size hold at most
    3 * (2s - 1) + 2 * (log2(s) + 1) slots, in at most log2(s) + 1 files."""
    files = int(math.log2(seats)) + 1
    return files * 4096 + (3 * (2 * seats - 1) + 2 * files) * SLOT


def failures(loop: FanoutLoop, reason: str) -> int:
    return sum(state.failures[reason] for _, state in loop.exporter.states())


@pytest.mark.parametrize("joiners_stop", [False, True], ids=["live-joiners", "stuck-joiners"])
def test_stopped_readers_and_ten_joins_stay_within_the_documented_bound(
    tmp_path: Path, joiners_stop: bool
) -> None:
    readers: list[PatternReader] = []
    with running_loop() as (store, loop), PatternPublisher(store, period_s=0.01):
        try:
            for i in range(11):  # one reader, then ten more subscribers of the rendition
                loop.add(spec(f"s{i}", tmp_path))
                readers.append(PatternReader(tmp_path / f"s{i}.fifo"))
                readers[-1].wait_frames(10)
                if i == 0 or joiners_stop:
                    readers[-1].proc.send_signal(signal.SIGSTOP)  # never reads again
            time.sleep(0.5)  # frames keep coming: replaced segments are reaped if they can be
            files = segments(tmp_path)
            total = sum(p.stat().st_size for p in files)
            print(f"\n{len(files)} segment files, {total} bytes ({total / 2**20:.1f} MiB)")
            assert total <= documented_bound(16), [p.stat().st_size for p in files]
            assert len(files) <= 5
            assert failures(loop, "no_free_slot") == 0
        finally:
            for reader in readers:
                reader.proc.send_signal(signal.SIGCONT)
        for reader in readers:
            result = reader.stop()
            assert (result["bad"], result["not_intact"]) == (0, 0), result


def test_a_join_within_the_two_seconds_of_a_removed_readers_last_frame_skips_nothing(
    tmp_path: Path,
) -> None:
    with running_loop() as (store, loop), PatternPublisher(store, period_s=0.005):
        loop.add(spec("a", tmp_path))
        a = PatternReader(tmp_path / "a.fifo")
        a.wait_frames(20)
        a.proc.send_signal(signal.SIGSTOP)  # holds one frame, one unread: both parked at remove
        loop.remove("a")
        loop.add(spec("b", tmp_path))  # within the 2 s: the parked pins still count
        b = PatternReader(tmp_path / "b.fifo")
        b.wait_frames(3)
        b.proc.send_signal(signal.SIGSTOP)  # b pins its 3 while a's 2 are still parked
        time.sleep(0.5)
        assert failures(loop, "no_free_slot") == 0
        a.proc.send_signal(signal.SIGCONT)
        b.proc.send_signal(signal.SIGCONT)
        b.wait_frames(b.progress["frames"] + 50)
        assert b.stop()["bad"] == 0
        a.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs: one 64x48 bgr24 segment for one subscriber (64 KiB) fits, the one for
    two (100 KiB) does not."""
    with mounted_tmpfs(tmp_path / "small", "96k") as where:
        yield where


def test_a_join_that_does_not_fit_fails_only_the_joiner_and_is_retried(
    small_tmpfs: Path,
) -> None:
    with running_loop() as (store, loop), PatternPublisher(store, size=(64, 48),
                                                           period_s=0.01):
        loop.add(spec("a", small_tmpfs))
        a = PatternReader(small_tmpfs / "a.fifo")
        a.wait_frames(20)
        loop.add(spec("b", small_tmpfs))
        b = PatternReader(small_tmpfs / "b.fifo")
        joiner = loop.subscribers["b"]
        wait_for(lambda: "does not fit" in joiner.error, 30, "the joiner's no-space error")
        seen = a.progress["frames"]
        a.wait_frames(seen + 50, timeout=30)  # the subscriber already served carries on
        assert loop.subscribers["a"].error == "" and failures(loop, "no_space") >= 1
        assert b.progress["frames"] == 0 and joiner.outbox.stats.sent == 0
        loop.remove("a")  # its seat frees (after its 2 s): the joiner is served, same segment
        b.wait_frames(20, timeout=30)
        assert joiner.error == "" and len(segments(small_tmpfs)) == 1
        for result in (a.stop(), b.stop()):
            assert result["bad"] == 0, result
