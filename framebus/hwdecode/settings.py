"""The ``hwaccel`` settings of a camera (and of ``defaults``), validated without PyAV."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

Kind = Literal["none", "auto", "cuda", "vaapi", "qsv"]
KINDS: tuple[str, ...] = ("none", "auto", "cuda", "vaapi", "qsv")
DEVICE_KINDS = ("cuda", "vaapi", "qsv")  # the kinds that name one device type
_CUDA_INDEX = re.compile(r"[0-9]{1,3}")


def _none_is_none(value: object) -> object:
    """``hwaccel: null`` (and the old ``hwaccel:`` left empty) mean software decoding."""
    return "none" if value is None else value


HwaccelKind = Annotated[Kind, BeforeValidator(_none_is_none)]


def device_problem(kind: str, device: str | None) -> str | None:
    """Why ``device`` cannot name a device of ``kind``; None when it can (or is unset)."""
    if device is None:
        return None
    if kind in ("none", "auto"):
        return f"names a device, but hwaccel is {kind!r} (set hwaccel: cuda, vaapi or qsv)"
    if kind == "cuda" and not _CUDA_INDEX.fullmatch(device):
        return f"for cuda, a GPU index like '0' (as nvidia-smi lists them), got {device!r}"
    if kind in ("vaapi", "qsv") and not device.startswith("/dev/"):
        return f"for {kind}, a DRM render node like '/dev/dri/renderD128', got {device!r}"
    return None


class HwaccelSettings(BaseModel):
    """How a camera decodes: ``hwaccel`` (none, auto, cuda, vaapi, qsv), an optional
    ``hwaccel_device``, and ``hwaccel_required`` (refuse to stream in software)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    hwaccel: HwaccelKind = "none"
    hwaccel_device: str | None = None
    hwaccel_required: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> HwaccelSettings:
        check_settings(self.hwaccel, self.hwaccel_device, self.hwaccel_required)
        return self


def check_settings(kind: str, device: str | None, required: bool) -> None:
    """Raise ValueError naming the key when the three settings do not fit together."""
    problem = device_problem(kind, device)
    if problem is not None:
        raise ValueError(f"hwaccel_device: {problem}")
    if required and kind == "none":
        raise ValueError("hwaccel_required: true needs hwaccel: auto, cuda, vaapi or qsv")


HWACCEL_KEYS = tuple(HwaccelSettings.model_fields)


def with_defaults(data: object) -> object:
    """Raw config data with ``defaults``' hwaccel keys copied into every camera that does not
    set ``hwaccel`` (one that does keeps its own three keys: a device or ``required`` belongs
    to its kind). Invalid defaults are left to their own error (``defaults.hwaccel``), not
    repeated once per camera. The input is not changed."""
    if not isinstance(data, dict):
        return data
    defaults, cameras = data.get("defaults"), data.get("cameras")
    if not isinstance(defaults, dict) or not isinstance(cameras, dict) or not defaults:
        return data
    try:
        HwaccelSettings.model_validate(defaults)
    except ValueError:
        return data
    filled = {name: {**defaults, **camera}
              if isinstance(camera, dict) and "hwaccel" not in camera else camera
              for name, camera in cameras.items()}
    return {**data, "cameras": filled}
