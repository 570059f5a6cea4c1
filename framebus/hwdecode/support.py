"""What this host can offer for hardware decoding, found without opening a device.

Cheap checks (the FFmpeg build, device nodes, the driver library), so ``check-config`` can
warn on any host and a fallback can say *why* in words a person acts on: FFmpeg's own error
for a CUDA device without a driver is "Operation not permitted"."""

from __future__ import annotations

import ctypes.util
import functools
import os
from pathlib import Path

import av.codec.hwaccel

DEFAULT_RENDER_NODE = "/dev/dri/renderD128"
NVIDIA_CONTROL = "/dev/nvidiactl"
# a kind's name is FFmpeg's name of its device type and of the pixel format of the frames
# a decoder on it produces (cuda, vaapi, qsv)
AUTO_ORDER = ("cuda", "vaapi", "qsv")


@functools.cache
def built_device_types() -> tuple[str, ...]:
    """The hardware device types the loaded FFmpeg was built with."""
    return tuple(av.codec.hwaccel.hwdevices_available())


@functools.cache
def _library(name: str) -> str | None:
    return ctypes.util.find_library(name)


def render_node(device: str | None) -> str:
    """The DRM render node a VAAPI/QSV device opens (FFmpeg's default: the first one)."""
    return device or DEFAULT_RENDER_NODE


def missing(kind: str, device: str | None) -> str | None:
    """Why ``kind`` (cuda, vaapi, qsv) cannot work on this host; None when it may (only
    opening the device tells for sure: see ``choice``)."""
    if kind not in built_device_types():
        have = ", ".join(built_device_types()) or "none"
        return (f"{kind} is not built into this PyAV's FFmpeg (it has: {have}); install a "
                f"PyAV built with {kind}")
    if kind == "cuda":
        if not Path(NVIDIA_CONTROL).exists():
            return f"no NVIDIA device ({NVIDIA_CONTROL} does not exist: driver not loaded?)"
        if _library("cuda") is None:
            return "the NVIDIA driver's libcuda is not installed"
        if _library("nvcuvid") is None:
            return "the NVIDIA driver's libnvcuvid (NVDEC) is not installed"
        return None
    node = render_node(device)
    if not Path(node).exists():
        return f"{node} does not exist (no GPU with a DRM render node, or not in this sandbox)"
    if not os.access(node, os.R_OK | os.W_OK):
        return f"no permission on {node} (add the user to group render)"
    return None
