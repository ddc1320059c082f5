"""The embedded store: everything in this process's memory.

It implements the same contract as :class:`~idtoken.store.redis.RedisStore` and passes the same
test suite, but it is single-process by nature: a second operator process would have its own,
disjoint sessions. It is the default when no ``redis_url`` is configured, for development and
small single-instance deployments, and it says so loudly at start-up.

Atomicity comes from asyncio: no method awaits between reading and writing state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from idtoken.clock import Clock
from idtoken.store.base import (
    MAX_SESSION_FAILURES,
    RESULT_KEEP,
    CreateResult,
    CreateStatus,
    DeviceRecord,
    EnrollStatus,
    Event,
    EventCallback,
    InitiateLimits,
    Outcome,
    RedeemOutcome,
    Redemption,
    SessionRecord,
    Transition,
    final_message,
)
from idtoken.store.events import LocalListeners

log = logging.getLogger("idtoken.store")


class MemoryStore:
    """Single-process store. See the module docstring."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._devices: dict[str, DeviceRecord] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._by_token: dict[str, set[str]] = {}
        self._last_gc = 0.0
        self._session_until: dict[str, float] = {}
        self._sockets: dict[str, int] = {}
        self._markers: dict[str, float] = {}
        self._cache: dict[str, tuple[str, float]] = {}
        self._hits: dict[str, list[float]] = {}
        self._pushes: dict[str, list[float]] = {}
        self._grants: dict[str, dict[str, str]] = {}  # session id -> fields the decision adds
        self._pings: dict[tuple[str, str], float] = {}
        self._secrets: dict[str, str] = {}
        self._tombstones: dict[str, float] = {}
        self._listeners = LocalListeners()
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._started = True
            log.warning(
                "using the embedded in-memory store: single process only, sessions and enrolled "
                "devices are lost on restart; set redis_url for production or several instances"
            )

    async def aclose(self) -> None:
        self._started = False

    async def ping(self) -> None:
        return None

    # ---- devices -------------------------------------------------------------------------
    async def get_device(self, token_id: str) -> DeviceRecord | None:
        return self._devices.get(token_id)

    async def enroll(
        self, device: DeviceRecord, *, replay_id: str, replay_ttl: int
    ) -> EnrollStatus:
        now = self._clock.now()
        self._gc(now)
        marker = _lock(f"enroll-jti:{replay_id}")  # the claim acquire() would take
        if self._markers.get(marker, 0.0) > now:
            return EnrollStatus.REPLAYED
        old = self._devices.get(device.token_id)
        if old is not None:
            if old.status == "revoked":
                return EnrollStatus.REVOKED
            if old.issuer != device.issuer:
                return EnrollStatus.CONFLICT
        self._markers[marker] = now + replay_ttl
        self._devices[device.token_id] = device
        if old is None:
            return EnrollStatus.ENROLLED
        for session in self._token_pending(device.token_id, now):
            self._finish(session, "rejected", final_message("rejected", "User rejected"), now)
        return EnrollStatus.REPLACED

    async def mark_push_dead(self, token_id: str, endpoint: str) -> None:
        device = self._devices.get(token_id)
        sub = device.push_subscription if device else None
        if device is not None and sub is not None and sub.get("endpoint") == endpoint:
            self._devices[token_id] = replace(device, push_dead=True)

    async def set_push_subscription(
        self, token_id: str, subscription: Mapping[str, Any] | None
    ) -> bool:
        device = self._devices.get(token_id)
        if device is None:
            return False
        self._devices[token_id] = replace(device, push_subscription=subscription, push_dead=False)
        return True

    async def revoke_token(self, token_id: str, *, now: float) -> bool:
        device = self._devices.get(token_id)
        if device is None:
            return False
        self._devices[token_id] = replace(device, status="revoked")
        for session in self._token_pending(token_id, now):
            self._finish(session, "rejected", final_message("rejected", "User rejected"), now)
        return True

    async def unlock_token(self, token_id: str) -> bool:
        device = self._devices.get(token_id)
        if device is None:
            return False
        self._devices[token_id] = replace(device, failed_verifications=0, paused_until=0.0)
        return True

    async def list_devices(self, *, limit: int = 1000) -> list[DeviceRecord]:
        return list(self._devices.values())[:limit]

    async def cache_get(self, name: str) -> str | None:
        value, until = self._cache.get(name, ("", 0.0))
        return value if until > self._clock.now() else None

    async def cache_put(self, name: str, value: str, *, ttl: int) -> None:
        self._cache[name] = (value, self._clock.now() + ttl)

    async def acquire(self, name: str, *, ttl: int) -> bool:
        now = self._clock.now()
        if self._markers.get(_lock(name), 0.0) > now:
            return False
        self._markers[_lock(name)] = now + ttl
        return True

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self,
        session: SessionRecord,
        *,
        limits: InitiateLimits,
        now: float,
        decoy_allowed: bool = False,
    ) -> CreateResult:
        self._gc(now)
        if (
            session.session_id in self._sessions
            or self._tombstones.get(session.session_id, 0) > now
        ):
            return CreateResult(CreateStatus.EXISTS)
        device = self._devices.get(session.token_id)
        decoy = False
        if device is None:
            if not decoy_allowed:
                return CreateResult(CreateStatus.UNKNOWN_TOKEN)
            decoy = True
        elif device.status == "revoked":
            return CreateResult(CreateStatus.REVOKED)
        elif device.paused_until > now:
            if not decoy_allowed:
                return CreateResult(
                    CreateStatus.PAUSED, retry_after=_ceil(device.paused_until - now)
                )
            decoy = True
        elif device.failed_verifications >= limits.max_failed_verifications:
            if not decoy_allowed:
                return CreateResult(CreateStatus.LOCKED, retry_after=3600)
            decoy = True
        pending = sorted(s.expires_at for s in self._token_pending(session.token_id, now, True))
        if len(pending) >= limits.max_pending:
            return CreateResult(CreateStatus.TOO_MANY_PENDING, retry_after=_ceil(pending[0] - now))
        pushes = [t for t in self._pushes.get(session.token_id, []) if t > now - limits.push_window]
        if len(pushes) >= limits.pushes_per_window:
            return CreateResult(
                CreateStatus.PUSH_RATE, retry_after=_ceil(pushes[0] + limits.push_window - now)
            )
        pushes.append(now)
        self._pushes[session.token_id] = pushes
        if decoy:
            session = replace(session, decoy=True)
        self._sessions[session.session_id] = session
        self._session_until[session.session_id] = session.expires_at + RESULT_KEEP
        self._by_token.setdefault(session.token_id, set()).add(session.session_id)
        if decoy or device is None or device.push_dead:
            return CreateResult(CreateStatus.CREATED)
        return CreateResult(CreateStatus.CREATED, push_subscription=device.push_subscription)

    async def cancel_session(self, token_id: str, session_id: str, *, keep: int) -> bool:
        now = self._clock.now()
        session = self._sessions.get(session_id)
        if session is None or session.token_id != token_id:
            self._tombstones[session_id] = now + keep
            return True
        if session.state != "pending":
            return False
        # Quietly: nobody was told of the session, so nobody listens for it.
        self._sessions[session_id] = replace(
            session, state="expired", result=final_message("expired")
        )
        pushes = self._pushes.get(token_id)
        if pushes is not None and session.created_at in pushes:
            pushes.remove(session.created_at)
        return True

    async def get_session(self, token_id: str, session_id: str) -> SessionRecord | None:
        session = await self.find_session(session_id)
        return session if session is not None and session.token_id == token_id else None

    async def find_session(self, session_id: str) -> SessionRecord | None:
        if self._session_until.get(session_id, 0.0) <= self._clock.now():
            return None
        return self._sessions.get(session_id)

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
        session, early = self._pending(token_id, session_id, now, decided_by)
        if session is None:
            return early
        device = self._devices.get(token_id)
        if device is None or device.status == "revoked":
            return Transition(Outcome.REVOKED, session.failures)
        if (
            session.decoy
            or device.key_thumbprint != key_thumbprint
            or device.credential_jti != credential_jti
        ):
            return Transition(Outcome.STALE_DEVICE, session.failures)
        if grant:
            self._grants.setdefault(session_id, {}).update(grant)  # keeps a CIBA poll's interval
            if "gh" in grant:
                session = replace(session, grant_hash=grant["gh"])
            if "code" in grant:
                session = replace(session, code=grant["code"])
        self._finish(session, "approved", final, now, decided_by)
        self._devices[token_id] = replace(device, failed_verifications=0)
        self._pushes.pop(token_id, None)
        return Transition(Outcome.APPROVED, session.failures, decided=True)

    async def fail(
        self,
        token_id: str,
        session_id: str,
        *,
        end_reason: str | None,
        now: float,
        decided_by: str = "",
    ) -> Transition:
        session, early = self._pending(token_id, session_id, now, decided_by)
        if session is None:
            return early
        failures = session.failures + 1
        device = self._devices.get(token_id)
        if device is not None:
            self._devices[token_id] = replace(
                device, failed_verifications=device.failed_verifications + 1
            )
        session = replace(session, failures=failures)
        self._sessions[session_id] = session
        if failures >= MAX_SESSION_FAILURES:
            end_reason = "Too many attempts"
        if end_reason is None:
            return Transition(Outcome.COUNTED, failures)
        self._finish(session, "rejected", final_message("rejected", end_reason), now, decided_by)
        return Transition(Outcome.REJECTED, failures, decided=True)

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
        session, early = self._pending(token_id, session_id, now, decided_by)
        if session is None:
            return early
        message = final_message("rejected", reason)
        self._finish(session, "rejected", message, now, decided_by)
        ended: list[tuple[str, str]] = []
        if pause > 0:
            for other in self._token_pending(token_id, now):
                self._finish(other, "rejected", message, now, decided_by)
                ended.append((other.session_id, other.service_id))
            device = self._devices.get(token_id)
            if device is not None:
                self._devices[token_id] = replace(device, paused_until=now + pause)
        return Transition(Outcome.REJECTED, session.failures, decided=True, also_ended=tuple(ended))

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
        session = await self.get_session(token_id, session_id)
        if session is None or session.grant_hash is None or session.grant_hash != grant_hash:
            return Redemption(RedeemOutcome.INVALID)
        fields = self._grants.setdefault(session_id, {})
        if "used" in fields:
            return Redemption(RedeemOutcome.USED, revoke=fields.get("atj") or None)
        interval = 0
        if poll_interval > 0:
            interval = int(fields.get("ival", poll_interval))
            last = float(fields.get("pollat", "0"))
            fields["pollat"] = repr(now)
            if last > 0 and now < last + interval:
                interval = min(interval + 5, max_interval)
                fields["ival"] = str(interval)
                return Redemption(RedeemOutcome.SLOW_DOWN, interval=interval)
            fields["ival"] = str(interval)
            state = session.state
            if state == "pending":
                if now < session.expires_at:
                    return Redemption(RedeemOutcome.PENDING, interval=interval)
                self._finish(session, "expired", final_message("expired"), now)
                return Redemption(RedeemOutcome.EXPIRED, interval=interval, decided=True)
            if state == "rejected":
                return Redemption(RedeemOutcome.DENIED, interval=interval)
            if state == "expired":
                return Redemption(RedeemOutcome.EXPIRED, interval=interval)
        elif session.state != "approved" or now > float(fields.get("gexp", "0")):
            return Redemption(RedeemOutcome.INVALID)
        fields["used"] = "1"
        return Redemption(
            RedeemOutcome.ISSUED,
            grant=fields.pop("grant", None),
            front=session.front,
            interval=interval,
        )

    async def expire(
        self, token_id: str, session_id: str, *, now: float, decided_by: str = ""
    ) -> SessionRecord | None:
        session = await self.get_session(token_id, session_id)
        if session is not None and session.state == "pending" and now >= session.expires_at:
            session = self._finish(session, "expired", final_message("expired"), now, decided_by)
        return session

    async def pending_sessions(self, token_id: str, *, now: float) -> list[SessionRecord]:
        return sorted(self._token_pending(token_id, now), key=lambda s: s.created_at)

    async def schedule_ping(
        self, token_id: str, session_id: str, *, at: float, queued_only: bool = False
    ) -> None:
        if not queued_only or (token_id, session_id) in self._pings:
            self._pings[token_id, session_id] = at

    async def due_pings(self, *, now: float, limit: int) -> list[tuple[str, str]]:
        due = sorted((at, key) for key, at in self._pings.items() if at <= now)
        return [key for _, key in due[:limit]]

    async def claim_ping(self, token_id: str, session_id: str, *, now: float, until: float) -> bool:
        at = self._pings.get((token_id, session_id))
        if at is None or at > now:
            return False
        self._pings[token_id, session_id] = until
        return True

    async def ping_done(self, token_id: str, session_id: str) -> None:
        self._pings.pop((token_id, session_id), None)

    async def register_secret(self, name: str, fingerprint: str, *, replace: bool = False) -> str:
        if replace:
            self._secrets[name] = fingerprint
        return self._secrets.setdefault(name, fingerprint)

    async def claim_socket(self, token_id: str, session_id: str) -> int:
        if await self.get_session(token_id, session_id) is None:
            return 0
        seq = self._sockets.get(session_id, 0) + 1
        self._sockets[session_id] = seq
        self._listeners.dispatch(Event(session_id, claim=seq))
        return seq

    def listen(self, token_id: str, session_id: str, callback: EventCallback) -> Callable[[], None]:
        return self._listeners.add(session_id, callback)

    async def hit(self, key: str, *, limit: int, window: int, now: float) -> int:
        times = [t for t in self._hits.get(key, []) if t > now - window]
        if len(times) >= limit:
            self._hits[key] = times
            return _ceil(times[0] + window - now)
        times.append(now)
        self._hits[key] = times
        return 0

    # ---- internals -----------------------------------------------------------------------
    def _pending(
        self, token_id: str, session_id: str, now: float, decided_by: str = ""
    ) -> tuple[SessionRecord | None, Transition]:
        """The session if it is pending and unexpired; otherwise the outcome to report."""
        session = self._sessions.get(session_id)
        if (
            session is None
            or session.token_id != token_id
            or self._session_until.get(session_id, 0.0) <= now
        ):
            return None, Transition(Outcome.UNKNOWN)
        if session.state == "pending" and now >= session.expires_at:
            self._finish(session, "expired", final_message("expired"), now, decided_by)
            return None, Transition(Outcome.EXPIRED, session.failures, decided=True)
        if session.state == "pending":
            return session, Transition(Outcome.COUNTED, session.failures)
        return None, _settled(session)

    def _finish(
        self, session: SessionRecord, state: str, final: str, now: float, decided_by: str = ""
    ) -> SessionRecord:
        done = replace(
            session,
            state=state,  # type: ignore[arg-type]
            result=final,
            decided_by=decided_by or None,
            decided_at=now,
        )
        self._sessions[session.session_id] = done
        self._session_until[session.session_id] = max(session.expires_at, now) + RESULT_KEEP
        self._listeners.dispatch(Event(session.session_id, final=final))
        return done

    def _token_pending(
        self, token_id: str, now: float, decoys: bool = False
    ) -> list[SessionRecord]:
        """The token's pending sessions; decoys only if asked for (they count against the
        limits, but no phone sees them and no cascade ends them)."""
        found = []
        for sid in self._by_token.get(token_id, ()):
            s = self._sessions.get(sid)
            if (
                s is not None
                and s.state == "pending"
                and s.expires_at > now
                and (decoys or not s.decoy)
            ):
                found.append(s)
        return found

    def _gc(self, now: float) -> None:
        # A sweep over everything is O(n); once a second keeps it off the per-request path.
        if now - self._last_gc < 1.0:
            return
        self._last_gc = now
        for sid in [sid for sid, until in self._session_until.items() if until <= now]:
            self._session_until.pop(sid, None)
            session = self._sessions.pop(sid, None)
            self._sockets.pop(sid, None)
            self._grants.pop(sid, None)
            if session is not None:
                siblings = self._by_token.get(session.token_id)
                if siblings is not None:
                    siblings.discard(sid)
                    if not siblings:
                        del self._by_token[session.token_id]
        for key in [k for k, until in self._markers.items() if until <= now]:
            del self._markers[key]
        for sid in [k for k, until in self._tombstones.items() if until <= now]:
            del self._tombstones[sid]


def _settled(session: SessionRecord) -> Transition:
    if session.state == "expired":
        return Transition(Outcome.EXPIRED, session.failures)
    if session.state == "rejected" and session.failures >= MAX_SESSION_FAILURES:
        return Transition(Outcome.TOO_MANY, session.failures)
    return Transition(Outcome.NOT_PENDING, session.failures)


def _ceil(seconds: float) -> int:
    return max(1, int(seconds) + (0 if seconds == int(seconds) else 1))


def _lock(name: str) -> str:
    """The marker of a claim or cooldown (``acquire``), enrollment claims included."""
    return f"lock:{name}"
