"""KYC enrollment: a provider's signed verification result (uqudo, seeds 002/003).

The provider signs its result as an RS256 JWS whose header names a ``kid`` from its JWKS.
Only the enrollment result (``data.documents``) enrolls a device; a face-session result
(``data.face`` alone) proves a face, not an identity, and is refused. The trust level comes
from the evidence, document by document (contract §5):

- 3: the chip was read (``reading.data.mrz``) and every passive-authentication check in
  ``reading.data.validity`` is ``true``, and ``face.match`` is ``true``;
- 2: the MRZ of the scanned page was verified (``scan.front.mrzVerified``) and ``face.match``
  is ``true``;
- anything less refuses the enrollment.

Claims come from the evidence that earned the level: at level 3 the chip's data, a field the
chip lacks taken from a verified scan; at level 2 the verified scan only, since a chip that
failed passive authentication may have been altered. Every refusal is the one opaque
:class:`~idtoken.errors.InvalidEnrollmentToken`; the reason goes to the log.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from idtoken import jose
from idtoken.clock import Clock
from idtoken.enrollment.assertion import (
    Assertion,
    check_signed_claims,
    check_typ,
    invalid,
    require_jti,
)
from idtoken.enrollment.jwks import RemoteJwks
from idtoken.errors import ConfigError, InvalidEnrollmentToken
from idtoken.settings import EnrollmentSettings, IssuerSettings
from idtoken.store.base import Store

__all__ = ["CHIP_CHECKS", "KycIssuer", "load_kyc_issuer", "uqudo_claims", "verify_kyc_jws"]

KYC_ALG = "RS256"
CHIP_CHECKS = (
    "dataGroupHashesSucceeded",
    "documentSignerSucceeded",
    "countrySignerSucceeded",
    "sodSignerSucceeded",
)
"""The passive-authentication checks that must all be ``true`` for trust level 3."""

_MAX_DOCUMENTS = 8
_YYMMDD = re.compile(r"\A\d{6}\Z")
_ALPHA3 = re.compile(r"\A[A-Z]{3}\Z")
_DOCUMENT_NUMBER = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
_DOCUMENT_TYPE = re.compile(r"\A[A-Za-z0-9_ -]{1,64}\Z")
_NAME_MAX = 256
# ICAO 9303 writes Germany as "D" (padded "D<<"); everything else is already alpha-3.
_ICAO_TO_ISO = {"D": "DEU"}


@dataclass(frozen=True)
class KycIssuer:
    """A KYC provider: its configuration and its remote key set."""

    settings: IssuerSettings
    jwks: RemoteJwks


def load_kyc_issuer(
    index: int,
    settings: IssuerSettings,
    enrollment: EnrollmentSettings,
    *,
    store: Store | None,
    clock: Clock,
) -> KycIssuer:
    """Build ``enrollment_issuers[index]`` (``format = "uqudo"``); errors name the key.

    Nothing is fetched here: the key set is fetched on the first enrollment, so that a
    provider outage cannot stop the operator from starting.
    """
    key_name = f"enrollment_issuers[{index}].jwks_uri"
    who = f"issuer {settings.issuer!r}"
    if settings.jwks_uri is None:
        raise ConfigError(key_name, f'{who}: format = "uqudo" needs a jwks_uri')
    try:
        jwks = RemoteJwks(
            settings.jwks_uri,
            store=store,
            clock=clock,
            cooldown=enrollment.jwks_cooldown,
            timeout=enrollment.jwks_timeout,
        )
    except ValueError as exc:
        raise ConfigError(key_name, f"{who}: {exc}") from exc
    return KycIssuer(settings=settings, jwks=jwks)


async def verify_kyc_jws(
    jws: jose.CompactJWS, issuer: KycIssuer, *, now: float, leeway: int, max_lifetime: int
) -> Assertion:
    """Verify a KYC JWS already parsed by :func:`jose.parse_compact` and map it to claims.

    Raises InvalidEnrollmentToken for every token failure and TemporarilyUnavailable when
    the provider's keys cannot be fetched for an unknown ``kid``.
    """
    header, payload = jws.header, jws.payload
    # Checked before any key lookup: a header alg other than RS256 never costs a fetch.
    if header.get("alg") != KYC_ALG:
        raise invalid("kyc_alg_not_rs256")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise invalid("kyc_missing_kid")
    check_typ(jws)  # every header check before a key is fetched
    if payload.get("iss") != issuer.settings.issuer:
        raise invalid("wrong_iss")
    try:
        verifier = await issuer.jwks.verifier(kid)
    except jose.JoseError as exc:
        raise invalid(exc.reason) from exc
    exp = check_signed_claims(
        jws,
        verifier,
        audience=issuer.settings.audience,
        now=now,
        leeway=leeway,
        max_lifetime=max_lifetime,
    )
    jti = require_jti(payload)
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).date()
    claims, level, expiry = uqudo_claims(payload, today=today)
    # For a KYC issuer the configured trust_level is the least it accepts (never below 2).
    minimum = max(2, issuer.settings.trust_level)
    if level < minimum:
        raise invalid(f"kyc_trust_level_{level}_below_{minimum}")
    return Assertion(
        issuer=issuer.settings.issuer,
        subject=None,
        jti=jti,
        exp=exp,
        trust_level=level,
        claims=claims,
        document_expiry=expiry,
    )


def uqudo_claims(
    payload: Mapping[str, Any], *, today: datetime.date
) -> tuple[dict[str, Any], int, datetime.date]:
    """Map a uqudo enrollment payload to ``(claims, trust level, document expiry)``.

    ``today`` decides the century of two-digit birth years and whether the document has
    expired. With several documents, the one with the highest trust level is used (the
    first on a tie); documents are never mixed. Raises InvalidEnrollmentToken.
    """
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise invalid("kyc_no_data")
    documents = data.get("documents")
    if documents is None:
        if "face" in data or "sessionId" in data:
            raise invalid("kyc_face_session_cannot_enroll")
        raise invalid("kyc_no_documents")
    if not isinstance(documents, list) or not documents:
        raise invalid("kyc_no_documents")
    if len(documents) > _MAX_DOCUMENTS:
        raise invalid("kyc_too_many_documents")
    best: tuple[dict[str, Any], int, datetime.date] | None = None
    first_refusal: InvalidEnrollmentToken | None = None
    for document in documents:
        try:
            result = _document_claims(document, today)
        except InvalidEnrollmentToken as exc:
            first_refusal = first_refusal or exc
            continue
        if best is None or result[1] > best[1]:
            best = result
    if best is None:
        assert first_refusal is not None
        raise first_refusal
    return best


def _document_claims(
    document: object, today: datetime.date
) -> tuple[dict[str, Any], int, datetime.date]:
    if not isinstance(document, Mapping):
        raise invalid("kyc_bad_document")
    face = document.get("face")
    if not isinstance(face, Mapping) or face.get("match") is not True:
        raise invalid("kyc_no_face_match")
    chip = _verified_chip(document)
    scan = _verified_scan(document)
    if chip is not None:
        level = 3
    elif scan is not None:
        level = 2
    else:
        raise invalid("kyc_document_not_verified")

    def pick(chip_name: str, scan_name: str) -> object:
        for source, name in ((chip, chip_name), (scan, scan_name)):
            if source is not None and source.get(name) not in (None, ""):
                return source[name]
        return None

    claims: dict[str, Any] = {}
    family = pick("primaryIdentifier", "primaryId")
    given = pick("secondaryIdentifier", "secondaryId")
    if family is not None:
        claims["familyName"] = _name("familyName", family)
    if given is not None:
        claims["givenName"] = _name("givenName", given)
    if not claims:
        raise invalid("kyc_no_name")
    birth = pick("dateOfBirth", "dateOfBirth")
    if birth is not None:
        claims["dateOfBirth"] = _birth_date(birth, today).isoformat()
    nationality = pick("nationality", "nationality")
    if nationality is not None:
        claims["nationality"] = _nationality(nationality)
    number = pick("documentNumber", "documentNumber")
    if not isinstance(number, str) or not _DOCUMENT_NUMBER.match(number.rstrip("<")):
        raise invalid("kyc_bad_documentNumber")
    claims["documentNumber"] = number.rstrip("<")
    doc_type = document.get("documentType")
    if doc_type is not None:
        if not isinstance(doc_type, str) or not _DOCUMENT_TYPE.match(doc_type):
            raise invalid("kyc_bad_documentType")
        claims["documentType"] = doc_type
    expiry_value = pick("dateOfExpiry", "dateOfExpiry")
    if expiry_value is None:
        raise invalid("kyc_no_dateOfExpiry")
    expiry = _expiry_date(expiry_value)
    if expiry < today:
        raise invalid("document_expired")
    claims["documentExpiry"] = expiry.isoformat()
    return claims, level, expiry


def _verified_chip(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``reading.data.mrz`` if every passive-authentication check passed, else None."""
    reading = document.get("reading")
    data = reading.get("data") if isinstance(reading, Mapping) else None
    if not isinstance(data, Mapping):
        return None
    mrz, validity = data.get("mrz"), data.get("validity")
    if not isinstance(mrz, Mapping) or not isinstance(validity, Mapping):
        return None
    if not all(validity.get(check) is True for check in CHIP_CHECKS):
        return None
    return mrz


