"""Clips that lie about themselves, for testing what a hostile camera costs the daemon.

:func:`ensure_declared_size_clip` makes an H.264 clip whose sequence parameter sets *declare* a
picture of any size (e.g. 16384x16384) while the slices carry a small real picture: what a
hostile or broken camera sends. It costs a few kilobytes and milliseconds to make and nothing to
serve, where encoding a real 16384x16384 stream would take gigabytes and minutes. A decoder
that believes the SPS allocates frames at the declared size (402 MB per yuv420p frame at
16384x16384); that is the cost under test.

The SPS is rewritten at the bit level: everything up to ``pic_width_in_mbs_minus1`` is copied,
the width and height (in macroblocks) replaced, frame cropping dropped (it would refer to the
small size), and everything after (VUI, trailing bits) copied verbatim. Emulation prevention
bytes are removed before and inserted after. Only what x264 writes is supported: no scaling
matrices, ``pic_order_cnt_type`` 0 or 2; anything else raises ValueError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from framebus.testsrc.media import _write_atomically, ensure_clip

__all__ = ["ensure_declared_size_clip", "ensure_growing_clip", "rewrite_sps_size", "split_annexb"]

_NAL_SPS: Final = 7
# profiles whose SPS carries chroma_format_idc, bit depths and the scaling-matrix flag
_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class _Bits:
    """An RBSP read as bits, most significant first."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos // 8]
            value = (value << 1) | ((byte >> (7 - self.pos % 8)) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)

    def rest(self) -> list[int]:
        """The remaining bits, trailing bits included."""
        return [self.u(1) for _ in range(len(self.data) * 8 - self.pos)]


class _Writer:
    """Bits appended to a bytearray, most significant first."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    def ue(self, value: int) -> None:
        code = value + 1
        length = code.bit_length()
        self.u(length - 1, 0)
        self.u(length, code)

    def to_bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def _unescape(payload: bytes) -> bytes:
    """NAL payload → RBSP: drop the emulation prevention byte of every 00 00 03."""
    out = bytearray()
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _escape(rbsp: bytes) -> bytes:
    """RBSP → NAL payload: insert 03 wherever 00 00 is followed by a byte <= 3."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def rewrite_sps_size(nal: bytes, width: int, height: int) -> bytes:
    """An SPS NAL unit (header byte first, no start code) declaring ``width`` x ``height``
    (multiples of 16, progressive) instead of its own size; cropping is dropped."""
    if nal[0] & 0x1F != _NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of 16, not {width}x{height}")
    bits = _Bits(_unescape(nal[1:]))
    out = _Writer()
    profile = bits.u(8)
    out.u(8, profile)
    out.u(16, bits.u(16))  # constraint flags, level_idc
    out.ue(bits.ue())  # seq_parameter_set_id
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        out.ue(chroma)
        if chroma == 3:
            out.u(1, bits.u(1))  # separate_colour_plane_flag
        out.ue(bits.ue())  # bit_depth_luma_minus8
        out.ue(bits.ue())  # bit_depth_chroma_minus8
        out.u(1, bits.u(1))  # qpprime_y_zero_transform_bypass_flag
        scaling = bits.u(1)
        if scaling:
            raise ValueError("SPS with scaling matrices: not supported")
        out.u(1, scaling)
    out.ue(bits.ue())  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    out.ue(poc_type)
    if poc_type == 0:
        out.ue(bits.ue())  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type != 2:
        raise ValueError("SPS with pic_order_cnt_type 1: not supported")
    out.ue(bits.ue())  # max_num_ref_frames
    out.u(1, bits.u(1))  # gaps_in_frame_num_value_allowed_flag
    bits.ue()
    bits.ue()  # the real pic_width_in_mbs_minus1, pic_height_in_map_units_minus1
    out.ue(width // 16 - 1)
    out.ue(height // 16 - 1)
    if not bits.u(1):
        raise ValueError("interlaced SPS (frame_mbs_only_flag 0): not supported")
    out.u(1, 1)  # frame_mbs_only_flag
    out.u(1, bits.u(1))  # direct_8x8_inference_flag
    if bits.u(1):  # frame_cropping_flag: the offsets refer to the real size, drop them
        for _ in range(4):
            bits.ue()
    out.u(1, 0)
    out.bits.extend(bits.rest())  # VUI and rbsp_trailing_bits, as they were
    while out.bits and out.bits[-1] == 0:  # re-align: one stop bit, then zeros to a byte
        out.bits.pop()
    return nal[:1] + _escape(out.to_bytes())


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B stream, start codes removed."""
    units = []
    for chunk in data.split(b"\x00\x00\x01"):
        chunk = chunk.rstrip(b"\x00")  # the leading zero of a 4-byte start code
        if chunk:
            units.append(chunk)
    return units


def ensure_declared_size_clip(cache_dir: Path, width: int, height: int, fps: int = 25,
                              seconds: float = 2.0, gop: int = 25) -> Path:
    """An H.264 Annex-B clip of a real 64x64 picture whose every SPS declares ``width`` x
    ``height``; made from :func:`ensure_clip`'s clip, cached by name like it."""
    name = f"h264_declares_{width}x{height}_{fps}fps_{round(seconds * 1000)}ms_gop{gop}.h264"
    path = Path(cache_dir) / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    source = ensure_clip(cache_dir, "h264", 64, 64, fps, seconds, gop)
    units = split_annexb(source.read_bytes())
    patched = [rewrite_sps_size(unit, width, height) if unit[0] & 0x1F == _NAL_SPS else unit
               for unit in units]
    _write_atomically(path, iter(b"\x00\x00\x00\x01" + unit for unit in patched))
    return path


def ensure_growing_clip(cache_dir: Path, width: int, height: int, fps: int = 25,
                        seconds: float = 1.0, gop: int = 25) -> Path:
    """A clip that is an honest 64x64 for ``seconds``, then declares ``width`` x ``height``
    for as long (new parameter sets before an IDR, as a camera reconfigured mid-stream sends
    them): what a camera that passed the probe can do next."""
    name = f"h264_grows_to_{width}x{height}_{fps}fps_{round(seconds * 1000)}ms_gop{gop}.h264"
    path = Path(cache_dir) / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    honest = ensure_clip(cache_dir, "h264", 64, 64, fps, seconds, gop).read_bytes()
    lying = ensure_declared_size_clip(cache_dir, width, height, fps, seconds, gop).read_bytes()
    _write_atomically(path, iter((honest, lying)))
    return path
