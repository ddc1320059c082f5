"""Enrollment tokens: who an issuer says the user is, verified and mapped to our claim names.

An integration server's JWT (seed 000) carries ``sub``, ``iss``, ``aud``, ``exp`` (required),
``jti`` (required, single use), and optionally ``name``, ``given_name``, ``family_name``,
``birthdate``, ``nationality``, ``email``, ``phone_number``. Every failure is one opaque
:class:`~idtoken.errors.InvalidEnrollmentToken`; the precise reason goes to the log.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idtoken import jose
from idtoken.enrollment.issuers import StaticIssuer
from idtoken.errors import InvalidEnrollmentToken
from idtoken.ids import ID_PATTERN

_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_ALPHA3 = re.compile(r"\A[A-Z]{3}\Z")
_JTI_MAX = 256
_TEXT_MAX = 256
# KYC results can be large (document data, certificates); the request body cap is 64 KiB.
MAX_TOKEN_LENGTH = 48 * 1024


@dataclass(frozen=True)
class Assertion:
    """A verified statement about a user, ready to be bound to a device key."""

    issuer: str
    subject: str | None
    jti: str
    exp: int
    trust_level: int
    claims: Mapping[str, Any] = field(default_factory=dict)
    document_expiry: datetime.date | None = None


def invalid(reason: str) -> InvalidEnrollmentToken:
    return InvalidEnrollmentToken("the enrollment token is not valid", log_detail=reason)


def issuer_of(jws: jose.CompactJWS) -> str:
    """The unverified ``iss``, used only to pick the key to verify with."""
    iss = jws.payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise invalid("missing_iss")
    return iss


def verify_integration_jwt(
    jws: jose.CompactJWS, issuer: StaticIssuer, *, now: float, leeway: int, max_lifetime: int
) -> Assertion:
    """Verify a seed-000 JWT already parsed by :func:`jose.parse_compact`."""
    try:
        issuer.check_kid(jws.header)  # a header check: before the signature
    except jose.JoseError as exc:
        raise invalid(exc.reason) from exc
    exp = check_signed_claims(
        jws,
        issuer.verifier,
        audience=issuer.settings.audience,
        now=now,
        leeway=leeway,
        max_lifetime=max_lifetime,
    )
    payload = jws.payload
    sub = payload.get("sub")
    if not isinstance(sub, str) or not ID_PATTERN.match(sub):
        raise invalid("bad_sub")
    return Assertion(
        issuer=issuer.settings.issuer,
        subject=sub,
        jti=require_jti(payload),
        exp=exp,
        trust_level=issuer.settings.trust_level,
        claims=integration_claims(payload),
    )


def check_signed_claims(
    jws: jose.CompactJWS,
    verifier: jose.Verifier,
    *,
    audience: str,
    now: float,
    leeway: int,
    max_lifetime: int,
) -> int:
    """What every enrollment token must pass: its ``typ`` (absent or ``JWT``), its signature
    by the verifier pinned for its issuer, ``aud``, and the times; returns ``exp``."""
    check_typ(jws)
    try:
        verifier.verify(jws)
        check_audience(jws.payload, audience)
        jose.check_times(jws.payload, now=now, leeway=leeway, max_lifetime=max_lifetime)
        exp = jose.numeric_date(jws.payload, "exp", required=True)
    except jose.JoseError as exc:
        raise invalid(exc.reason) from exc
    assert exp is not None
    return exp


def check_typ(jws: jose.CompactJWS) -> None:
    """Enrollment tokens are JWTs: ``typ`` absent or ``JWT`` (our credential's differs, J14)."""
    typ = jws.header.get("typ")
    if typ is not None and typ != "JWT":
        raise invalid("wrong_typ")


def check_audience(payload: Mapping[str, Any], audience: str) -> None:
    aud = payload.get("aud")
    if isinstance(aud, str):
        ok = aud == audience
    elif isinstance(aud, list):
        ok = all(isinstance(a, str) for a in aud) and audience in aud
    else:
        raise jose.JoseError("missing_aud")
    if not ok:
        raise jose.JoseError("wrong_aud")


def require_jti(payload: Mapping[str, Any]) -> str:
    jti = payload.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _JTI_MAX:
        raise invalid("missing_jti")
    return jti


def integration_claims(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Map seed-000 / OIDC claim names to ours; a malformed claim refuses the token."""
    claims: dict[str, Any] = {}
    for source, target in (
        ("given_name", "givenName"),
        ("family_name", "familyName"),
        ("email", "email"),
        ("phone_number", "phoneNumber"),
    ):
        value = payload.get(source)
        if value is not None:
            claims[target] = _text(source, value)
    name = payload.get("name")
    if name is not None and "givenName" not in claims and "familyName" not in claims:
        # A full name is split on its last space: "Marie Anne Dupont" -> Marie Anne / Dupont.
        parts = _text("name", name).strip().rsplit(" ", 1)
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            claims["givenName"], claims["familyName"] = parts[0].strip(), parts[1].strip()
        else:
            claims["givenName"] = parts[0].strip()
    birthdate = payload.get("birthdate")
    if birthdate is not None:
        claims["dateOfBirth"] = iso_date("birthdate", birthdate).isoformat()
    nationality = payload.get("nationality")
    if nationality is not None:
        if not isinstance(nationality, str) or not _ALPHA3.match(nationality):
            raise invalid("bad_nationality")
        claims["nationality"] = nationality
    return claims


def iso_date(name: str, value: object) -> datetime.date:
    if not isinstance(value, str) or not _DATE.match(value):
        raise invalid(f"bad_{name}")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as exc:
        raise invalid(f"bad_{name}") from exc


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _TEXT_MAX:
        raise invalid(f"bad_{name}")
    if any(ord(ch) < 0x20 for ch in value):
        raise invalid(f"bad_{name}")
    return value
