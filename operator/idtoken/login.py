"""The login flow: initiate, approve (verify), reject, and the app's pending list.

Framework-free: the HTTP layer parses and validates bodies, this module applies the contract's
rules and the store makes every state change atomic. A session's immutable facts (token,
service, scopes, OTP, nonce) are cached for the session's life on the instance that created it,
so the common case of a verify on the same instance costs exactly one store round trip.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from idtoken import ids, logs
from idtoken.clock import Clock
from idtoken.decisions import Decisions
from idtoken.device_messages import (
    pending_message,
    reject_message,
    subscription_message,
    verify_message,
)
from idtoken.doors import IDTOKEN_DOOR, Approval, Door, GrantMaker
from idtoken.enrollment.credential import Credential, verify_credential
from idtoken.errors import (
    DeviceMismatch,
    InsufficientTrustLevel,
    InvalidOtp,
    InvalidRequest,
    InvalidScope,
    InvalidSignature,
    OperatorError,
    SessionExpired,
    SessionNotPending,
    TemporarilyUnavailable,
    TokenRevoked,
    TooManyRequests,
    UnknownSession,
    UnknownToken,
)
from idtoken.issued_jwt import IssuedJwtMaker
from idtoken.jose import JoseError
from idtoken.keys.device import DeviceKeyError, key_from_jwk, verify_device_signature
from idtoken.keys.signing import SigningKeys
from idtoken.metrics import Metrics
from idtoken.oidc.secret import OperatorSecret
from idtoken.push.base import PushOutcome, PushResult, PushSubscription
from idtoken.push.dispatch import PushDispatcher
from idtoken.scopes import KNOWN_SCOPES
from idtoken.settings import ServiceSettings, Settings
from idtoken.store.base import (
    MAX_SESSION_FAILURES,
    CreateStatus,
    DeviceRecord,
    InitiateLimits,
    Outcome,
    SessionKind,
    SessionRecord,
    Store,
    StoreUnavailable,
    Transition,
)

log = logging.getLogger("idtoken.login")
security = logging.getLogger("idtoken.security")

PUSH_WINDOW = 600
_CACHE_SIZE = 20_000


@dataclass(frozen=True)
class Initiated:
    session_id: str
    auto_password: str
    ws_token: str
    expires_at: float
    random: str


@dataclass(frozen=True)
class VerifyRequest:
    session_id: str
    token_id: str
    otp: str
    granted_scopes: list[str]  # exactly as sent: the signed message uses this order
    timestamp: int
    credential: str
    signature: str


@dataclass(frozen=True)
class RejectRequest:
    session_id: str
    token_id: str
    timestamp: int
    reason: str  # "user_rejected" | "not_me"
    signature: str


REJECT_REASONS = {"user_rejected": "User rejected", "not_me": "Not me"}
TRUST_TOO_LOW = "Trust level too low"


def push_topic(token_id: str) -> str:
    """One Web Push topic per token, so a newer prompt replaces an older one on the device."""
    digest = hashlib.sha256(token_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:32]


class LoginService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: SigningKeys,
        secret: OperatorSecret,
        clock: Clock,
        dispatcher: PushDispatcher | None = None,
        metrics: Metrics | None = None,
        grant_makers: Mapping[SessionKind, GrantMaker] | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._grant_makers: dict[SessionKind, GrantMaker] = {
            "idtoken": IssuedJwtMaker(settings.issuer, keys, secret),
            **(grant_makers or {}),
        }
        self._decisions = Decisions(store, clock, self._metrics)
        self.followups = self._decisions.followups
        self._settings = settings
        self._store = store
        self._keys = keys
        self._clock = clock
        self._dispatcher = dispatcher
        self._recent: OrderedDict[str, SessionRecord] = OrderedDict()
        limits = settings.limits
        self._limits = InitiateLimits(
            max_pending=limits.max_pending_per_token,
            pushes_per_window=limits.pushes_per_token_per_10min,
            push_window=PUSH_WINDOW,
            max_failed_verifications=limits.max_failed_verifications,
        )

    # ------------------------------------------------------------------ relying party
    async def initiate(
        self,
        service: ServiceSettings,
        token_id: str,
        scopes: tuple[str, ...],
        nonce: str | None,
        *,
        door: Door | None = None,
        fresh: ids.SessionSecrets | None = None,
    ) -> Initiated:
        """Start a login. ``fresh`` gives the session's random values when the door needs its
        id before the session exists (CIBA's ``auth_req_id`` names the session)."""
        door = door or IDTOKEN_DOOR
        # An empty list means the service's defaults on /auth/initiate; the standard doors
        # ask for exactly what their scope parameter says (openid alone: no claims).
        requested = scopes or (service.default_scopes if door.kind == "idtoken" else ())
        for scope in requested:
            if scope not in KNOWN_SCOPES or scope not in service.allowed_scopes:
                raise InvalidScope("a requested scope is not allowed for this service")
        now = self._clock.now()
        fresh = fresh or ids.new_session_secrets()
        ws_token = fresh.ws_token
        session = SessionRecord(
            session_id=fresh.session_id,
            token_id=token_id,
            service_id=service.id,
            scopes=tuple(requested),
            nonce=nonce,
            otp=fresh.otp,
            ws_token_sha256=ids.sha256_hex(ws_token),
            random=fresh.random,
            created_at=now,
            expires_at=now + service.session_ttl,
            kind=door.kind,
            front=door.front,
            binding_message=door.binding_message,
            min_trust_level=door.min_trust_level,
            grant_hash=door.grant_hash,
        )
        # CIBA always, other doors if the service asks: an unknown (or paused, or locked)
        # token gets a session like any other, which can only expire (no enumeration).
        decoys = service.hide_unknown_tokens or door.kind == "ciba"
        try:
            result = await self._store.create_session(
                session, limits=self._limits, now=now, decoy_allowed=decoys
            )
        except StoreUnavailable:
            self._decisions.cancel_later(session)
            raise
        if result.status is not CreateStatus.CREATED:
            if result.status in (CreateStatus.LOCKED, CreateStatus.PAUSED):
                security.warning(
                    "initiate refused for a locked or paused token",
                    extra={"service_id": service.id, "refusal": result.status.value},
                )
            raise _refusal(result.status, result.retry_after)
        self._remember(session)
        self._metrics.initiated.labels(service.id).inc()
        logs.event(
            log,
            "session initiated",
            session_id=session.session_id,
            service_id=service.id,
            door=door.kind,
        )
        if result.push_subscription is not None and self._dispatcher is not None:
            self._push(service, session, result.push_subscription, now)
        return Initiated(
            session_id=session.session_id,
            auto_password=session.otp,
            ws_token=ws_token,
            expires_at=session.expires_at,
            random=session.random,
        )

    def _push(self, service: ServiceSettings, session: SessionRecord, raw: Any, now: float) -> None:
        try:
            subscription = PushSubscription.parse(raw)
        except ValueError:
            log.warning(
                "stored push subscription unusable", extra={"session_id": session.session_id}
            )
            return
        assert self._dispatcher is not None
        self._dispatcher.dispatch(
            session.session_id,
            subscription,
            self.app_view(session, service),
            ttl=max(0, int(session.expires_at - now)),
            topic=push_topic(session.token_id),
            deadline=session.expires_at,
        )

    async def push_finished(
        self, session_id: str, subscription: PushSubscription, result: PushResult
    ) -> None:
        """A 404/410 from the push service marks the subscription dead; the app learns it on
        its next /auth/pending."""
        session = self._recent.get(session_id)
        self._metrics.pushes.labels(result.outcome.value).inc()
        log.info(
            "push finished",
            extra={
                "session_id": session_id,
                "outcome": result.outcome.value,
                "attempts": result.attempts,
                "push_status": result.status,
                "push_origin": subscription.origin,
                "elapsed": round(result.elapsed, 4),
            },
        )
        if session is not None:
            self._metrics.push_seconds.observe(self._clock.now() - session.created_at)
        if result.outcome is PushOutcome.DEAD and session is not None:
            await self._store.mark_push_dead(session.token_id, subscription.endpoint)

    def app_view(self, session: SessionRecord, service: ServiceSettings) -> dict[str, Any]:
        """What the phone is shown about a session (push payload and /auth/pending)."""
        view: dict[str, Any] = {
            "type": "auth_request",
            "sessionId": session.session_id,
            "serviceId": service.id,
            "serviceName": service.name,
            "scopes": list(session.scopes),
            "expiresAt": ids.iso_z(session.expires_at),
        }
        if session.kind == "ciba":
            # No browser shows a code: the phone shows the binding message instead and signs
            # with the code it is given, whatever the service's otp_mode.
            view["backchannel"] = True
            if session.binding_message is not None:
                view["bindingMessage"] = session.binding_message
            view["autoPassword"] = session.otp
        elif service.otp_mode == "display":
            view["autoPassword"] = session.otp
        if session.min_trust_level:
            view["minTrustLevel"] = session.min_trust_level
        return view

    # ------------------------------------------------------------------ mobile app
    async def verify(self, req: VerifyRequest) -> None:
        now = self._clock.now()
        session = await self._session_for(req.token_id, req.session_id, now)
        service = self._settings.services.get(session.service_id)
        if service is None:  # the service was removed from the configuration meanwhile
            raise SessionNotPending("the session's service no longer exists")

        if abs(now * 1000 - req.timestamp) > self._settings.limits.timestamp_skew * 1000:
            await self._fail(
                session, None, now, InvalidSignature("timestamp outside the allowed window")
            )
        try:
            credential = verify_credential(
                self._keys, req.credential, issuer=self._settings.issuer, now=now
            )
        except JoseError as exc:
            security.warning(
                "credential refused", extra={"session_id": session.session_id, "reason": exc.reason}
            )
            await self._fail(session, None, now, InvalidSignature("the credential is not valid"))
        if credential.token_id != session.token_id:
            await self._fail(
                session, None, now, DeviceMismatch("the device is not enrolled for this token")
            )
        try:
            key = key_from_jwk(credential.device_jwk)
            verify_device_signature(
                key,
                verify_message(
                    req.session_id,
                    req.otp,
                    req.timestamp,
                    req.granted_scopes,
                    session.binding_message,
                ),
                req.signature,
            )
        except DeviceKeyError as exc:
            security.warning(
                "approval signature refused",
                extra={"session_id": session.session_id, "reason": exc.reason},
            )
            await self._fail(session, None, now, InvalidSignature("the signature does not verify"))

        granted = list(dict.fromkeys(req.granted_scopes))
        scopes_ok = set(granted) <= set(session.scopes)
        otp_ok = ids.same_secret(req.otp, session.otp)
        if not (scopes_ok and otp_ok):
            # Only the token's current device may spend the session's attempts: a replaced
            # (lost, stolen) phone still holds a valid old key and credential (A06).
            await self._require_current_device(session, credential)
        if not scopes_ok:
            await self._fail(
                session,
                None,
                now,
                InvalidRequest("grantedScopes must be a subset of the requested scopes"),
            )
        if not otp_ok:
            display = service.otp_mode == "display"
            await self._fail(
                session,
                "Invalid OTP" if display else None,
                now,
                InvalidOtp("the code does not match"),
            )

        if credential.trust_level < session.min_trust_level:
            await self._require_current_device(session, credential)
            await self._end_for_trust(session, credential, now)

        approval = self._approval(session, service, credential, granted, now)
        t = await self._decisions.decide(
            session,
            lambda nonce: self._store.approve(
                session.token_id,
                session.session_id,
                key_thumbprint=credential.key_thumbprint,
                credential_jti=credential.jti,
                final=approval.final,
                now=now,
                grant=approval.grant,
                decided_by=nonce,
            ),
        )
        if t.outcome is Outcome.APPROVED:
            self._decisions.approved(session, now)
            return
        if t.outcome in (Outcome.STALE_DEVICE, Outcome.REVOKED):
            raise self._stale(session)
        raise _state_error(t)

    async def expire(self, session: SessionRecord) -> SessionRecord | None:
        """Expire ``session`` if its lifetime has passed (a socket's timer)."""
        return await self._decisions.expire(session)

    @property
    def decisions(self) -> Decisions:
        return self._decisions

    def _approval(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
    ) -> Approval:
        maker = self._grant_makers.get(session.kind)
        if maker is None:  # a door this operator's configuration does not open
            raise SessionNotPending("this operator does not serve the session's kind")
        return maker.approval(session, service, credential, granted, now)

    async def _end_for_trust(
        self, session: SessionRecord, credential: Credential, now: float
    ) -> NoReturn:
        """The relying party asked for a higher trust level (``acr_values``) than the user's
        credential has: the login cannot succeed, so it ends now rather than at expiry."""
        t = await self._decisions.decide(
            session,
            lambda nonce: self._store.reject(
                session.token_id,
                session.session_id,
                reason=TRUST_TOO_LOW,
                pause=0,
                now=now,
                decided_by=nonce,
            ),
        )
        if t.outcome is not Outcome.REJECTED:
            raise _state_error(t)
        self._decisions.rejected(session, TRUST_TOO_LOW, now, trust_level=credential.trust_level)
        raise InsufficientTrustLevel("the credential's trust level is below what was asked for")

    async def _require_current_device(self, session: SessionRecord, credential: Credential) -> None:
        device = await self._store.get_device(session.token_id)
        if (
            device is None
            or device.status == "revoked"
            or device.key_thumbprint != credential.key_thumbprint
            or device.credential_jti != credential.jti
        ):
            raise self._stale(session)

    def _stale(self, session: SessionRecord) -> InvalidSignature:
        security.warning(
            "approval with a replaced device or credential",
            extra={"session_id": session.session_id},
        )
        return InvalidSignature("the device key or credential is no longer valid")

    async def reject(self, req: RejectRequest) -> None:
        now = self._clock.now()
        session = await self._session_for(req.token_id, req.session_id, now)
        await self._check_device_signature(
            req.token_id,
            reject_message(req.session_id, req.timestamp),
            req.timestamp,
            req.signature,
            now,
        )
        not_me = req.reason == "not_me"
        pause = self._settings.limits.not_me_pause if not_me else 0
        reason = REJECT_REASONS[req.reason]
        t = await self._decisions.decide(
            session,
            lambda nonce: self._store.reject(
                session.token_id,
                session.session_id,
                reason=reason,
                pause=pause,
                now=now,
                decided_by=nonce,
            ),
        )
        if t.outcome is not Outcome.REJECTED:
            raise _state_error(t)
        self._decisions.rejected(session, reason, now)
        for other, service_id in t.also_ended:
            self._decisions.ended_with(other, service_id, reason, ended_by=session.session_id)
        if not_me:
            security.warning(
                "fraud report: user says the login was not theirs",
                extra={"session_id": session.session_id, "service_id": session.service_id},
            )

    async def pending(
        self, token_id: str, timestamp: int, signature: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The token's pending sessions as the app shows them, and the state of its push
        subscription ("active", "dead" after a 404/410 from the push service, or "none")."""
        now = self._clock.now()
        device = await self._check_device_signature(
            token_id, pending_message(token_id, timestamp), timestamp, signature, now
        )
        sessions = await self._store.pending_sessions(token_id, now=now)
        out = []
        for session in sessions:
            service = self._settings.services.get(session.service_id)
            if service is not None:
                view = self.app_view(session, service)
                del view["type"]
                out.append(view)
        if device.push_subscription is None:
            push = "none"
        else:
            push = "dead" if device.push_dead else "active"
        return out, push

    async def replace_subscription(
        self, token_id: str, subscription: PushSubscription, timestamp: int, signature: str
    ) -> None:
        """The app's new Web Push subscription, signed by the device key."""
        now = self._clock.now()
        message = subscription_message(token_id, subscription.endpoint, timestamp)
        await self._check_device_signature(token_id, message, timestamp, signature, now)
        if not await self._store.set_push_subscription(token_id, subscription.to_json()):
            raise InvalidSignature("the signature does not verify")
        log.info("push subscription replaced", extra={"push_origin": subscription.origin})

    # ------------------------------------------------------------------ internals
    async def _session_for(self, token_id: str, session_id: str, now: float) -> SessionRecord:
        """The session, or the contract's error if it is unknown, not the token's, or over."""
        cached = self._recent.get(session_id)
        if cached is not None and cached.token_id == token_id and cached.expires_at > now:
            return cached
        session = await self._store.get_session(token_id, session_id)
        if session is None:
            other = await self._store.find_session(session_id)
            if other is not None:
                security.warning(
                    "approval for another token's session", extra={"session_id": session_id}
                )
                raise DeviceMismatch("the device is not enrolled for this token")
            raise UnknownSession("no such session")
        if session.state == "pending" and now >= session.expires_at:
            await self._decisions.expire(session)
            raise SessionExpired("the session has expired")
        if session.state != "pending":
            raise _state_error(Transition(_state_outcome(session), session.failures))
        return session

    async def _fail(
        self, session: SessionRecord, end_reason: str | None, now: float, error: OperatorError
    ) -> NoReturn:
        """Count a failed verification, then raise ``error`` (or the state's error if the
        session was already over)."""
        t = await self._decisions.decide(
            session,
            lambda nonce: self._store.fail(
                session.token_id,
                session.session_id,
                end_reason=end_reason,
                now=now,
                decided_by=nonce,
            ),
        )
        if t.outcome is Outcome.REJECTED:
            reason = "Too many attempts" if t.failures >= MAX_SESSION_FAILURES else end_reason
            self._decisions.rejected(session, reason or "Too many attempts", now)
        if t.outcome in (Outcome.COUNTED, Outcome.REJECTED):
            raise error
        raise _state_error(t)

    async def _check_device_signature(
        self, token_id: str, message: str, timestamp: int, signature: str, now: float
    ) -> DeviceRecord:
        """Requests without a credential (reject, pending) are signed by the stored device key.
        An unknown token and a bad signature get the same answer."""
        if abs(now * 1000 - timestamp) > self._settings.limits.timestamp_skew * 1000:
            raise InvalidSignature("timestamp outside the allowed window")
        device = await self._store.get_device(token_id)
        if device is not None and device.status == "revoked":
            raise TokenRevoked("this token has been revoked")
        try:
            if device is None:
                raise DeviceKeyError("unknown_token")
            verify_device_signature(key_from_jwk(device.public_jwk), message, signature)
        except DeviceKeyError as exc:
            security.warning("device signature refused", extra={"reason": exc.reason})
            raise InvalidSignature("the signature does not verify") from exc
        return device

    def _remember(self, session: SessionRecord) -> None:
        self._recent[session.session_id] = session
        while len(self._recent) > _CACHE_SIZE:
            self._recent.popitem(last=False)


def _refusal(status: CreateStatus, retry_after: int) -> OperatorError:
    if status is CreateStatus.EXISTS:  # only after this id's creation timed out and was cancelled
        return TemporarilyUnavailable("the service is temporarily unavailable", retry_after=2)
    if status is CreateStatus.UNKNOWN_TOKEN:
        return UnknownToken("no device is enrolled for this tokenId")
    if status is CreateStatus.REVOKED:
        return TokenRevoked("this token has been revoked")
    descriptions = {
        CreateStatus.TOO_MANY_PENDING: "the token has the maximum number of pending sessions",
        CreateStatus.PUSH_RATE: "too many login requests for this token; try again later",
        CreateStatus.PAUSED: "logins for this token are paused after a fraud report",
        CreateStatus.LOCKED: "this token is locked after too many failed verifications",
    }
    return TooManyRequests(descriptions[status], retry_after=retry_after)


def _state_outcome(session: SessionRecord) -> Outcome:
    if session.state == "expired":
        return Outcome.EXPIRED
    if session.state == "rejected" and session.failures >= 3:
        return Outcome.TOO_MANY
    return Outcome.NOT_PENDING


def _state_error(t: Transition) -> OperatorError:
    if t.outcome is Outcome.EXPIRED:
        return SessionExpired("the session has expired")
    if t.outcome is Outcome.TOO_MANY:
        return TooManyRequests("too many failed attempts for this session", retry_after=60)
    if t.outcome is Outcome.UNKNOWN:
        return UnknownSession("no such session")
    if t.outcome is Outcome.REVOKED:
        return TokenRevoked("this token has been revoked")
    return SessionNotPending("the session is no longer pending")
