"""Request bodies as JSON, with their nesting bounded before the decoder sees them.

Why: ``json.loads`` recurses once per ``[`` or ``{``, so a 64 KiB body of 32,000 brackets (or
10,000 ``{"a":``) raises RecursionError, a 500 with a traceback per request, though it is
under every size limit. No API body nests more than a couple of levels, so a body is
scanned first and refused past ``MAX_DEPTH``.

The scan is linear in the body's size and runs in C (``re``, ``bytes.translate``,
``itertools.accumulate``): strings are removed first (a bracket inside one does not nest),
then the depth is the largest running count of opening minus closing brackets, which is how
deep the decoder would recurse. An unterminated string runs to the end of the body (the
pattern cannot backtrack over it), and malformed JSON is left for the decoder to refuse.
"""

from __future__ import annotations

import array
import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32

# a string, escapes included, to its closing quote or (unterminated) to the end; possessive,
# so that no input makes it backtrack
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.S)
# opening brackets become +1, closing ones -1 (as signed bytes), everything else is dropped
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class JsonTooDeep(ValueError):
    """The body nests arrays and objects deeper than allowed."""


def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of ``body`` nest (0 for a scalar)."""
    brackets = _STRING.sub(b"", body).translate(_SIGNS, _NOT_BRACKETS)
    return max(accumulate(array.array("b", brackets)), default=0)


def loads_bounded(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(body)``, or JsonTooDeep if it nests deeper than ``max_depth``
    (ValueError/UnicodeDecodeError for a body that is not JSON, as json.loads raises)."""
    if body.count(b"[") + body.count(b"{") > max_depth and (
            depth := nesting_depth(body)) > max_depth:  # few brackets: too few to nest deep
        raise JsonTooDeep(f"body nests {depth} levels deep, over the limit of {max_depth}")
    return json.loads(body)
