"""The scope catalogue: which scopes exist, what they expand to and which claims they release.

A relying party asks for scopes; the user grants some of them on the phone; the issued JWT's
``idtoken`` object then carries exactly the claims of the granted scopes that the user's
credential holds (wire contract, section 5). Everything here is pure: no I/O, no clock (the
caller passes ``today``), no knowledge of services. Whether a scope is *allowed* for a service
is the caller's business; this module only says whether a scope is well formed and known.

Derived claims (``age_over_18``, ``ageRange``, ``isEuCitizen``, ``nameInitial``) are computed
from a source claim and never release that source: a relying party that asked for
``identity:age_over_18`` learns a boolean, not a date of birth.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "CLAIM_NAMES",
    "COMPOSITES",
    "EU_MEMBER_STATES",
    "KNOWN_SCOPES",
    "SCOPE_CLAIMS",
    "SCOPE_LABELS",
    "SCOPE_PATTERN",
    "SUPPORTED_CLAIMS",
    "ScopeError",
    "canonical_scopes",
    "claims_for",
    "expand",
    "scope_string",
]

# \A and \Z rather than ^ and $: with ``$`` a trailing newline would still match under
# ``re.match``, and a scope ends up inside a signed ``|``-separated message.
SCOPE_PATTERN: re.Pattern[str] = re.compile(r"\A[a-z0-9_:]{1,64}\Z")
"""A syntactically valid scope: 1 to 64 characters of ``a-z 0-9 _ :`` (ASCII only)."""

SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "identity:name": ("givenName", "familyName"),
        "identity:given_name": ("givenName",),
        "identity:family_name": ("familyName",),
        "identity:date_of_birth": ("dateOfBirth",),
        "identity:nationality": ("nationality",),
        "identity:document": ("documentNumber", "documentType", "documentExpiry"),
        "identity:trust_level": ("trustLevel",),
        "identity:age_over_18": ("age_over_18",),
        "identity:age_over_21": ("age_over_21",),
        "identity:age_over_25": ("age_over_25",),
        "identity:age_range": ("ageRange",),
        "identity:is_eu_citizen": ("isEuCitizen",),
        "identity:name_initial": ("nameInitial",),
        "identity:email": ("email",),
        "identity:phone": ("phoneNumber",),
    }
)
"""Each plain (non-composite) scope and the ``idtoken`` claims it releases, in table order."""

COMPOSITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "identity:basic": ("identity:name", "identity:trust_level"),
        "identity:age_verification": ("identity:age_over_18", "identity:name"),
        "identity:full": (
            "identity:name",
            "identity:date_of_birth",
            "identity:nationality",
            "identity:document",
            "identity:trust_level",
        ),
    }
)
"""Composite scopes and the scopes they stand for."""

KNOWN_SCOPES: frozenset[str] = frozenset(SCOPE_CLAIMS) | frozenset(COMPOSITES)
"""Every scope the operator understands, composites included."""

SCOPE_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "identity:name": "Full name",
        "identity:given_name": "Given name",
        "identity:family_name": "Family name",
        "identity:date_of_birth": "Date of birth",
        "identity:nationality": "Nationality",
        "identity:document": "Identity document",
        "identity:trust_level": "Trust level",
        "identity:age_over_18": "Over 18 (yes/no)",
        "identity:age_over_21": "Over 21 (yes/no)",
        "identity:age_over_25": "Over 25 (yes/no)",
        "identity:age_range": "Age range",
        "identity:is_eu_citizen": "EU citizen (yes/no)",
        "identity:name_initial": "Initials",
        "identity:email": "Email address",
        "identity:phone": "Phone number",
        "identity:basic": "Name and trust level",
        "identity:age_verification": "Over 18 and name",
        "identity:full": "Full identity",
    }
)
"""What each scope releases, in words a user reads before consenting."""

CLAIM_NAMES: frozenset[str] = frozenset(
    {
        "givenName",
        "familyName",
        "dateOfBirth",
        "nationality",
        "documentNumber",
        "documentType",
        "documentExpiry",
        "trustLevel",
        "email",
        "phoneNumber",
    }
)
"""The identity claims a credential may hold (the sources of every released claim)."""

SUPPORTED_CLAIMS: tuple[str, ...] = (
    "tokenId",
    *dict.fromkeys(claim for claims in SCOPE_CLAIMS.values() for claim in claims),
)
"""Every claim name that can appear in the ``idtoken`` object, for discovery's
``claims_supported``: ``tokenId``, then the claims of section 5 in table order."""

EU_MEMBER_STATES: frozenset[str] = frozenset(
    {
        "AUT", "BEL", "BGR", "HRV", "CYP", "CZE", "DNK", "EST", "FIN",
        "FRA", "DEU", "GRC", "HUN", "IRL", "ITA", "LVA", "LTU", "LUX",
        "MLT", "NLD", "POL", "PRT", "ROU", "SVK", "SVN", "ESP", "SWE",
    }
)  # fmt: skip
"""The EU-27 as ISO 3166-1 alpha-3 codes."""

# ICAO 9303 writes Germany as "D" (padded "D<<" in the MRZ) rather than "DEU"; a nationality
# copied from a German document's MRZ must still count as an EU citizenship.
_NATIONALITY_ALIASES: Mapping[str, str] = MappingProxyType({"D": "DEU"})

_AGE_THRESHOLDS: tuple[tuple[str, int], ...] = (
    ("age_over_18", 18),
    ("age_over_21", 21),
    ("age_over_25", 25),
)

# (lowest age of the bracket, label); the first bracket whose lower bound is reached, scanning
# from the top, is the answer.
_AGE_RANGES: tuple[tuple[int, str], ...] = (
    (65, "65+"),
    (55, "55-64"),
    (45, "45-54"),
    (35, "35-44"),
    (25, "25-34"),
    (18, "18-24"),
    (0, "<18"),
)

# Plain copies: the claim is the credential's value of the same name.
_COPIED_STRING_CLAIMS: frozenset[str] = frozenset(
    {
        "givenName",
        "familyName",
        "nationality",
        "documentNumber",
        "documentType",
        "documentExpiry",
        "email",
        "phoneNumber",
    }
)

_ISO_DATE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")

_TRUST_LEVELS: frozenset[int] = frozenset({1, 2, 3})


class ScopeError(ValueError):
    """A request's scope list is malformed. The message is safe to show to the client: it
    never echoes the offending value, only where it was."""


def canonical_scopes(value: object, *, max_count: int = 32) -> tuple[str, ...]:
    """Validate a request's ``scopes`` value and return it in canonical form.

    ``value`` must be a list of strings, each matching :data:`SCOPE_PATTERN`, with at most
    ``max_count`` entries (counted before duplicates are removed, so the work done on a hostile
    list stays bounded). Duplicates are removed keeping first-occurrence order. Membership in
    :data:`KNOWN_SCOPES` or in a service's allowed list is *not* checked here.

    Raises :class:`ScopeError` on any violation.
    """
    if not isinstance(value, list):
        raise ScopeError("scopes must be a list of strings")
    if len(value) > max_count:
        raise ScopeError(f"scopes must contain at most {max_count} entries")
    seen: dict[str, None] = {}
    for index, scope in enumerate(value):
        if not isinstance(scope, str):
            raise ScopeError(f"scopes[{index}] must be a string")
        if SCOPE_PATTERN.match(scope) is None:
            raise ScopeError(
                f"scopes[{index}] is not a valid scope: use 1 to 64 characters of a-z, 0-9, _ and :"
            )
        seen.setdefault(scope, None)
    return tuple(seen)


def expand(scopes: Iterable[str]) -> frozenset[str]:
    """Replace every composite scope by its members (recursively); keep plain scopes as given.

    Unknown scopes are kept as they are; they release no claims in :func:`claims_for`.
    """
    _reject_bare_string(scopes)
    result: set[str] = set()
    pending = list(scopes)
    while pending:
        scope = pending.pop()
        if scope in COMPOSITES:
            # A composite is never itself a claim-bearing scope; only its members are kept.
            pending.extend(member for member in COMPOSITES[scope] if member not in result)
        else:
            result.add(scope)
    return frozenset(result)


def claims_for(
    scopes: Iterable[str],
    identity: Mapping[str, Any],
    *,
    token_id: str,
    today: datetime.date,
) -> dict[str, Any]:
    """Build the JWT's ``idtoken`` object for the granted ``scopes``.

    The result is ``{"tokenId": token_id}`` plus exactly the claims of the expanded scopes that
    ``identity`` (the credential's claims, keyed by :data:`CLAIM_NAMES`) can supply. A claim
    whose source is absent or unusable is omitted, never ``null``. Derived claims are computed
    at ``today`` and never release their source. A malformed ``dateOfBirth`` omits the age
    claims rather than raising. Scopes not in the catalogue release nothing.
    """
    wanted = {claim for scope in expand(scopes) for claim in SCOPE_CLAIMS.get(scope, ())}
    result: dict[str, Any] = {"tokenId": token_id}
    available = _released_values(wanted, identity, today)
    # Emit in the catalogue's order so that equal grants give byte-identical payloads.
    for claim in SUPPORTED_CLAIMS:
        if claim in wanted and claim in available:
            result[claim] = available[claim]
    return result


def scope_string(scopes: Iterable[str]) -> str:
    """The space-separated form of ``scopes`` in the given order (the JWT's ``scope`` claim).

    Each scope must match :data:`SCOPE_PATTERN` (so none can contain a space or ``|``);
    otherwise :class:`ScopeError` is raised.
    """
    _reject_bare_string(scopes)
    items = list(scopes)
    for index, scope in enumerate(items):
        if not isinstance(scope, str) or SCOPE_PATTERN.match(scope) is None:
            raise ScopeError(f"scopes[{index}] is not a valid scope")
    return " ".join(items)


def _reject_bare_string(scopes: Iterable[str]) -> None:
    # A str is an Iterable[str] of single characters: accepting one silently would turn
    # "identity:name" into letters. Fail loudly instead.
    if isinstance(scopes, str):
        raise TypeError("expected an iterable of scopes, not a single string")


def _released_values(
    wanted: set[str], identity: Mapping[str, Any], today: datetime.date
) -> dict[str, Any]:
    """The value of each wanted claim that ``identity`` can supply; others are left out."""
    values: dict[str, Any] = {}
    for claim in wanted & _COPIED_STRING_CLAIMS:
        text = _text(identity.get(claim))
        if text is not None:
            values[claim] = text

    birth_date = _birth_date(identity.get("dateOfBirth"), today)
    if birth_date is not None:
        if "dateOfBirth" in wanted:
            values["dateOfBirth"] = birth_date.isoformat()
        age = _age(birth_date, today)
        for claim, threshold in _AGE_THRESHOLDS:
            values[claim] = age >= threshold
        values["ageRange"] = _age_range(age)

    trust_level = identity.get("trustLevel")
    if type(trust_level) is int and trust_level in _TRUST_LEVELS:
        values["trustLevel"] = trust_level

    nationality = _text(identity.get("nationality"))
    if nationality is not None:
        values["isEuCitizen"] = _is_eu_nationality(nationality)

    initial = _name_initial(_text(identity.get("givenName")), _text(identity.get("familyName")))
    if initial is not None:
        values["nameInitial"] = initial
    return values


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _birth_date(value: object, today: datetime.date) -> datetime.date | None:
    """A date of birth from ``YYYY-MM-DD`` (or a ``date``), or ``None`` if it is unusable.

    A birth date after ``today`` is treated as malformed: it cannot yield a truthful age.
    """
    if isinstance(value, datetime.datetime):
        return None
    if isinstance(value, datetime.date):
        parsed = value
    elif isinstance(value, str) and _ISO_DATE.match(value):
        # The regex first: date.fromisoformat also accepts "20000101" and week dates.
        try:
            parsed = datetime.date.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed <= today else None


def _age(birth_date: datetime.date, today: datetime.date) -> int:
    """Completed years at ``today``; the birthday itself counts.

    Someone born on 29 February becomes a year older on 1 March in common years (the rule of
    e.g. English and German law), since (2, 28) < (2, 29) and (3, 1) > (2, 29).
    """
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - int(before_birthday)


def _age_range(age: int) -> str:
    for lowest, label in _AGE_RANGES:
        if age >= lowest:
            return label
    return "<18"  # unreachable for age >= 0; kept so the function is total


def _is_eu_nationality(nationality: str) -> bool:
    code = nationality.strip().rstrip("<").upper()
    code = _NATIONALITY_ALIASES.get(code, code)
    return code in EU_MEMBER_STATES


def _name_initial(given: str | None, family: str | None) -> str | None:
    """``"M. C."`` from Mario Casola; ``"M."`` when only one name gives an initial."""
    initials = [initial for initial in (_initial(given), _initial(family)) if initial is not None]
    return " ".join(f"{initial}." for initial in initials) or None


def _initial(name: str | None) -> str | None:
    """The first letter of ``name`` (with any combining accents), upper-cased."""
    if name is None:
        return None
    text = unicodedata.normalize("NFC", name)
    for position, char in enumerate(text):
        if char.isalpha():
            end = position + 1
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1
            return unicodedata.normalize("NFC", text[position:end].upper())
    return None
