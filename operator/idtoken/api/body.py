"""Reading and validating JSON request bodies, before any work is done.

Limits apply before parsing: a body over 64 KiB is refused with 413 while it streams in (so a
chunked body without a length cannot make us buffer it), a media type other than JSON gets 415,
and the JSON parser refuses duplicates, NaN, huge numbers and deep nesting. Field errors name
the field but never echo its value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from idtoken.errors import InvalidRequest, OperatorError, RequestTooLarge, UnsupportedMediaType
from idtoken.ids import ID_PATTERN, OTP_PATTERN
from idtoken.scopes import SCOPE_PATTERN
from idtoken.strictjson import StrictJsonError, loads_strict_json

MAX_BODY = 64 * 1024
_B64URL = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_MAX_TIMESTAMP = 2**53


async def read_json(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        raise UnsupportedMediaType("the request body must be application/json")
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", 'charset="utf-8"'):
        raise UnsupportedMediaType("the request body must be UTF-8 JSON")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length")
        if int(declared) > MAX_BODY:
            raise RequestTooLarge("the request body is larger than 64 KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge("the request body is larger than 64 KiB")
        chunks.append(chunk)
    try:
        value = loads_strict_json(b"".join(chunks))
    except StrictJsonError as exc:
        raise InvalidRequest("the request body is not valid JSON", log_detail=str(exc)) from exc
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return value


class Fields:
    """Typed access to a request body; unknown members are refused up front."""

    def __init__(
        self, body: dict[str, Any], *, required: Iterable[str], optional: Iterable[str] = ()
    ):
        self.body = body
        required = tuple(required)
        allowed = set(required) | set(optional)
        for name in body:
            if name not in allowed:
                raise InvalidRequest(f"unknown field {_safe_name(name)}")
        for name in required:
            if name not in body or body[name] is None:
                raise InvalidRequest(f"{name} is required")

    def present(self, name: str) -> bool:
        return self.body.get(name) is not None

    def ident(self, name: str) -> str:
        """sessionId / tokenId / deviceId / serviceId."""
        value = self.body[name]
        if not isinstance(value, str) or not ID_PATTERN.match(value):
            raise InvalidRequest(f"{name} must match ^[A-Za-z0-9._:@-]{{1,128}}$")
        return value

    def text(self, name: str, *, max_length: int) -> str:
        value = self.body[name]
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise InvalidRequest(f"{name} must be a string of 1 to {max_length} characters")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise InvalidRequest(f"{name} must not contain control characters")
        return value

    def text_block(self, name: str, *, max_length: int) -> str:
        """Multi-line text such as a PEM block: printable ASCII and line breaks only."""
        value = self.body[name]
        if not isinstance(value, str) or not 0 < len(value) <= max_length or not value.isascii():
            raise InvalidRequest(f"{name} must be ASCII text of at most {max_length} characters")
        if any(ord(ch) < 0x20 and ch not in "\r\n" for ch in value):
            raise InvalidRequest(f"{name} must not contain control characters")
        return value

    def compact_jws(self, name: str) -> str:
        """A token as text. Its size and form are the token verifier's business, so that an
        oversized or malformed token gets the same answer as any other bad token (J10)."""
        value = self.body[name]
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{name} must be a compact JWS string")
        return value

    def timestamp(self, name: str = "timestamp") -> int:
        value = self.body[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _MAX_TIMESTAMP:
            raise InvalidRequest(f"{name} must be Unix epoch milliseconds (an integer)")
        return value

    def signature(self, name: str = "signature") -> str:
        value = self.body[name]
        # 64 bytes of r||s are 86 base64url characters; the exact check is the verifier's.
        if not isinstance(value, str) or not 0 < len(value) <= 200 or not _B64URL.match(value):
            raise InvalidRequest(f"{name} must be base64url (no padding)")
        return value

    def otp(self, name: str = "otp") -> str:
        value = self.body[name]
        if not isinstance(value, str) or not OTP_PATTERN.match(value):
            raise InvalidRequest(f"{name} must be 6 digits")
        return value

    def scope_list(
        self, name: str, *, max_count: int = 32, malformed: type[OperatorError] = InvalidRequest
    ) -> list[str]:
        """A list of scope strings, order kept (it may enter a signed message). A string that
        cannot be a scope raises ``malformed`` (``invalid_scope`` where the contract names
        it); anything else that is not a list of strings is ``invalid_request``."""
        value = self.body[name]
        if not isinstance(value, list) or len(value) > max_count:
            raise InvalidRequest(f"{name} must be a list of at most {max_count} scopes")
        if not all(isinstance(item, str) for item in value):
            raise InvalidRequest(f"{name} must be a list of strings")
        if not all(SCOPE_PATTERN.match(item) for item in value):
            raise malformed(f"{name} contains a malformed scope")
        return list(value)

    def choice(self, name: str, options: Iterable[str]) -> str:
        value = self.body[name]
        options = tuple(options)
        if not isinstance(value, str) or value not in options:
            raise InvalidRequest(f"{name} must be one of: {', '.join(options)}")
        return value


def _safe_name(name: str) -> str:
    shown = name[:40]
    if not shown.isprintable() or not shown.isascii():
        return "(unprintable)"
    return repr(shown)
