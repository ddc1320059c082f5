"""What an OpenID Connect or CIBA approval issues: the ID token, the access token and the token
response, built on the instance that verified the phone's approval (the only moment the
consented claims are in hand) and kept sealed until the client collects them.

- The **ID token** (OpenID Connect Core §2, §3.1.3.6): ES256 with the operator's signing keys,
  ``aud`` = the client id, ``auth_time`` = the approval, ``acr`` from the credential's trust
  level, ``amr`` (RFC 8176), ``at_hash``, the consented claims as standard claims and in the
  ``idtoken`` object.
- The **access token** is opaque: the subject, client, scope, expiry and consented claims,
  sealed with the operator secret. It is good for ``/userinfo`` alone, until the token's
  expiry (the service's ``token_ttl``), and can be revoked (a replayed code).
- With ``subject_type = "pairwise"`` the ``sub`` is the pairwise subject of the service's
  sector, and the ``idtoken`` object leaves out the ``tokenId`` (it would link the sectors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from idtoken.enrollment.credential import Credential
from idtoken.issued_jwt import idtoken_claims
from idtoken.keys.signing import SigningKeys
from idtoken.oidc.claims import acr_for, amr_for, granted_scope, standard_claims
from idtoken.oidc.secret import OperatorSecret, SealError
from idtoken.settings import ServiceSettings
from idtoken.store.base import SessionRecord

# Purposes of sealed values (the associated data of each).
FOR_ACCESS = "access_token"
FOR_GRANT = "grant"
FOR_CODE = "code"
FOR_AUTH_REQ = "auth_req_id"
_LOCATED_CACHE = 20_000


class InvalidAccessToken(Exception):
    """Forged, expired, or not an access token of ours."""


@dataclass(frozen=True)
class AccessGrant:
    """What an access token carries."""

    sub: str
    client_id: str
    scope: str
    exp: int
    jti: str
    claims: Mapping[str, Any]


def _half_hash(value: str) -> str:
    """``at_hash``: the left half of the SHA-256 of the ASCII value, base64url (§3.1.3.6)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def grant_hash(secret: str) -> str:
    """What the store keeps of a code or an ``auth_req_id``."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class TokenIssuer:
    """Issues and reads the tokens of OpenID Connect and CIBA logins."""

    def __init__(self, issuer: str, keys: SigningKeys, secret: OperatorSecret) -> None:
        self._issuer = issuer
        self._keys = keys
        self._secret = secret
        # A CIBA client polls the same auth_req_id every few seconds: what it was found to
        # name is kept (an exact match of the whole handle), so a poll does not decrypt again.
        self._located: OrderedDict[str, tuple[str, str, str]] = OrderedDict()

    # ---- locations: a code or auth_req_id says which session it collects ------------------
    def locator(self, purpose: str, token_id: str, session_id: str, client_id: str) -> str:
        """A sealed, unguessable handle on a session (its token and id) for one client."""
        where = json.dumps([token_id, session_id, client_id], separators=(",", ":"))
        return self._secret.seal(purpose, where.encode())

    def locate(self, purpose: str, handle: str) -> tuple[str, str, str]:
        """The (token id, session id, client id) of a handle; :class:`SealError` if it is not
        one of ours for ``purpose``."""
        if purpose == FOR_AUTH_REQ:
            found = self._located.get(handle)
            if found is None:
                found = self._open_location(purpose, handle)
                self._located[handle] = found
                if len(self._located) > _LOCATED_CACHE:
                    self._located.popitem(last=False)
            return found
        return self._open_location(purpose, handle)

    def _open_location(self, purpose: str, handle: str) -> tuple[str, str, str]:
        try:
            where = json.loads(self._secret.open(purpose, handle))
        except ValueError:
            raise SealError("malformed") from None
        if not (
            isinstance(where, list) and len(where) == 3 and all(isinstance(x, str) for x in where)
        ):
            raise SealError("malformed")
        return where[0], where[1], where[2]

    def subject(self, service: ServiceSettings, token_id: str) -> str:
        if service.subject_type == "pairwise":
            return self._secret.pairwise_subject(service.sector, token_id)
        return token_id

    # ---- issuing ---------------------------------------------------------------------------
    def kept_grant(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
        *,
        backchannel: bool,
    ) -> dict[str, str]:
        """The grant fields every approval of the standard doors stores: the token response,
        sealed and bound to the session until it is collected (``grant``, read back by
        :meth:`open_grant`), and its access token's id (``atj``, to revoke it)."""
        response, jti, exp = self._token_response(
            session, service, credential, granted, now, backchannel=backchannel
        )
        body = json.dumps({"r": response, "exp": exp}, separators=(",", ":")).encode()
        return {"grant": self._secret.seal(f"{FOR_GRANT}:{session.session_id}", body), "atj": jti}

    def _token_response(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
        *,
        backchannel: bool,
    ) -> tuple[dict[str, Any], str, int]:
        """The token response of an approval (its ``expires_in`` counted from ``now``), the
        access token's id and its expiry."""
        iat = int(now)
        exp = iat + service.token_ttl
        sub = self.subject(service, session.token_id)
        idtoken = idtoken_claims(credential, granted, session.token_id, now)
        if service.subject_type == "pairwise":
            idtoken.pop("tokenId", None)
        released = {**standard_claims(idtoken), "idtoken": idtoken}
        scope = granted_scope(granted)
        jti = secrets.token_urlsafe(16)
        access = self._secret.seal(
            FOR_ACCESS,
            json.dumps(
                {
                    "sub": sub,
                    "cid": service.id,
                    "scope": scope,
                    "exp": exp,
                    "jti": jti,
                    "claims": released,
                },
                separators=(",", ":"),
            ).encode(),
        )
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": sub,
            "aud": service.id,
            "exp": exp,
            "iat": iat,
            "auth_time": iat,
            "jti": secrets.token_urlsafe(16),
            "acr": acr_for(credential.trust_level),
            "amr": amr_for("display" if backchannel else service.otp_mode, backchannel=backchannel),
            "at_hash": _half_hash(access),
        }
        if session.nonce is not None:
            claims["nonce"] = session.nonce
        claims.update(released)
        response = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": service.token_ttl,
            "id_token": self._keys.sign(claims, typ="JWT"),
            "scope": scope,
        }
        return response, jti, exp

    def open_grant(self, session_id: str, sealed: str, now: float) -> dict[str, Any]:
        """The token response kept with an approval, ``expires_in`` counted down to ``now``."""
        kept = json.loads(self._secret.open(f"{FOR_GRANT}:{session_id}", sealed))
        response: dict[str, Any] = kept["r"]
        response["expires_in"] = max(0, int(kept["exp"] - now))
        return response

    # ---- reading an access token ----------------------------------------------------------
    def read_access_token(self, token: str, now: float) -> AccessGrant:
        try:
            data = json.loads(self._secret.open(FOR_ACCESS, token))
            grant = AccessGrant(
                sub=data["sub"],
                client_id=data["cid"],
                scope=data["scope"],
                exp=int(data["exp"]),
                jti=data["jti"],
                claims=data["claims"],
            )
        except (SealError, ValueError, KeyError, TypeError):
            raise InvalidAccessToken("not an access token of this operator") from None
        if now >= grant.exp:
            raise InvalidAccessToken("expired")
        return grant
