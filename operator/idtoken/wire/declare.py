"""A body's one declaration: pydantic validates it and writes its JSON Schema; this module turns
pydantic's findings into the contract's errors.

A body is a ``TypedDict`` configured with :data:`STRICT`: unknown members are refused and
nothing is coerced (``"5"`` is no integer, ``true`` no number, ``null`` no string). Each member
is annotated with a :class:`Kind`, which holds the member's pydantic constraints (so that they
reach the JSON Schema as well) and how a bad value is refused: an error class and a
description that names the member and never echoes the value.

Parsing is not pydantic's: the body comes from :mod:`idtoken.strictjson` (duplicate members,
NaN, huge numbers and deep nesting refused), after the size and media type checks of
``api/body.py``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

import annotated_types
import typing_extensions
from pydantic import ConfigDict, TypeAdapter, ValidationError

from idtoken.errors import InvalidRequest, OperatorError

T = TypeVar("T")

STRICT = ConfigDict(extra="forbid", strict=True)
"""The configuration of every JSON request body: unknown members refused, no coercion."""

PARAMETERS = ConfigDict(
    extra="ignore",
    strict=True,
    json_schema_extra={"additionalProperties": {"type": "string"}},
)
"""The configuration of OAuth parameters (a form body or a query string): a parameter the
declaration does not name is ignored, as RFC 6749 §3.1 requires, and left out of the decoded
body; each is one string (the form reader refuses a repeated one, and treats an empty one as
omitted)."""


class Problem(NamedTuple):
    """One thing pydantic found wrong with a member."""

    type: str
    """pydantic's error type: ``string_pattern_mismatch``, ``missing``, ``int_type``, ..."""
    path: tuple[str | int, ...]
    """Where below the member: ``()`` for the member itself, ``("keys", "auth")`` inside it."""
    value: Any
    """The offending input, to choose a description by; never to be shown."""


Refuse = Callable[[str, Sequence[Problem]], OperatorError]
"""From a member's name and its problems, the error to answer."""


def refuse_with(
    message: Callable[[str], str], error: type[OperatorError] = InvalidRequest
) -> Refuse:
    """A refusal that does not depend on the problem: ``error(message(name))``."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        return error(message(name))

    return refuse


def refuse_by(check: Callable[[Any], object]) -> Refuse:
    """A refusal that is the domain's own check of the value (``check`` raises the
    :class:`OperatorError` it answers), so that the rule's code and description are stated
    once, where the domain enforces it. A value the check lets through (a constraint of the
    declaration the check does not cover) gets ``invalid_request``."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        for problem in problems:
            try:
                check(problem.value)
            except OperatorError as exc:
                return exc
        return InvalidRequest(f"{name} is not valid")

    return refuse


class Kind(annotated_types.GroupedMetadata):
    """A member's constraints (any pydantic metadata: ``Field``, ``StringConstraints``,
    validators) and its refusal, used as ``Annotated[str, Kind(...)]``. A kind given where a
    member is used overrides the one of the type it annotates (``Annotated[ScopeList, ...]``).

    Keep ``Field`` constraints before validators: pydantic writes constraints that follow a
    ``BeforeValidator`` into the JSON Schema under their Python names (``ge`` for
    ``minimum``), which no JSON Schema reader understands (tests/test_openapi.py checks).
    """

    def __init__(self, *constraints: Any, refuse: Refuse) -> None:
        self.constraints = constraints
        self.refuse = refuse

    def __iter__(self) -> Iterator[Any]:
        return iter(self.constraints)


_SEE_THROUGH = (
    typing.Union,
    types.UnionType,
    typing_extensions.NotRequired,
    typing_extensions.Required,
)


