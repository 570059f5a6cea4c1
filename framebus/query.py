"""Query strings: the one parser for every numeric query value the API reads.

Why not ``int()``/``float()``/``str.isdigit``: each accepts more than the API documents, and
not the same more. ``"²".isdigit()`` is true but ``int("²")`` raises (a 500 once); ``int``
takes Arabic-Indic digits, ``"1_000"``, ``" 7 "`` and ``"+7"``; ``float`` takes ``"nan"``,
``"inf"`` and ``"1e999"``. So a value here is ASCII digits only, with an optional fraction
for decimals, at most ``MAX_DIGITS`` characters (no huge integer to convert), and within the
endpoint's range; anything else is a 400 ``bad_query`` whose detail names the parameter.
"""

from __future__ import annotations

import math
import re
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from framebus.api import ApiError

MAX_DIGITS = 20  # 2**63 - 1 has 19 digits; more is never a valid value here
_INTEGER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_DECIMAL = re.compile(rf"(?=.{{1,{MAX_DIGITS}}}\Z)[0-9]+(?:\.[0-9]+)?", re.ASCII | re.S)


def parse_query(target: str) -> dict[str, str]:
    """A request target's query as {name: last value} ({} for a target that is no URL)."""
    try:
        query = urlsplit(target).query
    except ValueError:
        return {}
    return {key: values[-1] for key, values in
            parse_qs(query, keep_blank_values=True).items()}


def _bad(key: str, expected: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "bad_query", f"{key}: expected {expected}")


def query_int(query: dict[str, str], key: str, low: int, high: int) -> int | None:
    """``query[key]`` as an integer in ``low..high`` (None if absent), else 400 naming it."""
    if key not in query:
        return None
    text = query[key]
    if _INTEGER.fullmatch(text) is None or not low <= (value := int(text)) <= high:
        raise _bad(key, f"an integer {low}..{high} (ASCII digits)")
    return value


def query_decimal(query: dict[str, str], key: str, low: float, high: float = math.inf, *,
                  low_open: bool = False, expected: str = "") -> float | None:
    """``query[key]`` as a decimal number (``12`` or ``0.5``: ASCII digits, an optional
    fraction) in ``low..high`` (above ``low`` with ``low_open``); None if absent, else 400
    naming it."""
    if key not in query:
        return None
    text = query[key]
    value = float(text) if _DECIMAL.fullmatch(text) else None
    if value is None or not (low < value if low_open else low <= value) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise _bad(key, expected or f"a decimal number {bound} (ASCII digits, e.g. 2 or 0.5)")
    return value
