"""The IDToken protocol's issued JWT (wire contract §1) and the approval that carries it.

The browser's socket receives it in the ``approved`` message; the relying party verifies it
against the JWKS. It holds only the consented claims, in its ``idtoken`` object.

The approval is kept with the session until it is delivered (at most ``RESULT_KEEP`` after the
decision), and it holds those claims: so it is kept *sealed* with the operator secret, as
``{"type": "approved", "sealed": …}``, and the socket opens it as it delivers it. The store
never holds an identity claim in the clear (wire contract §2).
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
from idtoken.oidc.secret import OperatorSecret
from idtoken.scopes import claims_for, scope_string
from idtoken.settings import ServiceSettings
from idtoken.store.base import SessionRecord


def idtoken_claims(
    credential: Credential, granted: list[str], token_id: str, now: float
) -> dict[str, Any]:
    """The ``idtoken`` object: ``tokenId`` and exactly the granted scopes' claims."""
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).date()
    return claims_for(granted, credential.claims, token_id=token_id, today=today)


def _purpose(session_id: str) -> str:
    return f"approved:{session_id}"


def open_final(secret: OperatorSecret, session_id: str, final: str) -> str:
    """The terminal message to deliver: an approval kept sealed is opened; anything else
    (rejected, expired, an OpenID Connect approval) is as stored."""
    message = json.loads(final)
    sealed = message.get("sealed") if message.get("type") == "approved" else None
    if not isinstance(sealed, str):
        return final
    return secret.open(_purpose(session_id), sealed).decode("utf-8")


class IssuedJwtMaker:
    """The :class:`~idtoken.doors.GrantMaker` of ``/auth/initiate`` sessions."""

    def __init__(self, issuer: str, keys: SigningKeys, secret: OperatorSecret) -> None:
        self._issuer = issuer
        self._keys = keys
        self._secret = secret

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
        text = json.dumps(final, separators=(",", ":")).encode("utf-8")
        sealed = self._secret.seal(_purpose(session.session_id), text)
        return Approval(json.dumps({"type": "approved", "sealed": sealed}, separators=(",", ":")))
