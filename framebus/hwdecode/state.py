"""What a camera's decoding is, as the API, the status page, the metrics and the log show it.

Written by the camera's decoder thread only (plain attribute writes, read at scrape time, as
``CameraStats``); a fallback reason is logged once per camera, not once per reconnect."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from framebus.hwdecode.choice import RETRY_S, Choice

log = logging.getLogger("framebus.camera")
FALLBACK_REASONS = ("not_built", "unavailable", "device_failed", "codec_unsupported",
                    "stream_refused", "decode_failed")
FAILURES_IN_A_ROW = 25  # packets the device failed to decode, none decoded between: it is broken


class DeviceFailed(Exception):
    """The device stopped decoding this camera mid-stream: end the session, go on in software
    (a stall and a reconnect to the same device would repeat forever)."""


@dataclass
class DecodingState:
    """A camera's decoder: asked for (``requested``), running on (``active``, None for
    software) and why software although hardware was asked for (``fallback``)."""

    camera: str
    requested: str = "none"
    active: str | None = None
    fallback: str = ""
    fallbacks: Counter[str] = field(default_factory=Counter)  # sessions, by reason
    _logged: set[str] = field(default_factory=set)
    _failures: int = 0  # decode errors in a row while on the device
    _broken: tuple[str, float] | None = None  # why the device failed mid-stream, and until

    def decoder(self, codec: str) -> str:
        """In words, for the stream's ``codec``: ``h264 (cuda)``, ``h264 (software; cuda
        unavailable: ...)``, ``h264``."""
        if not codec:  # not opened yet (or refused before opening): nothing decodes
            return ""
        if self.active:
            return f"{codec} ({self.active})"
        if self.fallback:
            return f"{codec} (software; {self.fallback})"
        return codec

    def as_json(self) -> dict[str, str | None]:
        """The API's ``hwaccel`` object."""
        return {"requested": self.requested, "active": self.active,
                "fallback": self.fallback or None}

    def broken(self, now: float | None = None) -> str | None:
        """Why this camera decodes in software for now after its device failed mid-stream
        (for ``RETRY_S``); None when the device may be tried."""
        if self._broken is None or (now or time.monotonic()) >= self._broken[1]:
            return None
        return self._broken[0]

    def decoded(self) -> None:
        """A frame came out of the decoder."""
        self._failures = 0

    def decode_failed(self) -> None:
        """A packet did not decode; raises DeviceFailed at ``FAILURES_IN_A_ROW`` on a device."""
        if self.active is None:
            return
        self._failures += 1
        if self._failures >= FAILURES_IN_A_ROW:
            self._failures = 0
            why = (f"{self.active} failed mid-stream ({FAILURES_IN_A_ROW} packets in a row did "
                   f"not decode): software for {RETRY_S:g} s")
            self._broken = (why, time.monotonic() + RETRY_S)
            raise DeviceFailed(why)

    def chose(self, choice: Choice) -> None:
        """A session starts with ``choice``."""
        self.requested, self.active, self.fallback = choice.requested, choice.kind, ""
        if choice.fallback:
            self._fell_back(choice.label, choice.fallback)

    def refused(self, requested: str, reason: str, label: str) -> None:
        """``hwaccel_required`` and no hardware: the camera does not stream (its state says
        why, and its transition is logged: not here too)."""
        self.requested, self.active = requested, None
        self.fallback = reason
        self.fallbacks[label] += 1

    def not_on_device(self, why: str) -> None:
        """The device cannot take this stream (``why``): software from here on."""
        self.active = None
        self._fell_back(self.label(why), why)

    @staticmethod
    def label(why: str) -> str:
        """The metric reason of a ``not_on_device`` reason (``on_device``'s words)."""
        return "codec_unsupported" if "cannot decode" in why else "stream_refused"

    def _fell_back(self, label: str, reason: str) -> None:
        self.fallback = reason
        self.fallbacks[label] += 1
        if reason in self._logged:
            return
        self._logged.add(reason)
        log.warning("camera %s: decoding in software: %s", self.camera, reason,
                    extra={"CAMERA": self.camera})
