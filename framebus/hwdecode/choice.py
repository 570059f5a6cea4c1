"""Which decoder a camera session runs, decided before ``av.open`` and checked after the first
frame.

PyAV creates the hardware device inside ``av.open``; a device that cannot be created there
raised out of the open (EPERM for CUDA without a driver), so the camera backed off and retried
forever with "Operation not permitted". Here the device is opened first, once per process and
device (a working one is remembered; a failing one is tried again after ``RETRY_S``), so the
open's own errors are the camera's again, and a device that cannot work means software
decoding with a reason, or, with ``hwaccel_required``, a refusal with that reason.

The device kinds reach FFmpeg differently: ``cuda`` and ``vaapi`` are hwaccels of FFmpeg's
native decoders (``hw_device_ctx`` on the stream's codec context, what ``av.open(hwaccel=)``
does); ``qsv`` is a separate decoder (``h264_qsv``) that framebus opens itself beside the
demuxer, because the native decoders have no QSV configuration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.error
from av.codec.hwaccel import HWAccel
from av.video.codeccontext import VideoCodecContext

from framebus.hwdecode.settings import HwaccelSettings
from framebus.hwdecode.support import AUTO_ORDER, built_device_types, missing

RETRY_S = 60.0  # a device that failed to open is tried again after this long
_PROBE_CODEC = {"cuda": "h264", "vaapi": "h264", "qsv": "h264_qsv"}


class HardwareRequired(Exception):
    """``hwaccel_required`` and the hardware cannot decode this camera; ``label`` is the
    metric reason."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.label = label


@dataclass(frozen=True)
class Choice:
    """One session's decoder: a device ``kind`` (None: software) and, when software although
    hardware was asked for, why (``fallback``) and its metric reason (``label``)."""

    requested: str
    kind: str | None = None
    device: str | None = None
    fallback: str = ""
    label: str = ""

    def hwaccel(self) -> HWAccel | None:
        """What ``av.open`` gets: the hwaccel of a native decoder (cuda, vaapi)."""
        if self.kind not in ("cuda", "vaapi"):
            return None
        return HWAccel(device_type=self.kind, device=self.device,
                       allow_software_fallback=True)



def _open_device(kind: str, device: str | None) -> str | None:
    """Create (and free) a device context of ``kind``; None, or why it failed."""
    codec = av.Codec(_PROBE_CODEC[kind], "r")
    try:
        HWAccel(device_type=kind, device=device).create(codec)
    except (av.error.FFmpegError, OSError, NotImplementedError, ValueError) as exc:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"opening the device failed: {text}"
    return None


class _Devices:
    """Device open results per (kind, device), shared by every camera of the process."""

    def __init__(self, opener: Callable[[str, str | None], str | None] = _open_device) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str | None], tuple[str | None, float]] = {}

    def problem(self, kind: str, device: str | None) -> tuple[str | None, str]:
        """(why ``kind`` cannot be used, the metric reason), or (None, "")."""
        if kind not in built_device_types():
            return missing(kind, device), "not_built"
        with self._lock:  # one camera opens a device at a time: CUDA contexts are costly
            now = time.monotonic()
            known = self._known.get((kind, device))
            if known is None or (known[0] is not None and now - known[1] >= RETRY_S):
                known = (self._opener(kind, device), now)
                self._known[(kind, device)] = known
        if known[0] is None:
            return None, ""
        # the cheap diagnosis says what to do; only opening tells (a driver in a container
        # may sit where those checks do not look), so it never decides on its own
        absent = missing(kind, device)
        return (f"{absent} ({known[0]})" if absent else known[0]), (
            "unavailable" if absent else "device_failed")


DEVICES = _Devices()


def choose(settings: HwaccelSettings, devices: _Devices = DEVICES,
           broken: str | None = None) -> Choice:
    """The decoder for a session (software while the camera's device is ``broken``); raises
    HardwareRequired instead of falling back when the settings require hardware."""
    requested = settings.hwaccel
    if requested == "none":
        return Choice("none")
    if broken is not None:
        if settings.hwaccel_required:
            raise HardwareRequired(broken, "decode_failed")
        return Choice(requested, None, settings.hwaccel_device, broken, "decode_failed")
    kinds = AUTO_ORDER if requested == "auto" else (requested,)
    reasons: list[str] = []
    label = ""
    for kind in kinds:
        device = settings.hwaccel_device if requested != "auto" else None
        why, why_label = devices.problem(kind, device)
        if why is None:
            return Choice(requested, kind, device)
        reasons.append(f"{kind} unavailable: {why}")
        label = label or why_label
    fallback = "; ".join(reasons)
    if settings.hwaccel_required:
        raise HardwareRequired(fallback, label)
    return Choice(requested, None, settings.hwaccel_device, fallback, label)


def decoder_for(choice: Choice, own: VideoCodecContext) -> tuple[VideoCodecContext, str | None]:
    """The codec context to decode the stream with: its ``own`` (software, or cuda/vaapi as
    ``av.open`` set it up), or for qsv a separate ``<codec>_qsv`` decoder given the stream's
    extradata; with why not when qsv cannot take this codec (then ``own``, in software)."""
    if choice.kind != "qsv":
        return own, None
    name = f"{own.name}_qsv"
    if name not in av.codecs_available:
        return own, f"qsv cannot decode {own.name}"
    try:
        return separate_decoder(own, name, HWAccel(
            device_type="qsv", device=choice.device, allow_software_fallback=True)), None
    except (av.error.FFmpegError, OSError, NotImplementedError, ValueError) as exc:
        return own, f"qsv cannot decode {own.name}: {exc}"


def separate_decoder(own: VideoCodecContext, name: str,
                     hwaccel: HWAccel | None) -> VideoCodecContext:
    """Decoder ``name`` for the stream ``own`` belongs to, beside the demuxer: the stream's
    parameter sets (SPS/PPS from the SDP or the container) travel in its extradata."""
    context = av.CodecContext.create(name, "r", hwaccel=hwaccel)
    assert isinstance(context, VideoCodecContext)
    context.extradata = own.extradata
    context.width, context.height = own.width, own.height
    return context


def on_device(choice: Choice, context: VideoCodecContext) -> str | None:
    """After a frame was decoded: None when ``context`` decodes on ``choice``'s device, else
    why not (FFmpeg found no hardware configuration for this codec, or its ``get_format``
    fell back to software: a profile or size the hardware refuses)."""
    if choice.kind is None:
        return None
    if not context.is_hwaccel:
        return f"{choice.kind} cannot decode {context.name}"
    fmt = context.format
    if fmt is None or fmt.name != choice.kind:
        return (f"the {choice.kind} decoder refused this {context.name} stream (a profile, "
                "size or format the hardware does not take)")
    return None
