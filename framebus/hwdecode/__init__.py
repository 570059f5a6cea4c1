"""Hardware decoding (NVDEC through CUDA, VAAPI, Intel QSV) through PyAV, honest about it.

Roles, imported one way (``settings`` <- ``support`` <- ``choice`` <- ``probe``):

* ``settings``: the configuration values and their validation (pydantic, no PyAV).
* ``support``: what this host can offer, found without opening a device (cheap; for
  check-config's warnings and for the reason a fallback gives).
* ``choice``: per camera session, which decoder runs: opens the device once (cached per
  process), falls back to software with a reason, or refuses when hardware is required; and
  after the first frame, whether FFmpeg really decodes on the device.
* ``probe``: ``framebus check-config --probe`` opens every device type and says what works.

Frames leave the device once: PyAV downloads each decoded hardware frame into system memory
(``av_hwframe_transfer_data``) inside the decode call, and every rendition is then made from
that one frame by the store, as for software decoding.
"""
