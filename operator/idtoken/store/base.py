"""The storage contract shared by the embedded store and Redis.

Every method is one atomic state change or one consistent read: concurrent callers on any
number of operator instances observe the session state machine

    pending --approve--> approved
    pending --reject / fail(limit)--> rejected
    pending --(now >= expiresAt)--> expired

and nothing else. A decided session keeps its terminal message for :data:`RESULT_KEEP`
seconds so that a late or reconnecting browser still receives it.

Events: every decision is published to every instance that listens to the session; a process
registers interest with :meth:`Store.listen`. When the event connection is (re)established,
listeners are called with ``None`` and must re-read the stored state, so a lost message never
loses a decision.

Errors: any failure to reach the backing store raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

RESULT_KEEP = 300
"""Seconds a decided (or expired) session stays readable after its decision or expiry."""

MAX_SESSION_FAILURES = 3

SessionState = Literal["pending", "approved", "rejected", "expired"]
SessionKind = Literal["idtoken", "oidc", "ciba"]
"""Which door a session came in by: the IDToken protocol (``/auth/initiate``), the OpenID
Connect hosted login page, or OpenID CIBA. The engine is the same; only what is stored at the
decision and how the result is collected differ."""


class StoreUnavailable(Exception):
    """The backing store cannot be reached or answered with an error."""


@dataclass(frozen=True)
class DeviceRecord:
    """What the operator keeps about an enrolled token. No identity claims, by design."""

    token_id: str
    issuer: str
    device_id: str
    public_jwk: Mapping[str, str]
    key_thumbprint: str
    credential_jti: str
    credential_exp: int
    enrolled_at: float
    push_subscription: Mapping[str, Any] | None = None
    push_dead: bool = False
    status: Literal["active", "revoked"] = "active"
    failed_verifications: int = 0
    paused_until: float = 0.0

    def to_fields(self) -> dict[str, str]:
        return {
            "tok": self.token_id,
            "iss": self.issuer,
            "dev": self.device_id,
            "jwk": json.dumps(dict(self.public_jwk), separators=(",", ":")),
            "kt": self.key_thumbprint,
            "cj": self.credential_jti,
            "cexp": str(self.credential_exp),
            "at": repr(self.enrolled_at),
            "push": ""
            if self.push_subscription is None
            else json.dumps(self.push_subscription, separators=(",", ":")),
            "dead": "1" if self.push_dead else "0",
            "status": self.status,
            "fails": str(self.failed_verifications),
            "pause": repr(self.paused_until),
        }

    @classmethod
    def from_fields(cls, f: Mapping[str, str]) -> DeviceRecord:
        push = f.get("push", "")
        return cls(
            token_id=f["tok"],
            issuer=f["iss"],
            device_id=f["dev"],
            public_jwk=json.loads(f["jwk"]),
            key_thumbprint=f["kt"],
            credential_jti=f["cj"],
            credential_exp=int(f["cexp"]),
            enrolled_at=float(f["at"]),
            push_subscription=json.loads(push) if push else None,
            push_dead=f.get("dead") == "1",
            status="revoked" if f.get("status") == "revoked" else "active",
            failed_verifications=int(f.get("fails", "0")),
            paused_until=float(f.get("pause", "0")),
        )


@dataclass(frozen=True)
class SessionRecord:
    """One login attempt. All but ``state``, ``failures``, ``result``, ``decided_by`` and the
    grant (OpenID Connect's code) is fixed at creation."""

    session_id: str
    token_id: str
    service_id: str
    scopes: tuple[str, ...]
    nonce: str | None
    otp: str
    ws_token_sha256: str
    random: str
    created_at: float
    expires_at: float
    state: SessionState = "pending"
    failures: int = 0
    result: str | None = None
    kind: SessionKind = "idtoken"
    front: str | None = None
    """What the front door (OpenID Connect, CIBA) keeps about its request, as text it alone
    reads; never an identity claim."""
    binding_message: str | None = None
    """CIBA: the text the phone shows instead of the code; it enters the signed approval."""
    min_trust_level: int = 0
    """The lowest credential trust level that may approve (``acr_values``); 0 = any."""
    decoy: bool = False
    """A session for a token that cannot log in (unknown, paused, locked) made to look like
    any other: it is never shown to a phone and can only expire."""
    grant_hash: str | None = None
    """SHA-256 (hex) of the secret that collects the result: CIBA's ``auth_req_id`` (from
    creation) or OpenID Connect's authorization code (from approval)."""
    decided_by: str | None = None
    """The nonce of the call that took the decision (to recognise one's own decision after a
    lost reply)."""
    decided_at: float | None = None
    """When the decision (or expiry) was taken."""
    code: str | None = None
    """OpenID Connect: the authorization code minted at the approval, sealed (the hosted page
    collects it); written by :meth:`Store.approve` as the grant field ``code``."""

    def to_fields(self) -> dict[str, str]:
        fields = {
            "sid": self.session_id,
            "tok": self.token_id,
            "svc": self.service_id,
            "scopes": " ".join(self.scopes),
            "nonce": "" if self.nonce is None else self.nonce,
            "hasnonce": "0" if self.nonce is None else "1",
            "otp": self.otp,
            "wsh": self.ws_token_sha256,
            "rnd": self.random,
            "at": repr(self.created_at),
            "exp": repr(self.expires_at),
            "state": self.state,
            "fails": str(self.failures),
        }
        # The IDToken protocol's sessions (the busiest) carry none of these.
        if self.kind != "idtoken":
            fields["kind"] = self.kind
        if self.front is not None:
            fields["front"] = self.front
        if self.binding_message is not None:
            fields["bind"] = self.binding_message
        if self.min_trust_level:
            fields["mintl"] = str(self.min_trust_level)
        if self.decoy:
            fields["decoy"] = "1"
        if self.grant_hash is not None:
            fields["gh"] = self.grant_hash
        return fields

    @classmethod
    def from_fields(cls, f: Mapping[str, str]) -> SessionRecord:
        state = f["state"]
        if state not in ("pending", "approved", "rejected", "expired"):
            raise ValueError(f"corrupt session state {state!r}")
        kind = f.get("kind", "idtoken")
        if kind not in ("idtoken", "oidc", "ciba"):
            raise ValueError(f"corrupt session kind {kind!r}")
        return cls(
            session_id=f["sid"],
            token_id=f["tok"],
            service_id=f["svc"],
            scopes=tuple(f["scopes"].split()) if f["scopes"] else (),
            nonce=f["nonce"] if f.get("hasnonce") == "1" else None,
            otp=f["otp"],
            ws_token_sha256=f["wsh"],
            random=f["rnd"],
            created_at=float(f["at"]),
            expires_at=float(f["exp"]),
            state=state,  # type: ignore[arg-type]
            failures=int(f.get("fails", "0")),
            result=f.get("result") or None,
            kind=kind,  # type: ignore[arg-type]
            front=f.get("front"),
            binding_message=f.get("bind"),
            min_trust_level=int(f.get("mintl", "0")),
            decoy=f.get("decoy") == "1",
            grant_hash=f.get("gh") or None,
            decided_by=f.get("by") or None,
            code=f.get("code") or None,
            decided_at=float(f["decided"]) if f.get("decided") else None,
        )

    @classmethod
    def from_stored(cls, f: Mapping[str, str]) -> SessionRecord | None:
        """The session of a stored hash; None for nothing or for a cancellation's tombstone
        (see :meth:`Store.cancel_session`)."""
        return cls.from_fields(f) if f and "sid" in f else None


class CreateStatus(enum.StrEnum):
    CREATED = "created"
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - a status name, not a secret
    REVOKED = "revoked"
    LOCKED = "locked"
    PAUSED = "paused"
    TOO_MANY_PENDING = "too_many_pending"
    PUSH_RATE = "push_rate"
    EXISTS = "exists"  # the id was written (or cancelled) before: the caller's call was late


@dataclass(frozen=True)
class CreateResult:
    status: CreateStatus
    retry_after: int = 0
    push_subscription: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class InitiateLimits:
    max_pending: int
    pushes_per_window: int
    push_window: int
    max_failed_verifications: int


class Outcome(enum.StrEnum):
    """Result of a state change on a session."""

    APPROVED = "approved"
    REJECTED = "rejected"
    COUNTED = "counted"  # a failure was recorded, the session stays pending
    EXPIRED = "expired"  # the session's lifetime had passed; it is now (or was) expired
    NOT_PENDING = "not_pending"  # already approved or rejected
    TOO_MANY = "too_many"  # already rejected for too many attempts
    UNKNOWN = "unknown"
    STALE_DEVICE = "stale_device"  # the device key or credential is no longer the current one
    REVOKED = "revoked"


@dataclass(frozen=True)
class Transition:
    outcome: Outcome
    failures: int = 0
    decided: bool = False  # this call took the decision (approved, rejected or expired it)
    also_ended: tuple[tuple[str, str], ...] = ()
    """A fraud report's cascade: the (session id, service id) of the token's other pending
    sessions it ended."""


class RedeemOutcome(enum.StrEnum):
    """What collecting a session's result (code exchange, CIBA poll) found."""

    ISSUED = "issued"  # the stored grant, handed out now and never again
    PENDING = "pending"  # CIBA: no decision yet
    SLOW_DOWN = "slow_down"  # CIBA: polled before the interval passed; the interval grew
    DENIED = "denied"  # the session ended rejected
    EXPIRED = "expired"  # the session ended with no decision
    USED = "used"  # collected before: a replay
    INVALID = "invalid"  # no such session or secret, or (code) not approved or too late


@dataclass(frozen=True)
class Redemption:
    outcome: RedeemOutcome
    grant: str | None = None  # with ISSUED: the text stored at the approval
    front: str | None = None  # the front door's request (see SessionRecord.front)
    interval: int = 0  # CIBA: the poll interval in force after this poll
    revoke: str | None = None  # with USED (a code replay): the access token id to revoke
    decided: bool = False  # with EXPIRED: this poll expired the session


class EnrollStatus(enum.StrEnum):
    ENROLLED = "enrolled"
    REPLACED = "replaced"
    REPLAYED = "replayed"
    CONFLICT = "conflict"
    REVOKED = "revoked"


EventCallback = Callable[[str, "Event | None"], None]


@dataclass(frozen=True)
class Event:
    """A message about one session, delivered to every instance."""

    session_id: str
    final: str | None = None  # the terminal browser message (JSON text, without `hash`)
    claim: int | None = None  # a newer socket took the session: its sequence number

    def encode(self) -> str:
        if self.final is not None:
            return json.dumps({"sid": self.session_id, "final": self.final}, separators=(",", ":"))
        return json.dumps({"sid": self.session_id, "claim": self.claim}, separators=(",", ":"))

    @classmethod
    def decode(cls, data: str | bytes) -> Event | None:
        try:
            obj = json.loads(data)
            sid = obj["sid"]
            if not isinstance(sid, str):
                return None
            final = obj.get("final")
            claim = obj.get("claim")
            return cls(
                session_id=sid,
                final=final if isinstance(final, str) else None,
                claim=claim if isinstance(claim, int) else None,
            )
        except (ValueError, KeyError, TypeError):
            return None


def final_message(kind: Literal["rejected", "expired"], reason: str | None = None) -> str:
    if kind == "expired":
        return '{"type":"expired"}'
    return json.dumps({"type": "rejected", "reason": reason}, separators=(",", ":"))


class Store(Protocol):
    """Storage for devices, sessions and single-use markers. See the module docstring."""

    async def start(self) -> None:
        """Connect and begin receiving events. Idempotent."""

    async def aclose(self) -> None:
        """Stop receiving events and release connections."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""

    # ---- devices -------------------------------------------------------------------------
    async def get_device(self, token_id: str) -> DeviceRecord | None: ...

    async def enroll(
        self, device: DeviceRecord, *, replay_id: str, replay_ttl: int
    ) -> EnrollStatus:
        """Atomically: refuse if ``replay_id`` was claimed by an enrollment of any token within
        its ``replay_ttl`` (REPLAYED), if the token is revoked (REVOKED) or belongs to another
        issuer (CONFLICT); otherwise claim ``replay_id`` for ``replay_ttl`` seconds and store
        ``device``, replacing the previous device of the same issuer (REPLACED) or creating it
        (ENROLLED). A replaced device's pending sessions end as rejected. Nothing is claimed
        or written unless the result is ENROLLED or REPLACED, so an enrollment the store could
        not complete can be retried with the same token."""
        ...

    async def mark_push_dead(self, token_id: str, endpoint: str) -> None:
        """Flag the token's push subscription dead if it still has this endpoint."""

    async def set_push_subscription(
        self, token_id: str, subscription: Mapping[str, Any] | None
    ) -> bool:
        """Replace the token's push subscription (clearing the dead flag); False if the token
        has no device."""
        ...

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self,
        session: SessionRecord,
        *,
        limits: InitiateLimits,
        now: float,
        decoy_allowed: bool = False,
    ) -> CreateResult:
        """Atomically check the token (exists, active, not paused or locked, fewer than
        ``max_pending`` pending sessions, push rate) and store ``session`` as pending. Nothing
        is written unless the result is CREATED, and nothing if a session with this id was
        ever written or cancelled (:meth:`cancel_session`).

        With ``decoy_allowed``, a token that does not exist or is paused or locked gets a
        *decoy*: the session is stored with ``decoy`` set and counted against the same pending
        and push-rate limits, the result is CREATED with no push subscription, and the session
        can only expire — no phone sees it (:meth:`pending_sessions` leaves it out) and no
        approval can succeed. A revoked token is still REVOKED."""
        ...

    async def cancel_session(self, token_id: str, session_id: str, *, keep: int) -> bool:
        """Make a session whose creation had a lost reply harmless: if it is pending it ends
        (state ``expired``, out of the pending and push-rate counts, no socket reference); if
        it was never written, a tombstone kept ``keep`` seconds makes a late
        :meth:`create_session` of the same id write nothing. True if it was pending or absent
        (nothing can use it now); False if a decision had already been taken."""
        ...

    async def get_session(self, token_id: str, session_id: str) -> SessionRecord | None:
        """The session, if it exists and belongs to ``token_id``."""
        ...

    async def find_session(self, session_id: str) -> SessionRecord | None:
        """The session by id alone (used by sockets, which do not know the token)."""
        ...

    async def approve(
        self,
        token_id: str,
        session_id: str,
        *,
        key_thumbprint: str,
        credential_jti: str,
        final: str,
        now: float,
        grant: Mapping[str, str] | None = None,
        decided_by: str = "",
    ) -> Transition:
        """Compare-and-set pending -> approved, store ``final`` and publish it, provided the
        session is unexpired, not a decoy, and the token's current device key and credential
        are the given ones (else STALE_DEVICE, nothing changed). ``grant`` (the code's hash
        ``gh``, its deadline ``gexp``, the stored ``grant`` and other text fields) is stored
        with the decision; ``decided_by`` is recorded as the session's ``decided_by``. Resets
        the token's failure count and push rate. Exactly one concurrent caller can get
        APPROVED."""
        ...

    async def fail(
        self,
        token_id: str,
        session_id: str,
        *,
        end_reason: str | None,
        now: float,
        decided_by: str = "",
    ) -> Transition:
        """Count a failed verification on a pending session and on its token. The session ends
        rejected with ``end_reason`` if given, or "Too many attempts" at the
        :data:`MAX_SESSION_FAILURES`-th failure (recording ``decided_by``)."""
        ...

    async def reject(
        self,
        token_id: str,
        session_id: str,
        *,
        reason: str,
        pause: int,
        now: float,
        decided_by: str = "",
    ) -> Transition:
        """End a pending session as rejected with ``reason``. With ``pause`` > 0 (a fraud
        report) every other pending session of the token is rejected with the same reason
        (reported as ``also_ended``) and new sessions are refused for ``pause`` seconds."""
        ...

    async def redeem(
        self,
        token_id: str,
        session_id: str,
        *,
        grant_hash: str,
        now: float,
        poll_interval: int = 0,
        max_interval: int = 60,
    ) -> Redemption:
        """Collect a session's result with the secret whose SHA-256 is ``grant_hash``, in one
        atomic step: ISSUED with the stored grant exactly once across all callers, then USED.

        ``poll_interval`` > 0 is a CIBA poll: a poll sooner than the interval in force after
        the previous one answers SLOW_DOWN and adds 5 seconds to the interval (at most
        ``max_interval``); otherwise PENDING, DENIED, EXPIRED (expiring the session if its
        lifetime passed) or ISSUED. ``poll_interval`` = 0 is an authorization code: ISSUED
        only for an approved session before the grant's deadline, else INVALID; a second use
        is USED with the access token id to revoke. A wrong secret is INVALID and changes
        nothing."""
        ...

    async def expire(
        self, token_id: str, session_id: str, *, now: float, decided_by: str = ""
    ) -> SessionRecord | None:
        """Mark a pending session whose lifetime has passed as expired (publishing it, and
        recording ``decided_by``) and return the session as it now stands."""
        ...

    async def pending_sessions(self, token_id: str, *, now: float) -> list[SessionRecord]:
        """The token's pending, unexpired sessions, oldest first; decoys left out."""
        ...

    async def claim_socket(self, token_id: str, session_id: str) -> int:
        """Record that a new socket serves this session; returns its sequence number and
        publishes a claim so that older sockets (on any instance) close with 4009."""
        ...

    def listen(self, token_id: str, session_id: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(session_id, event)`` for events about the session (of token
        ``token_id``), and ``callback(session_id, None)`` whenever events may have been missed
        (the event stream reconnected), so the listener re-reads the stored state. Returns a
        function that stops listening.

        Events published by this store object after ``listen`` returns are delivered. Where
        the subscription itself takes a round trip (Redis Cluster: the token's shard channel),
        every call of this store that publishes about the token (``claim_socket``, decisions)
        first waits for that subscription; and a listener whose subscription could not be
        confirmed in time gets ``None`` once it is, so a decision taken elsewhere in between
        is re-read rather than lost."""
        ...

    async def revoke_token(self, token_id: str, *, now: float) -> bool:
        """Mark the token revoked (initiate 403, verify 401, enroll 409) and end its pending
        sessions as rejected. False if the token has no device."""
        ...

    async def unlock_token(self, token_id: str) -> bool:
        """Clear the token's failed-verification count and any fraud-report pause."""
        ...

    async def list_devices(self, *, limit: int = 1000) -> list[DeviceRecord]:
        """Up to ``limit`` enrolled devices, in no particular order (operator tooling)."""
        ...

    # ---- CIBA ping deliveries (an outbox every instance works on) --------------------------
    async def schedule_ping(
        self, token_id: str, session_id: str, *, at: float, queued_only: bool = False
    ) -> None:
        """Put the session in the ping outbox, due at ``at`` (or move it there). With
        ``queued_only``, only move it: a ping already delivered is not queued again."""

    async def due_pings(self, *, now: float, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (token id, session id) pairs of the outbox due at ``now``."""
        ...

    async def claim_ping(self, token_id: str, session_id: str, *, now: float, until: float) -> bool:
        """Take the session's ping for this caller: True for exactly one caller while it is
        due, and then it is not due again before ``until`` (the caller's lease)."""
        ...

    async def ping_done(self, token_id: str, session_id: str) -> None:
        """Remove the session from the outbox."""

    # ---- shared secrets --------------------------------------------------------------------
    async def register_secret(self, name: str, fingerprint: str, *, replace: bool = False) -> str:
        """Record ``fingerprint`` for the secret ``name`` unless one is recorded (or, with
        ``replace``, in any case); return the recorded one, so that every instance can check
        it holds the same secret."""
        ...

    # ---- shared cache (e.g. a KYC provider's JWKS, shared by all instances) ---------------
    async def cache_get(self, name: str) -> str | None: ...

    async def cache_put(self, name: str, value: str, *, ttl: int) -> None: ...

    async def acquire(self, name: str, *, ttl: int) -> bool:
        """True for exactly one caller per ``ttl`` seconds across all instances (a cooldown)."""
        ...

    # ---- rate limits ---------------------------------------------------------------------
    async def hit(self, key: str, *, limit: int, window: int, now: float) -> int:
        """Count one event for ``key`` in a sliding ``window``; returns 0 if allowed or the
        seconds until it would be, without counting, if ``limit`` is reached."""
        ...


def token_summary(device: DeviceRecord) -> dict[str, Any]:
    """An operator-facing view of a device record (for the CLI). Holds no identity claims."""
    return {
        "tokenId": device.token_id,
        "issuer": device.issuer,
        "deviceId": device.device_id,
        "keyThumbprint": device.key_thumbprint,
        "status": device.status,
        "pushSubscription": "none"
        if device.push_subscription is None
        else ("dead" if device.push_dead else "active"),
        "failedVerifications": device.failed_verifications,
        "credentialExpiresAt": device.credential_exp,
    }