def _verified_scan(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``scan.front`` if its MRZ was verified, else None."""
    scan = document.get("scan")
    front = scan.get("front") if isinstance(scan, Mapping) else None
    if not isinstance(front, Mapping) or front.get("mrzVerified") is not True:
        return None
    return front


def _name(claim: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > _NAME_MAX:
        raise invalid(f"kyc_bad_{claim}")
    # MRZ fillers separate name parts: "MARIO<LUIGI" is "MARIO LUIGI".
    name = " ".join(value.replace("<", " ").split())
    if not name or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise invalid(f"kyc_bad_{claim}")
    return name


def _yymmdd(claim: str, value: object) -> tuple[int, int, int]:
    if not isinstance(value, str) or not _YYMMDD.match(value):
        raise invalid(f"kyc_bad_{claim}")
    return int(value[:2]), int(value[2:4]), int(value[4:])


def _birth_date(value: object, today: datetime.date) -> datetime.date:
    """YYMMDD: a year after the current two-digit year is 19xx, otherwise 20xx; a 20xx date
    that would lie in the future (born later this year) is also 19xx."""
    yy, mm, dd = _yymmdd("dateOfBirth", value)
    try:
        if yy <= today.year % 100:
            born = datetime.date(2000 + yy, mm, dd)
            if born <= today:
                return born
        return datetime.date(1900 + yy, mm, dd)
    except ValueError as exc:
        raise invalid("kyc_bad_dateOfBirth") from exc


def _expiry_date(value: object) -> datetime.date:
    """YYMMDD, always 20xx (contract §5)."""
    yy, mm, dd = _yymmdd("dateOfExpiry", value)
    try:
        return datetime.date(2000 + yy, mm, dd)
    except ValueError as exc:
        raise invalid("kyc_bad_dateOfExpiry") from exc


def _nationality(value: object) -> str:
    if not isinstance(value, str):
        raise invalid("kyc_bad_nationality")
    code = value.rstrip("<")
    code = _ICAO_TO_ISO.get(code, code)
    if not _ALPHA3.match(code):
        raise invalid("kyc_bad_nationality")
    return code
