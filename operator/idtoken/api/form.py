"""Reading ``application/x-www-form-urlencoded`` bodies (the token and backchannel
endpoints, RFC 6749 §3.2) and query strings, before any work is done.

The same limits as JSON bodies: 64 KiB, refused while the body streams in. The body must be
UTF-8 and well formed; a parameter given twice is ``invalid_request`` (RFC 6749 §3.1, §3.2),
and parameters without a value are treated as omitted (§3.1).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus

from starlette.requests import Request

from idtoken.api.body import read_limited
from idtoken.errors import InvalidRequest, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"
_CONTROL = re.compile(r"[\x00-\x1f]")
_SHORT = 64


@functools.lru_cache(maxsize=256)
def _decoded_short(part: str) -> str:
    # The same few short parts come again and again (grant_type's urn:openid:params:...).
    return unquote_plus(part, errors="strict")


def _decoded(part: str) -> str:
    if "%" not in part and "+" not in part:
        return part
    return _decoded_short(part) if len(part) <= _SHORT else unquote_plus(part, errors="strict")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``name=value`` pairs of a form or query string (what ``urllib.parse.parse_qsl`` reads,
    percent-decoding only the parts that need it: a CIBA poll's parameters mostly do not);
    empty values left out."""
    pairs: list[tuple[str, str]] = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            try:
                name = _decoded(name)
                value = _decoded(value)
            except UnicodeDecodeError:
                raise InvalidRequest("the parameters are not valid form encoding") from None
        if value:
            pairs.append((name, value))
    return pairs


def single(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The parameters as a mapping; a name given twice is ``invalid_request``."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise InvalidRequest(f"{_shown(name)} is given more than once")
        out[name] = value
    return out


async def read_form(request: Request) -> Mapping[str, str]:
    return single(await read_form_pairs(request))


async def read_form_pairs(request: Request) -> list[tuple[str, str]]:
    """The form's parameters in order, repeated ones kept (the authorization request tells
    its client of a repeat at the redirect URI)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != FORM:
        raise UnsupportedMediaType(f"the request body must be {FORM}")
    body = await read_limited(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body must be UTF-8") from None
    if _CONTROL.search(text) is not None:
        raise InvalidRequest("the request body must not contain control characters")
    return parse_pairs(text)


def _shown(name: str) -> str:
    shown = name[:40]
    return repr(shown) if shown.isprintable() and shown.isascii() else "a parameter"
