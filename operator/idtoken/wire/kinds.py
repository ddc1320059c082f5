"""The kinds of member that several bodies share, each with its JSON Schema constraints, its
description and its refusal (wire contract, general rules).

Patterns are written once, as whole-string Python patterns next to the domain that uses them
(``ids.ID_PATTERN``, ``scopes.SCOPE_PATTERN``), and spelled here as JSON Schema wants them
(``^...$``). pydantic matches them with Rust's regex engine, whose ``$`` is the very end of the
text as in ECMA-262: ``"abc\\n"`` is no id (Python's ``re`` would let ``$`` match before that
final line break).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from idtoken.errors import InvalidRequest, OperatorError
from idtoken.ids import ID_PATTERN, OTP_PATTERN
from idtoken.scopes import SCOPE_PATTERN
from idtoken.wire.declare import Kind, Problem, Refuse, refuse_with

MAX_TIMESTAMP = 2**53 - 1
MAX_SCOPES = 32
MAX_SIGNATURE = 200
NO_CONTROL = r"^[^\x00-\x1F\x7F]+$"
TEXT_BLOCK = r"^[\x20-\x7F\r\n]+$"
B64URL = r"^[A-Za-z0-9_-]+$"


def json_pattern(compiled: re.Pattern[str]) -> str:
    """A whole-string Python pattern (``\\A...\\Z``) as JSON Schema spells it (``^...$``)."""
    source = compiled.pattern
    if not (source.startswith("\\A") and source.endswith("\\Z")):
        raise ValueError(f"not a whole-string pattern: {source}")
    return "^" + source[2:-2] + "$"


ID = json_pattern(ID_PATTERN)
OTP = json_pattern(OTP_PATTERN)
SCOPE = json_pattern(SCOPE_PATTERN)


def _whole_number(value: Any) -> Any:
    """JSON has one kind of number: ``1700000000000.0`` and ``1.7e12`` are the integer
    1700000000000 (JSON Schema says so too); a fraction stays a float and is refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Id = TypeAliasType(
    "Id",
    Annotated[
        str,
        Kind(
            Field(
                pattern=ID,
                description="sessionId, tokenId, deviceId or serviceId: never contains `|`.",
            ),
            refuse=refuse_with(lambda name: f"{name} must match {ID}"),
        ),
    ],
)

Scope = TypeAliasType(
    "Scope",
    Annotated[
        str,
        Field(
            pattern=SCOPE,
            description="A scope name such as `identity:name` (the contract's scope table).",
            examples=["identity:name"],
        ),
    ],
)


def scope_list_refusal(malformed: type[OperatorError] = InvalidRequest) -> Refuse:
    """A list of scopes: not a list, too long or not all strings is ``invalid_request``; a
    string that cannot be a scope is ``malformed`` (``invalid_scope`` where the contract names
    it, on initiate)."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        if any(not problem.path for problem in problems):
            return InvalidRequest(f"{name} must be a list of at most {MAX_SCOPES} scopes")
        if any(problem.type != "string_pattern_mismatch" for problem in problems):
            return InvalidRequest(f"{name} must be a list of strings")
        return malformed(f"{name} contains a malformed scope")

    return refuse


ScopeList = TypeAliasType(
    "ScopeList",
    Annotated[
        list[Scope],
        Kind(Field(max_length=MAX_SCOPES), refuse=scope_list_refusal()),
    ],
)

Timestamp = TypeAliasType(
    "Timestamp",
    Annotated[
        int,
        Kind(
            Field(
                ge=1,
                le=MAX_TIMESTAMP,
                description=(
                    "Unix epoch milliseconds of the device's clock. Any JSON spelling of the "
                    "integer is the integer (`1700000000000`, `1700000000000.0`, `1.7e12`); the "
                    "signed message carries it in plain decimal (`1700000000000`). A fraction "
                    "is refused (400). It must be within the allowed skew (default 30 s) of "
                    "the operator's clock, otherwise 401 `invalid_signature`."
                ),
            ),
            BeforeValidator(_whole_number),
            refuse=refuse_with(lambda name: f"{name} must be Unix epoch milliseconds (an integer)"),
        ),
    ],
)

Signature = TypeAliasType(
    "Signature",
    Annotated[
        str,
        Kind(
            Field(
                pattern=B64URL,
                max_length=MAX_SIGNATURE,
                description=(
                    "ES256 by the device key over the UTF-8 message given for each endpoint: "
                    "base64url without padding of the raw 64-byte `r || s` (86 characters). "
                    "Padding is refused (400); DER or 63/65 bytes do not verify (401 "
                    "`invalid_signature`)."
                ),
            ),
            refuse=refuse_with(lambda name: f"{name} must be base64url (no padding)"),
        ),
    ],
)

Otp = TypeAliasType(
    "Otp",
    Annotated[
        str,
        Kind(Field(pattern=OTP), refuse=refuse_with(lambda name: f"{name} must be 6 digits")),
    ],
)

CompactJws = TypeAliasType(
    "CompactJws",
    Annotated[
        str,
        Kind(
            Field(
                min_length=1,
                description=(
                    "A compact JWS (`header.payload.signature`). Its size and form are checked "
                    "with its signature, so a malformed token gets the answer of any bad token."
                ),
            ),
            refuse=refuse_with(lambda name: f"{name} must be a compact JWS string"),
        ),
    ],
)


def text(max_length: int) -> Kind:
    """One line of text: 1 to ``max_length`` characters, no control characters."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        if all(problem.type == "string_pattern_mismatch" for problem in problems):
            return InvalidRequest(f"{name} must not contain control characters")
        return InvalidRequest(f"{name} must be a string of 1 to {max_length} characters")

    return Kind(
        StringConstraints(min_length=1, max_length=max_length, pattern=NO_CONTROL), refuse=refuse
    )


def text_block(max_length: int) -> Kind:
    """Multi-line text such as a PEM block: printable ASCII and line breaks only."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        ascii_text = all(isinstance(problem.value, str) for problem in problems) and all(
            problem.value.isascii() for problem in problems
        )
        if ascii_text and all(problem.type == "string_pattern_mismatch" for problem in problems):
            return InvalidRequest(f"{name} must not contain control characters")
        return InvalidRequest(f"{name} must be ASCII text of at most {max_length} characters")

    return Kind(
        StringConstraints(min_length=1, max_length=max_length, pattern=TEXT_BLOCK), refuse=refuse
    )


def choice(options: Iterable[str], refuse: Refuse | None = None) -> Kind:
    """One of a fixed set of strings (a JSON Schema ``enum``), refused as ``invalid_request``
    unless ``refuse`` says otherwise (``unsupported_grant_type`` for a grant type)."""
    allowed = tuple(options)

    def check(value: str) -> str:
        if value not in allowed:
            raise PydanticCustomError("choice", "not one of the options")
        return value

    return Kind(
        Field(json_schema_extra={"enum": list(allowed)}),
        AfterValidator(check),
        refuse=refuse or refuse_with(lambda name: f"{name} must be one of: {', '.join(allowed)}"),
    )
