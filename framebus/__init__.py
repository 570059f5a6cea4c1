"""framebus: decode each RTSP camera once, fan frames out to local consumers over FIFOs."""

__version__ = "0.1.0"
