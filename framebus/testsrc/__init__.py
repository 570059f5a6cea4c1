"""Test sources: pre-encoded clip generation and a standalone loopback RTSP server."""
