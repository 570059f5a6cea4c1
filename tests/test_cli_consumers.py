"""`framebus watch` and `framebus dump` as real processes reading a real FIFO."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from test_client_fifo import start_writer

from framebus.imaging import encode_image, to_video_frame
from framebus.wire import PixelFormat

from framegen import make_frame  # isort: skip


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framebus", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_dump_saves_decodable_images_of_the_right_size(tmp_path: Path) -> None:
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo)
    writer = start_writer(fifo, 21, 0, 3, specs="bgr24:64x48,yuv420p:33x17:2,nv12:16x8")
    out = tmp_path / "out"
    result = run_cli("dump", str(fifo), "--out", str(out), "--count", "3", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["cam-0-00000000.png", "cam-0-00000001.png",
                                       "cam-0-00000002.png"]
    sizes = []
    for path in files:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            sizes.append((frame.width, frame.height))
    assert sizes == [(64, 48), (33, 17), (16, 8)]
    writer.wait(timeout=20)


def test_png_of_a_bgr_frame_is_lossless() -> None:
    header, payload = make_frame(3, 3, PixelFormat.BGR24, 9, 7, padding=2)
    png = encode_image(to_video_frame(header, memoryview(payload)), "png")
    decoded = next(av.open(__import__("io").BytesIO(png)).decode(video=0))
    got = decoded.to_ndarray(format="bgr24")
    src = np.ndarray((7, 9, 3), np.uint8, payload, 0, (9 * 3 + 2, 3, 1))
    assert np.array_equal(got, src)


def test_watch_prints_per_camera_fps_size_and_latency(tmp_path: Path) -> None:
    fifo = tmp_path / "w.fifo"
    os.mkfifo(fifo)
    writer = start_writer(fifo, 22, 0, 30, specs="gray:320x240")
    result = run_cli("watch", str(fifo), "--count", "30", "--duration", "30")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("cam-1")]
    assert lines, result.stdout
    assert "320x240 gray" in lines[-1] and "fps" in lines[-1] and "latency p50" in lines[-1]
    writer.wait(timeout=20)


def test_watch_reads_several_fifos_with_one_line_per_camera(tmp_path: Path) -> None:
    first, second = tmp_path / "a.fifo", tmp_path / "b.fifo"
    os.mkfifo(first)
    os.mkfifo(second)
    writers = [start_writer(first, 22, 0, 30, specs="gray:320x240"),
               start_writer(second, 23, 0, 30, specs="bgr24:64x48")]
    result = run_cli("watch", str(first), str(second), "--count", "60", "--duration", "30")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    cam1 = [line for line in lines if line.startswith("cam-1 ")]
    cam2 = [line for line in lines if line.startswith("cam-2 ")]
    assert cam1 and cam2, result.stdout
    assert "320x240 gray" in cam1[-1] and "latency p50" in cam1[-1]
    assert "64x48 bgr24" in cam2[-1] and "latency p50" in cam2[-1]
    for writer in writers:
        writer.wait(timeout=20)


def test_watch_of_a_path_that_is_not_a_fifo_fails_with_one_line(tmp_path: Path) -> None:
    fifo, plain = tmp_path / "ok.fifo", tmp_path / "plain"
    os.mkfifo(fifo)
    plain.write_text("not a fifo")
    result = run_cli("watch", str(fifo), str(plain), "--duration", "20")
    assert result.returncode == 1
    assert "is not a FIFO" in result.stderr and "Traceback" not in result.stderr


def test_bad_usage_exits_2_with_one_line() -> None:
    result = run_cli("dump", "/nonexistent.fifo", "--count", "0", "--out", "/tmp/x")
    assert result.returncode == 2
    assert "expected a positive integer" in result.stderr
