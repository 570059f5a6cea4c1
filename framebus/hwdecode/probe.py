"""What ``framebus check-config`` says about hardware decoding on this host: warnings from
cheap checks always, and with ``--probe`` the result of opening every device for real."""

from __future__ import annotations

from collections.abc import Iterable

import av

from framebus.hwdecode.choice import _Devices
from framebus.hwdecode.settings import HwaccelSettings
from framebus.hwdecode.support import AUTO_ORDER, missing

# the decoders each kind drives, for the probe's "decodes ..." list
_DECODERS = {"cuda": ("h264", "hevc", "av1", "vp9", "mjpeg"),
             "vaapi": ("h264", "hevc", "av1", "vp9", "mjpeg"),
             "qsv": ("h264_qsv", "hevc_qsv", "av1_qsv", "vp9_qsv", "mjpeg_qsv")}


def host_warnings(cameras: Iterable[tuple[str, HwaccelSettings]]) -> list[str]:
    """One warning per camera whose hardware decoding cannot work on this host, saying what
    the camera will do instead (decode in software, or not stream when required)."""
    warnings = []
    for name, settings in cameras:
        kind = settings.hwaccel
        if kind == "none":
            continue
        kinds = AUTO_ORDER if kind == "auto" else (kind,)
        device = settings.hwaccel_device if kind != "auto" else None
        problems = [(k, missing(k, device)) for k in kinds]
        if any(problem is None for _, problem in problems):
            continue
        outcome = ("the camera will not stream (hwaccel_required: true)"
                   if settings.hwaccel_required else "the camera will decode in software")
        why = "; ".join(f"{k}: {problem}" for k, problem in problems)
        warnings.append(f"cameras.{name}.hwaccel: {kind} cannot work on this host ({why}): "
                        f"{outcome}")
    return warnings


def _decodes(kind: str) -> list[str]:
    names = []
    for decoder in _DECODERS[kind]:
        if decoder not in av.codecs_available:
            continue
        codec = av.Codec(decoder, "r")
        if any(config.device_type.name == kind and config.is_supported
               for config in codec.hardware_configs):
            names.append(decoder.removesuffix(f"_{kind}"))
    return names


def probe_lines(cameras: Iterable[tuple[str, HwaccelSettings]]) -> list[str]:
    """Open every device type (and every device a camera names) and say what works."""
    wanted: dict[tuple[str, str | None], list[str]] = {(kind, None): [] for kind in AUTO_ORDER}
    for name, settings in cameras:
        if settings.hwaccel in AUTO_ORDER:
            wanted.setdefault((settings.hwaccel, settings.hwaccel_device), []).append(name)
        elif settings.hwaccel == "auto":
            for kind in AUTO_ORDER:
                wanted[(kind, None)].append(name)
    devices = _Devices()  # a fresh cache: the probe opens every device now
    lines = []
    for (kind, device), users in wanted.items():
        where = f"{kind} ({device})" if device else kind
        problem, _ = devices.problem(kind, device)
        if problem is None:
            result = f"ok, decodes {', '.join(_decodes(kind)) or 'nothing'}"
        else:
            result = f"unavailable: {problem}"
        used = f" [cameras: {', '.join(users)}]" if users else ""
        lines.append(f"hwaccel {where}: {result}{used}")
    return lines