def kind_of(hint: Any) -> Kind | None:
    """The kind that governs a member: the outermost one in its annotation, looking through
    ``Annotated``, unions with ``None``, ``NotRequired`` and named aliases (not into the items
    of a list: a list's kind is on the list)."""
    queue = [hint]
    while queue:
        item = queue.pop(0)
        if isinstance(item, typing_extensions.TypeAliasType):
            queue.append(item.__value__)
            continue
        origin = typing.get_origin(item)
        if origin is Annotated:
            base, *metadata = typing.get_args(item)
            for meta in metadata:
                if isinstance(meta, Kind):
                    return meta
            queue.append(base)
        elif origin in _SEE_THROUGH:
            queue.extend(typing.get_args(item))
    return None


def _is_required(hint: Any, total: bool) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing_extensions.NotRequired:
        return False
    return origin is typing_extensions.Required or total


def _problems(exc: ValidationError, below: int) -> list[tuple[tuple[str | int, ...], Problem]]:
    """Each error's location, and the problem as seen ``below`` steps down that location."""
    return [
        (tuple(error["loc"]), Problem(error["type"], tuple(error["loc"][below:]), error["input"]))
        for error in exc.errors(include_url=False)
    ]


class Body(Generic[T]):
    """A JSON object's declaration (a ``TypedDict`` configured with :data:`STRICT`), or a form
    body's or query string's (configured with :data:`PARAMETERS`), ready to validate:
    :meth:`decode` returns the body or raises the contract's error. ``media_type`` is how it
    travels (the OpenAPI document's request content type).

    Refusals come in the order of the checks a reader expects: an unknown member first (named
    when printable, cut to 40 characters; not where unknown members are ignored), then a
    missing or ``null`` required member, then the first member, in declaration order, with a
    bad value.
    """

    def __init__(self, kind: type[T], *, media_type: str = "application/json") -> None:
        self.kind = kind
        self.media_type = media_type
        self.adapter: TypeAdapter[T] = TypeAdapter(kind)
        hints = typing.get_type_hints(kind, include_extras=True)
        self.members: dict[str, Kind | None] = {name: kind_of(hint) for name, hint in hints.items()}
        # From the hints, not __required_keys__: with postponed annotations a TypedDict cannot
        # see NotRequired in its own (string) annotations before Python 3.12.
        total = bool(getattr(kind, "__total__", True))
        self.required = tuple(name for name, hint in hints.items() if _is_required(hint, total))
        # An unknown member is refused in JSON bodies, ignored in OAuth parameters.
        config = getattr(kind, "__pydantic_config__", {})
        self.closed = config.get("extra") == "forbid"

    def decode(self, value: Any) -> T:
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise self.refusal(value, exc) from None

    def refusal(self, value: Any, exc: ValidationError) -> OperatorError:
        if not isinstance(value, dict):
            return InvalidRequest("the request body must be a JSON object")
        for name in value if self.closed else ():
            if name not in self.members:
                return InvalidRequest(f"unknown field {safe_name(name)}")
        for name in self.required:
            if value.get(name) is None:
                return InvalidRequest(f"{name} is required")
        found: dict[str, list[Problem]] = {}
        for loc, problem in _problems(exc, 1):
            found.setdefault(str(loc[0]), []).append(problem)
        for name, kind in self.members.items():
            if name in found:
                if kind is None:
                    return InvalidRequest(f"{name} is not valid")
                return kind.refuse(name, found[name])
        return InvalidRequest("the request body is not valid")


class Member(Generic[T]):
    """One value of a kind outside a body (a stored push subscription, say), refused under the
    name given to :meth:`decode`."""

    def __init__(self, kind: Any) -> None:
        self.adapter: TypeAdapter[T] = TypeAdapter(kind)
        found = kind_of(kind)
        if found is None:
            raise TypeError("a Member needs a kind")
        self.kind = found

    def decode(self, value: Any, name: str) -> T:
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise self.kind.refuse(name, [problem for _, problem in _problems(exc, 0)]) from None


def safe_name(name: str) -> str:
    """A member name fit for an error description: quoted, at most 40 characters, or
    ``(unprintable)``."""
    shown = name[:40]
    if not shown.isprintable() or not shown.isascii():
        return "(unprintable)"
    return repr(shown)
