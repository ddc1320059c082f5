"""The device credential: an operator-signed statement binding an identity to a device key.

The phone keeps it and presents it with every approval, so the operator keeps no identity
claims at rest. Its ``typ`` (``idtoken-credential+jwt``) differs from our ID tokens' (``JWT``),
so one can never be passed off as the other. Layout of the payload::

    iss         the operator's issuer URL
    sub         the tokenId
    aud         "idtoken-credential" (only the operator consumes it)
    iat, exp    NumericDate; exp = the document's expiry or the configured maximum age
    jti         random; the store keeps the current one per token, so a replaced credential dies
    cnf.jwk     the device's public key (RFC 7800)
    src         the enrollment issuer
    trustLevel  1, 2 or 3
    givenName, familyName, dateOfBirth, ... the identity claims (see docs/enrollment.md)
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from idtoken import jose
from idtoken.keys.device import DeviceKeyError, jwk_thumbprint
from idtoken.keys.signing import SigningKeys
from idtoken.scopes import CLAIM_NAMES

CREDENTIAL_TYP = "idtoken-credential+jwt"
CREDENTIAL_AUD = "idtoken-credential"
MAX_CREDENTIAL_LENGTH = 8192


@dataclass(frozen=True)
class Credential:
    token_id: str
    jti: str
    exp: int
    trust_level: int
    device_jwk: Mapping[str, str]
    key_thumbprint: str
    claims: Mapping[str, Any]


def issue_credential(
    keys: SigningKeys,
    *,
    issuer: str,
    token_id: str,
    source: str,
    trust_level: int,
    claims: Mapping[str, Any],
    device_jwk: Mapping[str, str],
    now: float,
    exp: int,
) -> tuple[str, str]:
    """Sign a credential; returns ``(compact JWS, jti)``."""
    jti = secrets.token_urlsafe(16)
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": token_id,
        "aud": CREDENTIAL_AUD,
        "iat": int(now),
        "exp": exp,
        "jti": jti,
        "cnf": {"jwk": dict(device_jwk)},
        "src": source,
        "trustLevel": trust_level,
    }
    payload.update({k: v for k, v in claims.items() if k in CLAIM_NAMES and k != "trustLevel"})
    return keys.sign(payload, typ=CREDENTIAL_TYP), jti


def verify_credential(keys: SigningKeys, token: object, *, issuer: str, now: float) -> Credential:
    """Verify a credential we issued; raises :class:`jose.JoseError`."""
    payload = keys.verify(token, typ=CREDENTIAL_TYP, max_length=MAX_CREDENTIAL_LENGTH)
    if payload.get("iss") != issuer or payload.get("aud") != CREDENTIAL_AUD:
        raise jose.JoseError("wrong_issuer_or_audience")
    jose.check_times(payload, now=now, leeway=0)
    exp = jose.numeric_date(payload, "exp", required=True)
    sub, jti, cnf = payload.get("sub"), payload.get("jti"), payload.get("cnf")
    trust = payload.get("trustLevel")
    if not isinstance(sub, str) or not isinstance(jti, str) or not isinstance(cnf, Mapping):
        raise jose.JoseError("malformed_credential")
    jwk = cnf.get("jwk")
    if not isinstance(jwk, Mapping) or isinstance(trust, bool) or trust not in (1, 2, 3):
        raise jose.JoseError("malformed_credential")
    assert exp is not None
    try:
        thumbprint = jwk_thumbprint(jwk)
    except DeviceKeyError as exc:
        raise jose.JoseError("malformed_credential") from exc
    return Credential(
        token_id=sub,
        jti=jti,
        exp=exp,
        trust_level=int(trust),
        device_jwk=jwk,
        key_thumbprint=thumbprint,
        claims={k: v for k, v in payload.items() if k in CLAIM_NAMES},
    )
