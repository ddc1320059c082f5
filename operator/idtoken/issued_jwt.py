"""The IDToken protocol's issued JWT (wire contract §1) and the approval that carries it.

The browser's socket receives it in the ``approved`` message; the relying party verifies it
against the JWKS. It holds only the consented claims, in its ``idtoken`` object.
"""

from __future__ import annotations

import datetime
import json
import secrets
from typing import Any

from idtoken import ids
from idtoken.doors import Approval
from idtoken.enrollment.credential import Credential
from idtoken.keys.signing import SigningKeys
from idtoken.scopes import claims_for, scope_string
from idtoken.settings import ServiceSettings
from idtoken.store.base import SessionRecord


def idtoken_claims(
    credential: Credential, granted: list[str], token_id: str, now: float
) -> dict[str, Any]:
    """The ``idtoken`` object: ``tokenId`` and exactly the granted scopes' claims."""
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).date()
    return claims_for(granted, credential.claims, token_id=token_id, today=today)


class IssuedJwtMaker:
    """The :class:`~idtoken.doors.GrantMaker` of ``/auth/initiate`` sessions."""

    def __init__(self, issuer: str, keys: SigningKeys) -> None:
        self._issuer = issuer
        self._keys = keys

    def approval(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
    ) -> Approval:
        iat = int(now)
        exp = iat + service.token_ttl
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": session.token_id,
            "aud": service.audience,
            "iat": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
            "sid": session.session_id,
            "scope": scope_string(granted),
        }
        if session.nonce is not None:
            claims["nonce"] = session.nonce
        claims["idtoken"] = idtoken_claims(credential, granted, session.token_id, now)
        jwt = self._keys.sign(claims, typ="JWT")
        final = {
            "type": "approved",
            "jwt": jwt,
            "random": session.random,
            "expiresAt": ids.iso_z(exp),
        }
        return Approval(json.dumps(final, separators=(",", ":")))
