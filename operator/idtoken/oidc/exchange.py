"""The token endpoint's grants and ``/userinfo``, framework-free.

Collecting a result is one store round trip (:meth:`Store.redeem
<idtoken.store.base.Store.redeem>`): the code or ``auth_req_id`` says where its session is,
the store hands out the sealed token response once across every instance, and this module
opens it. A code is spent by its first use, whether or not the rest of the request is right:
a second use is ``invalid_grant`` and revokes the access token the first one got (RFC 6749
§4.1.2, RFC 9700 §4.5).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import Any

from idtoken import logs
from idtoken.clock import Clock
from idtoken.errors import InvalidGrant, InvalidRequest, InvalidToken
from idtoken.metrics import Metrics
from idtoken.oidc.authorize import AuthorizationRequest
from idtoken.oidc.secret import SealError
from idtoken.oidc.tokens import FOR_CODE, InvalidAccessToken, TokenIssuer, grant_hash
from idtoken.settings import ServiceSettings, Settings
from idtoken.store.base import RedeemOutcome, Store

log = logging.getLogger("idtoken.oidc")
security = logging.getLogger("idtoken.security")

AUTHORIZATION_CODE = "authorization_code"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
REVOKED_KEEP = 86400  # the longest token_ttl
CODE_VERIFIER = re.compile(r"\A[A-Za-z0-9\-._~]{43,128}\Z")  # RFC 7636 §4.1


def revoked_name(jti: str) -> str:
    return f"revoked-access:{jti}"


def check_code_verifier(verifier: str) -> str:
    """A PKCE ``code_verifier`` of the right form (RFC 7636 §4.1), or ``invalid_request``."""
    if not CODE_VERIFIER.match(verifier):
        raise InvalidRequest("code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]")
    return verifier


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TokenExchange:
    """The authorization code grant and ``/userinfo``."""

    def __init__(
        self, settings: Settings, store: Store, clock: Clock, tokens: TokenIssuer, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._tokens = tokens
        self._metrics = metrics

    async def authorization_code(
        self,
        client: ServiceSettings,
        code: str | None,
        redirect_uri: str | None,
        code_verifier: str | None,
    ) -> dict[str, Any]:
        if not code:
            raise InvalidRequest("code is required")
        if code_verifier is not None:
            check_code_verifier(code_verifier)
        now = self._clock.now()
        try:
            token_id, session_id, issued_to = self._tokens.locate(FOR_CODE, code)
        except SealError:
            raise InvalidGrant("the code is not valid") from None
        if issued_to != client.id:
            # Refused before it is spent: another client's attempt cannot burn the code.
            security.warning(
                "authorization code presented by another client",
                extra={"session_id": session_id, "client_id": client.id},
            )
            raise InvalidGrant("the code was issued to another client")
        r = await self._store.redeem(token_id, session_id, grant_hash=grant_hash(code), now=now)
        if r.outcome is RedeemOutcome.USED:
            if r.revoke is not None:
                await self._store.cache_put(revoked_name(r.revoke), "1", ttl=REVOKED_KEEP)
            security.warning(
                "authorization code used twice: its access token is revoked",
                extra={"session_id": session_id, "client_id": client.id},
            )
            raise InvalidGrant("the code has already been used")
        if r.outcome is not RedeemOutcome.ISSUED or r.grant is None or r.front is None:
            raise InvalidGrant("the code is not valid or has expired")
        request = AuthorizationRequest.from_json(r.front)
        # The code is spent from here on: a mismatch below cannot be retried with it.
        if redirect_uri is None or redirect_uri != request.redirect_uri:
            raise InvalidGrant("redirect_uri differs from the authorization request's")
        if request.code_challenge is None:
            if code_verifier is not None:  # RFC 9700 §2.1.1: no PKCE downgrade
                raise InvalidGrant("code_verifier given, but the request had no code_challenge")
        elif code_verifier is None or not hmac.compare_digest(
            s256(code_verifier).encode("ascii"), request.code_challenge.encode("ascii")
        ):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        response = self._tokens.open_grant(session_id, r.grant, now)
        self._collected(AUTHORIZATION_CODE, session_id, client)
        return response

    def _collected(self, grant_type: str, session_id: str, client: ServiceSettings) -> None:
        self._metrics.tokens_issued.labels(grant_type).inc()
        logs.event(
            log,
            "tokens collected",
            session_id=session_id,
            client_id=client.id,
            grant_type=grant_type,
        )

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The consented claims of a valid access token (``sub`` first)."""
        try:
            grant = self._tokens.read_access_token(access_token, self._clock.now())
        except InvalidAccessToken:
            raise InvalidToken("the access token is not valid") from None
        if grant.client_id not in self._settings.services:
            raise InvalidToken("the access token is not valid")
        if await self._store.cache_get(revoked_name(grant.jti)) is not None:
            raise InvalidToken("the access token has been revoked")
        return {"sub": grant.sub, **grant.claims}
