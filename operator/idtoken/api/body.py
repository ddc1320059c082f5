"""Reading and validating JSON request bodies, before any work is done.

Limits apply before parsing: a body over 64 KiB is refused with 413 while it streams in (so a
chunked body without a length cannot make us buffer it), a media type other than JSON gets 415,
and the JSON parser refuses duplicates, NaN, huge numbers and deep nesting. Then the body is
checked against its declaration (:mod:`idtoken.wire`); errors name the member but never echo
its value.
"""

from __future__ import annotations

from typing import Any, TypeVar

from starlette.requests import Request

from idtoken.errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType
from idtoken.strictjson import StrictJsonError, loads_strict_json
from idtoken.wire.declare import Body

T = TypeVar("T")

MAX_BODY = 64 * 1024


async def read_limited(request: Request) -> bytes:
    """The request body, refused with 413 once it passes :data:`MAX_BODY` (while it streams
    in: a chunked body without a length cannot make us buffer it)."""
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
    return b"".join(chunks)


async def read_json(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        raise UnsupportedMediaType("the request body must be application/json")
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", 'charset="utf-8"'):
        raise UnsupportedMediaType("the request body must be UTF-8 JSON")
    raw = await read_limited(request)
    try:
        value = loads_strict_json(raw)
    except StrictJsonError as exc:
        raise InvalidRequest("the request body is not valid JSON", log_detail=str(exc)) from exc
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return value


async def read_body(request: Request, body: Body[T]) -> T:
    """The request's JSON body, validated against its declaration (api/bodies.py): the body
    or the contract's error (the error codes and descriptions of :mod:`idtoken.wire`)."""
    return body.decode(await read_json(request))
