"""Redis (and Redis-compatible) storage, shared by any number of operator instances.

Key layout (``T`` = tokenId, ``S`` = sessionId)::

    idtoken:{t:T}:device        hash    the enrolled device (no identity claims), no TTL
    idtoken:{t:T}:pending       zset    S -> expiresAt of the token's pending sessions
    idtoken:{t:T}:pushes        zset    pushes since the last successful login (rate window)
    idtoken:{t:T}:sess:S        hash    the session; TTL = lifetime + RESULT_KEEP
    idtoken:{t:T}:jti:<id>      string  single-use enrollment-token marker, TTL = exp + leeway
    idtoken:sessref:{S}         string  S -> T, for sockets that know only S; same TTL
    idtoken:rate:{<key>}        zset    sliding-window rate limits
    idtoken:events              channel decisions and socket claims, to every instance

Everything a state change touches carries the token's hash tag, so each Lua script stays in
one Cluster slot. Each state change is a single script call: one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from idtoken.clock import Clock
from idtoken.store import lua
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
    SessionRecord,
    StoreUnavailable,
    Transition,
    final_message,
)
from idtoken.store.events import LocalListeners

log = logging.getLogger("idtoken.store")

CHANNEL = "idtoken:events"


def _tag(token_id: str) -> str:
    return f"idtoken:{{t:{token_id}}}"


def device_key(token_id: str) -> str:
    return f"{_tag(token_id)}:device"


def session_key(token_id: str, session_id: str) -> str:
    return f"{_tag(token_id)}:sess:{session_id}"


class RedisStore:
    """The production store. See the module docstring for the key layout."""

    def __init__(self, url: str, clock: Clock) -> None:
        self._url = url
        self._clock = clock
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            max_connections=256,
        )
        # The event subscription has its own connection that never retries silently: a drop
        # must reach _subscribe_forever, which resubscribes *and* makes every socket re-read
        # its session (redis-py's own reconnect would resubscribe but lose what was missed).
        self._events: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            health_check_interval=15,
            retry=Retry(NoBackoff(), 0),
        )
        self._scripts = {
            name: self._r.register_script(getattr(lua, name))
            for name in (
                "CREATE",
                "APPROVE",
                "FAIL",
                "REJECT",
                "EXPIRE",
                "ENROLL",
                "PENDING",
                "CLAIM",
                "HIT",
                "MARK_DEAD",
                "SET_PUSH",
                "REVOKE",
                "UNLOCK",
            )
        }
        self._listeners = LocalListeners()
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._subscriber is None:
            self._subscriber = asyncio.create_task(self._subscribe_forever(), name="idtoken-events")
            # Give the subscription a moment so that early sockets do not miss events; if Redis
            # is down the operator still starts and sockets re-read state once it is back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)

    async def aclose(self) -> None:
        task, self._subscriber = self._subscriber, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._r.aclose()
        await self._events.aclose()

    async def ping(self) -> None:
        await self._call(self._r.ping())

    @property
    def events_connected(self) -> bool:
        return self._subscribed.is_set()

    async def _subscribe_forever(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._events.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._subscribed.set()
                delay = 0.05
                # Anything published while we were not subscribed is unknown to us: every
                # local socket re-reads its session.
                self._listeners.resync_all()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None or message.get("type") != "message":
                        continue
                    event = Event.decode(message["data"])
                    if event is not None:
                        self._listeners.dispatch(event)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("event subscription lost, reconnecting: %s", type(exc).__name__)
                self._subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._call(self._scripts[name](keys=list(keys), args=list(args)))

    # ---- devices -------------------------------------------------------------------------
    async def get_device(self, token_id: str) -> DeviceRecord | None:
        fields: dict[str, str] = await self._call(self._r.hgetall(device_key(token_id)))
        return DeviceRecord.from_fields(fields) if fields else None

    async def enroll(
        self, device: DeviceRecord, *, replay_id: str, replay_ttl: int
    ) -> EnrollStatus:
        tag = _tag(device.token_id)
        status = await self._run(
            "ENROLL",
            [device_key(device.token_id), f"{tag}:jti:{replay_id}", f"{tag}:pending"],
            [
                repr(self._clock.now()),
                RESULT_KEEP,
                CHANNEL,
                f"{tag}:sess:",
                max(1, replay_ttl),
                device.issuer,
                final_message("rejected", "User rejected"),
                *_flatten(device.to_fields()),
            ],
        )
        return EnrollStatus(status)

    async def mark_push_dead(self, token_id: str, endpoint: str) -> None:
        await self._run("MARK_DEAD", [device_key(token_id)], [endpoint])

    async def set_push_subscription(
        self, token_id: str, subscription: Mapping[str, Any] | None
    ) -> bool:
        value = "" if subscription is None else json.dumps(subscription, separators=(",", ":"))
        done = await self._run("SET_PUSH", [device_key(token_id)], [value])
        return bool(done)

    async def revoke_token(self, token_id: str, *, now: float) -> bool:
        tag = _tag(token_id)
        done = await self._run(
            "REVOKE",
            [device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                CHANNEL,
                f"{tag}:sess:",
                final_message("rejected", "User rejected"),
            ],
        )
        return bool(done)

    async def unlock_token(self, token_id: str) -> bool:
        return bool(await self._run("UNLOCK", [device_key(token_id)], []))

    async def list_devices(self, *, limit: int = 1000) -> list[DeviceRecord]:
        found: list[DeviceRecord] = []
        async for key in self._r.scan_iter(match="idtoken:{t:*}:device", count=500):
            device = await self.get_device(str(key)[len("idtoken:{t:") : -len("}:device")])
            if device is not None:
                found.append(device)
            if len(found) >= limit:
                break
        return found

    async def cache_get(self, name: str) -> str | None:
        value: str | None = await self._call(self._r.get(f"idtoken:cache:{{{name}}}"))
        return value

    async def cache_put(self, name: str, value: str, *, ttl: int) -> None:
        await self._call(self._r.set(f"idtoken:cache:{{{name}}}", value, ex=max(1, ttl)))

    async def acquire(self, name: str, *, ttl: int) -> bool:
        done = await self._call(
            self._r.set(f"idtoken:lock:{{{name}}}", "1", ex=max(1, ttl), nx=True)
        )
        return bool(done)

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self, session: SessionRecord, *, limits: InitiateLimits, now: float
    ) -> CreateResult:
        tag = _tag(session.token_id)
        keep_ms = int((session.expires_at - now + RESULT_KEEP) * 1000)
        reply = await self._run(
            "CREATE",
            [
                device_key(session.token_id),
                f"{tag}:pending",
                f"{tag}:pushes",
                session_key(session.token_id, session.session_id),
                _ref_key(session.session_id),
            ],
            [
                repr(now),
                repr(session.expires_at),
                keep_ms,
                limits.max_pending,
                limits.pushes_per_window,
                limits.push_window,
                limits.max_failed_verifications,
                session.session_id,
                *_flatten(session.to_fields()),
            ],
        )
        status = CreateStatus(reply[0])
        retry = _ceil(float(reply[1]))
        push = json.loads(reply[2]) if status is CreateStatus.CREATED and reply[2] else None
        return CreateResult(status, retry_after=retry, push_subscription=push)

    async def get_session(self, token_id: str, session_id: str) -> SessionRecord | None:
        fields: dict[str, str] = await self._call(
            self._r.hgetall(session_key(token_id, session_id))
        )
        return SessionRecord.from_fields(fields) if fields else None

    async def find_session(self, session_id: str) -> SessionRecord | None:
        token_id: str | None = await self._call(self._r.get(_ref_key(session_id)))
        if token_id is None:
            return None
        return await self.get_session(token_id, session_id)

    async def approve(
        self,
        token_id: str,
        session_id: str,
        *,
        key_thumbprint: str,
        credential_jti: str,
        final: str,
        now: float,
    ) -> Transition:
        tag = _tag(token_id)
        reply = await self._run(
            "APPROVE",
            [
                session_key(token_id, session_id),
                device_key(token_id),
                f"{tag}:pending",
                f"{tag}:pushes",
            ],
            [repr(now), RESULT_KEEP, session_id, CHANNEL, key_thumbprint, credential_jti, final],
        )
        return _transition(reply)

    async def fail(
        self, token_id: str, session_id: str, *, end_reason: str | None, now: float
    ) -> Transition:
        tag = _tag(token_id)
        reply = await self._run(
            "FAIL",
            [session_key(token_id, session_id), device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                session_id,
                CHANNEL,
                "" if end_reason is None else final_message("rejected", end_reason),
                final_message("rejected", "Too many attempts"),
                MAX_SESSION_FAILURES,
            ],
        )
        return _transition(reply)

    async def reject(
        self, token_id: str, session_id: str, *, reason: str, pause: int, now: float
    ) -> Transition:
        tag = _tag(token_id)
        reply = await self._run(
            "REJECT",
            [session_key(token_id, session_id), device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                session_id,
                CHANNEL,
                final_message("rejected", reason),
                pause,
                f"{tag}:sess:",
            ],
        )
        return _transition(reply)

    async def expire(self, token_id: str, session_id: str, *, now: float) -> SessionRecord | None:
        tag = _tag(token_id)
        flat = await self._run(
            "EXPIRE",
            [session_key(token_id, session_id), f"{tag}:pending"],
            [repr(now), RESULT_KEEP, session_id, CHANNEL],
        )
        return SessionRecord.from_fields(_pairs(flat)) if flat else None

    async def pending_sessions(self, token_id: str, *, now: float) -> list[SessionRecord]:
        tag = _tag(token_id)
        rows = await self._run("PENDING", [f"{tag}:pending"], [repr(now), f"{tag}:sess:"])
        sessions = [SessionRecord.from_fields(_pairs(row)) for row in rows]
        live = [s for s in sessions if s.state == "pending" and s.expires_at > now]
        return sorted(live, key=lambda s: s.created_at)

    async def claim_socket(self, token_id: str, session_id: str) -> int:
        seq = await self._run("CLAIM", [session_key(token_id, session_id)], [session_id, CHANNEL])
        return int(seq)

    def listen(self, session_id: str, callback: EventCallback) -> Callable[[], None]:
        return self._listeners.add(session_id, callback)

    async def hit(self, key: str, *, limit: int, window: int, now: float) -> int:
        reply = await self._run(
            "HIT",
            [f"idtoken:rate:{{{key}}}"],
            [repr(now), window, limit, f"{now!r}:{secrets.token_hex(4)}"],
        )
        wait = float(reply)
        return 0 if wait <= 0 else _ceil(wait)


def _ref_key(session_id: str) -> str:
    return f"idtoken:sessref:{{{session_id}}}"


def _flatten(fields: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out.extend((k, v))
    return out


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


_OUTCOMES = {
    "approved_now": Outcome.APPROVED,
    "rejected_now": Outcome.REJECTED,
    "counted": Outcome.COUNTED,
    "expired": Outcome.EXPIRED,
    "unknown": Outcome.UNKNOWN,
    "stale_device": Outcome.STALE_DEVICE,
    "revoked": Outcome.REVOKED,
}


def _transition(reply: Sequence[str]) -> Transition:
    """Map a script reply ``[outcome-or-state, failures]`` to a :class:`Transition`."""
    word, failures = reply[0], int(reply[1] or 0)
    if word == "rejected":  # the session was already rejected before this call
        outcome = Outcome.TOO_MANY if failures >= MAX_SESSION_FAILURES else Outcome.NOT_PENDING
    else:  # "approved" (an earlier decision) maps to NOT_PENDING
        outcome = _OUTCOMES.get(word, Outcome.NOT_PENDING)
    return Transition(outcome, failures)


def _ceil(seconds: float) -> int:
    return max(1, int(seconds) + (0 if seconds == int(seconds) else 1))
