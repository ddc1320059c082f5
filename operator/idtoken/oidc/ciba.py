"""OpenID CIBA Core 1.0: the backchannel authentication request and the poll, framework-free.

A confidential client registered for CIBA asks the operator to log a user in with no browser
involved (§7): it names the user by ``login_hint`` (a tokenId), may show the user a
``binding_message`` on its own device, and gets an ``auth_req_id``. The session is the login
engine's: the same push, limits and phone approval, except that the phone shows the binding
message instead of a code to compare, and signs it (docs/mobile-app.md).

- An unknown, paused or locked token gets an answer like any other: the request then simply
  expires (no user enumeration); only a revoked token is refused, with ``access_denied``.
- Poll mode (§7.3, §11): the client polls the token endpoint; one store round trip a poll.
- Ping mode (§10.2): the operator notifies the client's endpoint once the request is decided
  (:mod:`idtoken.oidc.ping`); the client then collects the result as in poll mode.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from idtoken import ids
from idtoken.clock import Clock
from idtoken.doors import Door
from idtoken.errors import (
    AccessDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidBindingMessage,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    OperatorError,
    SlowDown,
    TokenRevoked,
    UnauthorizedClient,
)
from idtoken.login import LoginService
from idtoken.metrics import Metrics
from idtoken.oidc.claims import ScopeRequestError, identity_scopes, min_trust_level
from idtoken.oidc.exchange import CIBA_GRANT
from idtoken.oidc.secret import OperatorSecret, SealError
from idtoken.oidc.tokens import FOR_AUTH_REQ, TokenIssuer, grant_hash
from idtoken.settings import ServiceSettings, Settings
from idtoken.store.base import RedeemOutcome, Store

log = logging.getLogger("idtoken.oidc")

MAX_BINDING_MESSAGE = 64
MAX_NOTIFICATION_TOKEN = 1024
PENDING_RECHECK = 5.0
"""Seconds between the ping outbox's looks at a pending ping-mode request, from its creation:
a request ended by no decision of its own instance (another request's ``not_me``, a
revocation, an instance killed after deciding) is found within them."""
# RFC 6750 §2.1 b64token: what a Bearer credential may look like.
B64TOKEN = re.compile(r"\A[A-Za-z0-9\-._~+/]+=*\Z")
REQUESTED_EXPIRY = re.compile(r"\A[1-9][0-9]{0,5}\Z")  # seconds, a positive integer
_FOR_NOTIFICATION = "client notification token"
_FOR_PING = "auth_req_id for the ping"


class RevokedUser(AccessDenied):
    """CIBA §13: ``access_denied`` answers the backchannel request with 403."""

    status = 403


@dataclass(frozen=True)
class BackchannelRequest:
    """What a CIBA session keeps of its request (the session's ``front``)."""

    client_id: str
    mode: str  # "poll" or "ping"
    notification_token: str | None  # sealed
    auth_req_id: str | None  # sealed (ping mode: the notification names it)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BackchannelRequest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Accepted:
    auth_req_id: str
    expires_in: int
    interval: int


def check_binding_message(value: str) -> str:
    """1 to :data:`MAX_BINDING_MESSAGE` characters of letters, marks, numbers, punctuation,
    symbols and plain spaces: no control, format (bidirectional overrides), separator other
    than the space, or unassigned characters, which could make the phone show something else
    than the client's device."""
    if not 0 < len(value) <= MAX_BINDING_MESSAGE or value != value.strip():
        raise InvalidBindingMessage(
            f"binding_message must be 1 to {MAX_BINDING_MESSAGE} characters, without leading "
            "or trailing spaces"
        )
    for ch in value:
        category = unicodedata.category(ch)
        if ch != " " and category[0] not in "LMNPS":
            raise InvalidBindingMessage(
                "binding_message may hold only letters, digits, punctuation, symbols and spaces"
            )
    return unicodedata.normalize("NFC", value)


class Backchannel:
    """``/bc-authorize`` and the CIBA grant of the token endpoint."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        login: LoginService,
        tokens: TokenIssuer,
        secret: OperatorSecret,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._login = login
        self._tokens = tokens
        self._secret = secret
        self._metrics = metrics

    async def authorize(self, client: ServiceSettings, form: Mapping[str, str]) -> Accepted:
        mode = client.backchannel_token_delivery_mode
        if mode is None or client.token_endpoint_auth_method == "none":  # noqa: S105
            raise UnauthorizedClient("this client is not registered for CIBA")
        for unsupported in ("request", "request_uri"):
            if unsupported in form:
                raise InvalidRequest(f"{unsupported} is not supported")
        if "user_code" in form:
            raise InvalidRequest("user_code is not supported")
        hints = [h for h in ("login_hint", "login_hint_token", "id_token_hint") if h in form]
        if len(hints) != 1:
            raise InvalidRequest("exactly one of login_hint, login_hint_token, id_token_hint")
        if hints[0] != "login_hint":
            raise InvalidRequest(f"{hints[0]} is not supported: name the user by login_hint")
        token_id = form["login_hint"]
        if not ids.ID_PATTERN.match(token_id):
            raise InvalidRequest("login_hint must be a token ID (^[A-Za-z0-9._:@-]{1,128}$)")
        try:
            scopes = identity_scopes(form.get("scope", ""), client.allowed_scopes)
        except ScopeRequestError as exc:
            raise InvalidScope(str(exc)) from None
        binding = form.get("binding_message")
        if binding is not None:
            binding = check_binding_message(binding)
        notification = form.get("client_notification_token")
        if mode == "ping":
            if notification is None:
                raise InvalidRequest("client_notification_token is required in ping mode")
            if len(notification) > MAX_NOTIFICATION_TOKEN or not B64TOKEN.match(notification):
                raise InvalidRequest(
                    "client_notification_token must be a Bearer token of at most 1024 characters"
                )
        expiry = client.session_ttl
        if "requested_expiry" in form:
            text = form["requested_expiry"]
            if not REQUESTED_EXPIRY.match(text):
                raise InvalidRequest("requested_expiry must be a positive integer")
            expiry = max(10, min(int(text), client.session_ttl))

        fresh = ids.new_session_secrets()
        auth_req_id = self._tokens.locator(FOR_AUTH_REQ, token_id, fresh.session_id, client.id)
        front = BackchannelRequest(
            client_id=client.id,
            mode=mode,
            notification_token=self._seal(_FOR_NOTIFICATION, fresh.session_id, notification),
            auth_req_id=self._seal(
                _FOR_PING, fresh.session_id, auth_req_id if mode == "ping" else None
            ),
        )
        door = Door(
            "ciba",
            front=front.to_json(),
            binding_message=binding,
            min_trust_level=min_trust_level(form.get("acr_values", "")),
            grant_hash=grant_hash(auth_req_id),
        )
        lifetime = _with_session_ttl(client, expiry)
        if mode == "ping":
            # In the outbox before the session exists: a session is never pushed to the phone
            # without its ping queued. An entry whose session was never created is dropped by
            # the first instance that looks at it.
            first_look = self._clock.now() + min(expiry, PENDING_RECHECK)
            await self._store.schedule_ping(token_id, fresh.session_id, at=first_look)
        try:
            started = await self._login.initiate(
                lifetime, token_id, scopes, None, door=door, fresh=fresh
            )
        except TokenRevoked:
            raise RevokedUser("the user's token is revoked") from None
        return Accepted(auth_req_id, int(started.expires_at - self._clock.now()), self._interval)

    @property
    def _interval(self) -> int:
        return self._settings.oidc.ciba_interval

    def _seal(self, purpose: str, session_id: str, value: str | None) -> str | None:
        return (
            None if value is None else self._secret.seal(f"{purpose}:{session_id}", value.encode())
        )

    def unseal(self, purpose: str, session_id: str, value: str) -> str:
        return self._secret.open(f"{purpose}:{session_id}", value).decode("utf-8")

    def notification_of(
        self, session_id: str, request: BackchannelRequest
    ) -> tuple[str, str] | None:
        """The ``(auth_req_id, client_notification_token)`` a ping sends, or None."""
        if request.auth_req_id is None or request.notification_token is None:
            return None
        return (
            self.unseal(_FOR_PING, session_id, request.auth_req_id),
            self.unseal(_FOR_NOTIFICATION, session_id, request.notification_token),
        )

    async def poll(self, client: ServiceSettings, auth_req_id: str | None) -> dict[str, Any]:
        """The token endpoint's CIBA grant: the tokens once, or the state as an error."""
        if client.backchannel_token_delivery_mode is None:
            raise UnauthorizedClient("this client is not registered for CIBA")
        if not auth_req_id:
            raise InvalidRequest("auth_req_id is required")
        try:
            token_id, session_id, issued_to = self._tokens.locate(FOR_AUTH_REQ, auth_req_id)
        except SealError:
            raise InvalidGrant("auth_req_id is not valid") from None
        if issued_to != client.id:
            raise InvalidGrant("auth_req_id was issued to another client")
        now = self._clock.now()
        r = await self._store.redeem(
            token_id,
            session_id,
            grant_hash=grant_hash(auth_req_id),
            now=now,
            poll_interval=self._interval,
            max_interval=self._settings.oidc.ciba_max_interval,
        )
        if r.outcome is RedeemOutcome.ISSUED and r.grant is not None:
            response = self._tokens.open_grant(session_id, r.grant, now)
            self._metrics.tokens_issued.labels(CIBA_GRANT).inc()
            log.info(
                "tokens collected",
                extra={"session_id": session_id, "client_id": client.id, "grant_type": CIBA_GRANT},
            )
            return response
        if r.outcome is RedeemOutcome.EXPIRED and r.decided:
            session = await self._store.get_session(token_id, session_id)
            if session is not None:
                self._login.decisions.expired(session)
        raise _poll_error(r.outcome, r.interval)


def _poll_error(outcome: RedeemOutcome, interval: int) -> OperatorError:
    if outcome is RedeemOutcome.PENDING:
        return AuthorizationPending("the user has not answered yet")
    if outcome is RedeemOutcome.SLOW_DOWN:
        return SlowDown(f"polled too fast: wait at least {interval} seconds between polls")
    if outcome is RedeemOutcome.DENIED:
        return AccessDenied("the user denied the request")
    if outcome is RedeemOutcome.EXPIRED:
        return ExpiredToken("the request expired before the user answered")
    if outcome is RedeemOutcome.USED:
        return InvalidGrant("the tokens of this auth_req_id have been handed out")
    return InvalidGrant("auth_req_id is not valid")


def _with_session_ttl(client: ServiceSettings, seconds: int) -> ServiceSettings:
    """The client's settings with the request's lifetime (``requested_expiry``)."""
    return client if seconds == client.session_ttl else replace(client, session_ttl=seconds)
