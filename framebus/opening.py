"""What FFmpeg is told when a camera is opened: the options that bound what a camera can cost
before a single frame is decoded.

A camera is untrusted input. ``av.open()`` runs ``avformat_find_stream_info``, which opens a
decoder and decodes the first frames to learn the stream's parameters: a stream whose SPS
declares 16000x16000 (the most FFmpeg itself accepts) made it allocate frames at that size,
+1.1 GB RSS and 3-4 s of CPU per attempt, before the camera's ``max_pixels`` check ran.
Three bounds close that, each where FFmpeg allocates:

* ``max_pixels`` (a libavcodec AVOption, checked by ``av_image_check_size2`` in
  ``ff_set_dimensions``/``ff_get_buffer``): every decoder FFmpeg opens for the camera, the
  probe's and ours, refuses a bigger picture instead of allocating it.
* ``skip_frame: all`` for the probe of a network source: the probe learns the geometry from the
  parameter sets (the parser reads them from the SDP or the stream), never decodes a picture,
  so a lying SPS does not even cost the decoder's per-macroblock tables (~80 MB at
  16000x16000). The decoder that streams is a separate context; it decodes normally.
* ``probesize`` / ``analyzeduration``: the probe reads at most 32 KiB / 0.1 s of the stream.

Files and lavfi graphs are the administrator's own; they keep FFmpeg's usual probe (it
decodes a few frames, which some raw formats need for their timestamps) under ``max_pixels``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from framebus.config import CameraConfig

NETWORK_SCHEMES = ("rtsp", "rtsps")


def open_options(config: CameraConfig) -> dict[str, str]:
    """The ``options`` for ``av.open``: they go to the demuxer and to every decoder the probe
    opens (PyAV hands them to ``avformat_find_stream_info`` per stream)."""
    options = decoder_options(config)
    if urlsplit(config.url).scheme not in NETWORK_SCHEMES:
        return options
    # FFmpeg's own socket timeout is a last resort behind PyAV's interrupt callback.
    last_resort = config.open_timeout + config.stall_timeout + config.read_timeout
    options.update({
        "timeout": str(int(last_resort * 1_000_000)),
        # RTSP's SDP already names the codec: probing 0.1 s instead of FFmpeg's ~1 s makes
        # every (re)connect about a second faster, and bounds what the probe buffers
        "analyzeduration": "100000", "probesize": "32768",
        "skip_frame": "all",  # the probe's decoder only: see the module's docstring
    })
    if config.transport != "auto":
        options["rtsp_transport"] = config.transport
    return options


def decoder_options(config: CameraConfig) -> dict[str, str]:
    """Options for the decoder that streams the camera: it refuses a picture over
    ``max_pixels`` before allocating it, also when the stream grows after the probe."""
    return {"max_pixels": str(config.max_pixels)}
