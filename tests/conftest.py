"""Shared test set-up: make the helper modules in tests/ importable."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from matrixkit import matrix, matrix_rig  # noqa: E402  (fixtures, re-exported)
from openapikit import live  # noqa: E402  (a fixture, re-exported)
from rtspserver import rtsp_server_factory  # noqa: E402  (a fixture, re-exported)

__all__ = ["live", "matrix", "matrix_rig", "rtsp_server_factory"]
