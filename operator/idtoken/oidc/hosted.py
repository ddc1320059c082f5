"""The hosted login page's three steps, framework-free.

1. ``GET /authorize`` checks the request (:mod:`idtoken.oidc.authorize`) and shows the page,
   which carries the checked request sealed as a *handle*: any instance can serve the next
   steps, and nothing is stored before the user gives a token ID.
2. ``POST /authorize/session`` (from the page): the handle and a tokenId start the same
   session ``/auth/initiate`` starts — push, limits, the phone's signed consent — as an
   OpenID Connect session bound to the request. The page shows the code and waits on the
   session's WebSocket, as any IDToken browser does; a lost socket reconnects and still
   learns the stored decision.
3. ``POST /authorize/complete`` (from the page, once the socket reports the outcome, with the
   session's wsToken): the browser is sent to the client's redirect URI with the code, or with
   ``access_denied`` (``unmet_authentication_requirements`` when the user's trust level is
   below the request's ``acr_values``), always with ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from idtoken import ids
from idtoken.clock import Clock
from idtoken.doors import Door
from idtoken.errors import InvalidRequest, OperatorError, UnknownService
from idtoken.login import TRUST_TOO_LOW, Initiated, LoginService
from idtoken.oidc.authorize import AuthorizationRequest, redirect_to
from idtoken.oidc.grants import CodeGrants
from idtoken.oidc.secret import OperatorSecret, SealError
from idtoken.settings import ServiceSettings, Settings
from idtoken.store.base import SessionRecord, Store

_FOR_HANDLE = "authorization request"

_DENIED = {
    "User rejected": ("access_denied", "the user declined on their phone"),
    "Not me": ("access_denied", "the user reported the request as not theirs"),
    "Invalid OTP": ("access_denied", "the approval failed"),
    "Too many attempts": ("access_denied", "the approval failed"),
    TRUST_TOO_LOW: (
        "unmet_authentication_requirements",
        "the user's identity is not proven to the level the acr_values ask for",
    ),
}


class StillPending(OperatorError):
    code, status = "authorization_pending", 409


class UnknownLogin(OperatorError):
    code, status = "invalid_request", 404


@dataclass(frozen=True)
class Started:
    initiated: Initiated
    service: ServiceSettings


class HostedLogin:
    """The hosted page's steps; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        login: LoginService,
        store: Store,
        secret: OperatorSecret,
        codes: CodeGrants,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._login = login
        self._store = store
        self._secret = secret
        self._codes = codes
        self._clock = clock

    def handle(self, request: AuthorizationRequest) -> str:
        # The expiry, a newline, the request's JSON (which has no raw newline): the request is
        # escaped once, so the largest one /authorize accepts fits MAX_SEALED_LENGTH.
        expires = self._clock.now() + self._settings.oidc.request_ttl
        body = f"{expires!r}\n{request.to_json()}"
        return self._secret.seal(_FOR_HANDLE, body.encode())

    def _request_of(self, handle: str) -> AuthorizationRequest:
        try:
            expiry, _, text = self._secret.open(_FOR_HANDLE, handle).decode().partition("\n")
            request = AuthorizationRequest.from_json(text)
            expires = float(expiry)
        except (SealError, ValueError, KeyError, TypeError):
            raise InvalidRequest(
                "this login page is not valid; start again from the site"
            ) from None
        if self._clock.now() >= expires:
            raise InvalidRequest("this login page has expired; start again from the site")
        return request

    async def start(self, handle: str, token_id: str) -> Started:
        request = self._request_of(handle)
        service = self._settings.services.get(request.client_id)
        if service is None:
            raise UnknownService("the site is no longer registered")
        door = Door("oidc", front=request.to_json(), min_trust_level=request.min_trust_level)
        initiated = await self._login.initiate(
            service, token_id, request.scopes, request.nonce, door=door
        )
        return Started(initiated, service)

    async def complete(self, session_id: str, ws_token: str) -> str:
        """Where the browser goes now: the client's redirect URI with the outcome."""
        session = (
            await self._store.find_session(session_id) if ids.ID_PATTERN.match(session_id) else None
        )
        digest = hashlib.sha256(ws_token.encode("utf-8", "replace")).hexdigest()
        if session is None or session.kind != "oidc" or session.front is None:
            raise UnknownLogin("no such login; start again from the site")
        if not ids.same_secret(digest, session.ws_token_sha256):
            raise UnknownLogin("no such login; start again from the site")
        request = AuthorizationRequest.from_json(session.front)
        if session.state == "pending" and self._clock.now() >= session.expires_at:
            session = await self._login.expire(session) or session
        base = {"state": request.state, "iss": self._settings.issuer}
        if session.state == "approved" and session.code is not None:
            code = self._codes.code_for_page(session.session_id, session.code)
            return redirect_to(request.redirect_uri, {"code": code, **base})
        if session.state == "pending":
            raise StillPending("the login is still waiting for the phone")
        error, description = self._outcome(session)
        return redirect_to(
            request.redirect_uri, {"error": error, "error_description": description, **base}
        )

    @staticmethod
    def _outcome(session: SessionRecord) -> tuple[str, str]:
        if session.state == "rejected" and session.result is not None:
            reason = json.loads(session.result).get("reason")
            return _DENIED.get(reason, ("access_denied", "the login was refused"))
        return "access_denied", "the login request expired before it was approved"
