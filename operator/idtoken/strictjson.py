"""Strict JSON: one text, one meaning, bounded work.

Used for request bodies and for every JOSE header and payload. Refused: anything but UTF-8
(a BOM included), duplicate member names, NaN and the infinities, floats that overflow,
integers of more than 30 digits, nesting deeper than 32, and escapes that decode to lone
surrogates.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class StrictJsonError(ValueError):
    """JSON that a strict reader refuses; ``reason`` is for the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 30

# One token per JSON string (closed or running to the end of the text) or bracket. The
# possessive quantifiers never backtrack, so the scan is linear even on hostile input such
# as an unterminated string full of escaped quotes.
_DEPTH_TOKEN = re.compile(r'"(?:[^"\\]++|\\[\s\S]?)*+"?|[\[{]|[\]}]')
# A \uD800-\uDFFF escape may decode to a lone surrogate, which Python accepts but which
# cannot be encoded as UTF-8 later (in a response, a log line or the store).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_depth(text: str) -> None:
    # Cheap exit for the usual small body: depth can never exceed the number of openers.
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for match in _DEPTH_TOKEN.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise StrictJsonError("too_deep")
        elif char in "]}":
            depth -= 1
            if depth < 0:
                # An unmatched closer is invalid JSON; stopping here also keeps the count
                # from "banking" closers to hide deeper nesting later on.
                raise StrictJsonError("invalid_json")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise StrictJsonError("duplicate_member")
    return obj


def _refuse_constant(name: str) -> Any:
    raise StrictJsonError("non_finite_number")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise StrictJsonError("integer_too_long")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError("non_finite_number")
    return value


# Built once: json.loads with hooks would build a decoder and its scanner on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def _check_strings_encodable(value: Any) -> None:
    # Iterative so that the walk itself cannot recurse (depth is already bounded anyway).
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads_strict_json(data: bytes) -> Any:
    """Parse JSON strictly; refusals raise :class:`StrictJsonError`.

    Refused: anything but UTF-8 (including a BOM), duplicate object member names, NaN and
    the infinities, floats that overflow, integers of more than 30 digits, nesting deeper
    than 32, and escapes that decode to lone surrogates. Nesting is measured on the raw text
    before parsing so that ``"[" * 100000`` never reaches the recursive decoder.
    """
    if not isinstance(data, bytes | bytearray):
        raise StrictJsonError("not_bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise StrictJsonError("bom")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJsonError("invalid_utf8") from None
    _check_depth(text)
    try:
        value = _DECODER.decode(text)
    except StrictJsonError:
        raise
    except (ValueError, RecursionError):
        raise StrictJsonError("invalid_json") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _check_strings_encodable(value)
        except UnicodeEncodeError:
            raise StrictJsonError("lone_surrogate") from None
    return value
