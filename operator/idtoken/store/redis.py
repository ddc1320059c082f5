"""Redis (and Redis-compatible) storage, shared by any number of operator instances.

Key layout (``T`` = tokenId, ``S`` = sessionId)::

    idtoken:{t:T}:device        hash    the enrolled device (no identity claims), no TTL
    idtoken:{t:T}:pending       zset    S -> expiresAt of the token's pending sessions
    idtoken:{t:T}:pushes        zset    pushes since the last successful login (rate window)
    idtoken:{t:T}:sess:S        hash    the session; TTL = lifetime + RESULT_KEEP
    idtoken:{t:T}:jti:<id>      string  Cluster: the enrollment-token marker under the token
    idtoken:sessref:{S}         string  S -> T, for sockets that know only S; same TTL
    idtoken:lock:{enroll-jti:<id>}  string  an enrollment token's single-use claim (any token),
                                        TTL = exp + leeway; other locks and cooldowns too
    idtoken:rate:{<key>}        zset    sliding-window rate limits
    idtoken:events              channel decisions and socket claims (standalone, Sentinel)
    idtoken:{t:T}:events        shard channel, the same per token (Redis Cluster)

Everything a state change touches carries the token's hash tag, except the socket reference
and the enrollment claim, which a script writes only where there are no slots; so each Lua
script stays in one Cluster slot. Each state change is a single script call: one round trip.

Deployments (chosen by the URL scheme, see :mod:`idtoken.store.connect`): one server, a
Sentinel-managed master, or a Redis Cluster. The code path is the same except for three points:

* Events (:mod:`idtoken.store.feeds`). Standalone and Sentinel: scripts ``PUBLISH`` to
  ``idtoken:events`` and each process holds one subscriber connection (``ChannelFeed``).
  Cluster: scripts ``SPUBLISH`` to the token's channel (same slot as its keys) and each
  process subscribes, with ``SSUBSCRIBE``, to the channels of the tokens whose sessions its
  sockets serve — one connection per node that owns such a channel, shared by all sockets
  (``ShardFeed``).
* The socket reference, which is in the session's slot, not the token's. Standalone and
  Sentinel: the create script writes it (one round trip). Cluster: a ``SET`` sent concurrently
  with the script, deleted again if the script refuses (still one round trip of latency).
* The enrollment claim, in its own slot. Standalone and Sentinel: the enroll script checks and
  sets it with the device write. Cluster: a ``SET NX`` before the script, deleted again if the
  script refuses (conflict, revoked); a second round trip, on enrollment only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from idtoken.clock import Clock
from idtoken.store import lua
from idtoken.store.base import (
    MAX_SESSION_FAILURES,
    RESULT_KEEP,
    CreateResult,
    CreateStatus,
    DeviceRecord,
    EnrollStatus,
    EventCallback,
    InitiateLimits,
    Outcome,
    RedeemOutcome,
    Redemption,
    SessionRecord,
    StoreUnavailable,
    Transition,
    final_message,
)
from idtoken.store.connect import TlsFiles, open_connections
from idtoken.store.feeds import ChannelFeed, Listeners, ShardFeed
from idtoken.store.layout import (
    device_key,
    enroll_claim,
    lock_key,
    ref_key,
    session_key,
    token_tag,
)
from idtoken.store.resp import RespError, Script

log = logging.getLogger("idtoken.store")

APPROVAL_REPLICATION_TIMEOUT_MS = 500

_SCRIPTS = (
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
    "CANCEL",
    "REDEEM",
    "CLAIM_PING",
    "FIRST_FINGERPRINT",
)
PING_OUTBOX = "idtoken:pings"
"""The zset of CIBA ping deliveries, "<tokenId> <sessionId>" -> when due (in its own slot)."""


# ----------------------------------------------------------------------------- the store
class RedisStore:
    """The production store. See the module docstring for the key layout.

    ``url`` is any form :func:`~idtoken.store.connect.parse_redis_url` accepts; ``tls``
    carries the ``redis_tls_*`` files of the configuration.
    """

    def __init__(self, url: str, clock: Clock, *, tls: TlsFiles | None = None) -> None:
        self._clock = clock
        self._conn = open_connections(url, tls)
        self._cluster = self._conn.cluster
        self._r: Any = self._conn.commands
        self._scripts = {
            name: self._r.register_script(
                lua.sharded(getattr(lua, name)) if self._cluster else getattr(lua, name)
            )
            for name in _SCRIPTS
        }
        # Standalone and unix: scripts and reads go through the lean pipelined connection.
        self._lane = self._conn.lane
        self._lane_scripts = {name: Script(getattr(lua, name)) for name in _SCRIPTS}
        self._listeners = Listeners()
        self._feed: ChannelFeed | ShardFeed = (
            ShardFeed(self._conn, self._listeners)
            if self._cluster
            else ChannelFeed(self._conn.events, self._listeners)
        )
        self._subscriber: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._subscriber is None:
            self._subscriber = asyncio.create_task(self._feed.run(), name="idtoken-events")
            # Give the subscription a moment so that early sockets do not miss events; if Redis
            # is down the operator still starts and sockets re-read state once it is back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._feed.connected.wait(), timeout=2.0)

    async def aclose(self) -> None:
        task, self._subscriber = self._subscriber, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._feed.aclose()
        await self._conn.aclose()

    async def ping(self) -> None:
        if self._lane is not None:
            await self._call(self._lane.execute("PING"))
        else:
            await self._call(self._r.ping())

    @property
    def events_connected(self) -> bool:
        return self._feed.connected.is_set()

    @property
    def mode(self) -> str:
        """``standalone``, ``unix``, ``sentinel`` or ``cluster``."""
        return self._conn.target.mode

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (RedisError, RedisClusterException, RespError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._lane is not None:
            return await self._call(self._lane.evalsha(self._lane_scripts[name], keys, args))
        return await self._call(self._scripts[name](keys=list(keys), args=list(args)))

    async def _hgetall(self, key: str) -> dict[str, str]:
        if self._lane is None:
            fields: dict[str, str] = await self._call(self._r.hgetall(key))
            return fields
        return _pairs(await self._call(self._lane.execute("HGETALL", key)))

    async def _get(self, key: str) -> str | None:
        value: str | None = await self._call(
            self._r.get(key) if self._lane is None else self._lane.execute("GET", key)
        )
        return value

    async def _publish(
        self, name: str, token_id: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run a script that may publish about ``token_id``, after this process's own
        subscription to it (if being set up) is live."""
        await self._feed.settled(token_id)
        return await self._run(name, keys, args)

    # ---- devices -------------------------------------------------------------------------
    async def get_device(self, token_id: str) -> DeviceRecord | None:
        fields = await self._hgetall(device_key(token_id))
        return DeviceRecord.from_fields(fields) if fields else None

    async def enroll(
        self, device: DeviceRecord, *, replay_id: str, replay_ttl: int
    ) -> EnrollStatus:
        tag = token_tag(device.token_id)
        claim = enroll_claim(replay_id)
        args = [
            repr(self._clock.now()),
            RESULT_KEEP,
            self._feed.channel(device.token_id),
            f"{tag}:sess:",
            max(1, replay_ttl),
            device.issuer,
            final_message("rejected", "User rejected"),
            *_flatten(device.to_fields()),
        ]
        if not self._cluster:  # the script claims the token with the write: both or neither
            keys = [device_key(device.token_id), claim, f"{tag}:pending"]
            return EnrollStatus(await self._publish("ENROLL", device.token_id, keys, args))
        # On a Cluster the claim is in another slot than the token's keys: take it first, and
        # give it back when the script refused the enrollment (CONFLICT, REVOKED: it ran and
        # wrote nothing). Not on REPLAYED (the token's own marker shows it was stored) and not
        # on StoreUnavailable: the script may have run with its reply lost (the client retries
        # on a lost connection), so a 503 may use the token up here.
        if not await self._take(claim, ttl=replay_ttl):
            return EnrollStatus.REPLAYED
        keys = [device_key(device.token_id), f"{tag}:jti:{replay_id}", f"{tag}:pending"]
        status = EnrollStatus(await self._publish("ENROLL", device.token_id, keys, args))
        if status in (EnrollStatus.CONFLICT, EnrollStatus.REVOKED):
            await self._delete_quietly(claim)
        return status

    async def _delete_quietly(self, key: str) -> None:
        """Delete a key written ahead of a script that then refused, if the store lets us;
        else it expires with its own TTL."""
        with contextlib.suppress(StoreUnavailable):
            await self._call(self._r.delete(key))

    async def mark_push_dead(self, token_id: str, endpoint: str) -> None:
        await self._run("MARK_DEAD", [device_key(token_id)], [endpoint])

    async def set_push_subscription(
        self, token_id: str, subscription: Mapping[str, Any] | None
    ) -> bool:
        value = "" if subscription is None else json.dumps(subscription, separators=(",", ":"))
        done = await self._run("SET_PUSH", [device_key(token_id)], [value])
        return bool(done)

    async def revoke_token(self, token_id: str, *, now: float) -> bool:
        tag = token_tag(token_id)
        done = await self._publish(
            "REVOKE",
            token_id,
            [device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                self._feed.channel(token_id),
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
        return await self._take(lock_key(name), ttl=ttl)

    async def _take(self, key: str, *, ttl: int) -> bool:
        """``SET key NX`` for ``ttl`` seconds: True for the one caller that wrote it."""
        return bool(await self._call(self._r.set(key, "1", ex=max(1, ttl), nx=True)))

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self,
        session: SessionRecord,
        *,
        limits: InitiateLimits,
        now: float,
        decoy_allowed: bool = False,
    ) -> CreateResult:
        tag = token_tag(session.token_id)
        keep_ms = int((session.expires_at - now + RESULT_KEEP) * 1000)
        keys = [
            device_key(session.token_id),
            f"{tag}:pending",
            f"{tag}:pushes",
            session_key(session.token_id, session.session_id),
        ]
        args = [
            repr(now),
            repr(session.expires_at),
            keep_ms,
            limits.max_pending,
            limits.pushes_per_window,
            limits.push_window,
            limits.max_failed_verifications,
            session.session_id,
            "1" if decoy_allowed else "0",
            *_flatten(session.to_fields()),
        ]
        if self._cluster:
            reply = await self._create_in_cluster(session, keys, args, keep_ms)
        else:  # the script writes the socket reference too: one round trip, atomically
            reply = await self._run("CREATE", [*keys, ref_key(session.session_id)], args)
        status = CreateStatus(reply[0])
        retry = _ceil(float(reply[1]))
        push = json.loads(reply[2]) if status is CreateStatus.CREATED and reply[2] else None
        return CreateResult(status, retry_after=retry, push_subscription=push)

    async def _create_in_cluster(
        self, session: SessionRecord, keys: list[str], args: list[Any], keep_ms: int
    ) -> Any:
        """The reference lives in the session id's slot, the script in the token's: send both
        at once (one round trip of latency, two nodes in parallel) and take the reference back
        if the script did not create the session. A failure between the two leaves either a
        reference to nothing (harmless, it expires) or, if only the reference failed, a
        pending session no socket can open: the caller gets StoreUnavailable (503)."""
        ref = ref_key(session.session_id)
        created: Any
        referenced: Any
        created, referenced = await asyncio.gather(
            self._run("CREATE", keys, args),
            self._call(self._r.set(ref, session.token_id, px=keep_ms)),
            return_exceptions=True,
        )
        if isinstance(created, BaseException) or created[0] != CreateStatus.CREATED:
            # Not on EXISTS: the reference is then the existing session's (or a tombstone's,
            # which reads as nothing).
            exists = not isinstance(created, BaseException) and created[0] == CreateStatus.EXISTS
            if not isinstance(referenced, BaseException) and not exists:
                await self._delete_quietly(ref)
            if isinstance(created, BaseException):
                raise created
            return created
        if isinstance(referenced, BaseException):
            raise referenced
        return created

    async def cancel_session(self, token_id: str, session_id: str, *, keep: int) -> bool:
        tag = token_tag(token_id)
        keys = [session_key(token_id, session_id), f"{tag}:pending", f"{tag}:pushes"]
        ref = ref_key(session_id)
        if not self._cluster:
            keys.append(ref)
        done = bool(await self._run("CANCEL", keys, [max(1, keep), session_id]))
        if done and self._cluster:  # the reference is in another slot
            await self._call(self._r.delete(ref))
        return done

    async def get_session(self, token_id: str, session_id: str) -> SessionRecord | None:
        return SessionRecord.from_stored(await self._hgetall(session_key(token_id, session_id)))

    async def find_session(self, session_id: str) -> SessionRecord | None:
        token_id = await self._get(ref_key(session_id))
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
        grant: Mapping[str, str] | None = None,
        decided_by: str = "",
    ) -> Transition:
        tag = token_tag(token_id)
        keys = [
            session_key(token_id, session_id),
            device_key(token_id),
            f"{tag}:pending",
            f"{tag}:pushes",
        ]
        channel = self._feed.channel(token_id)
        args = [
            repr(now),
            RESULT_KEEP,
            session_id,
            channel,
            key_thumbprint,
            credential_jti,
            final,
            decided_by,
            *_flatten(grant or {}),
        ]
        if self.mode == "sentinel":
            return await self._approve_replicated(token_id, session_id, keys, args, final)
        return _transition(await self._publish("APPROVE", token_id, keys, args))

    async def _approve_replicated(
        self,
        token_id: str,
        session_id: str,
        keys: list[str],
        args: list[Any],
        final: str,
    ) -> Transition:
        """Under Sentinel, replication is asynchronous: an approval acknowledged by a master
        that dies a moment later may be lost in the failover, and the session approved again
        on the new master. So the approval is only made visible — the phone's 200 and the
        browser's JWT — once a replica has it (WAIT, on the same connection as the script)."""
        channel = args[3]
        await self._feed.settled(token_id)
        pipe = self._r.pipeline(transaction=False)
        await self._scripts["APPROVE"](keys=keys, args=[*args[:3], "", *args[4:]], client=pipe)
        pipe.execute_command("WAIT", 1, APPROVAL_REPLICATION_TIMEOUT_MS)
        reply, replicas = await self._call(pipe.execute())
        t = _transition(reply)
        if t.outcome is Outcome.APPROVED:
            if int(replicas) < 1:
                log.warning(
                    "approval not yet on a replica; a failover now could lose it",
                    extra={"session_id": session_id},
                )
            event = json.dumps({"sid": session_id, "final": final}, separators=(",", ":"))
            await self._call(self._r.publish(channel, event))
        return t

    async def fail(
        self,
        token_id: str,
        session_id: str,
        *,
        end_reason: str | None,
        now: float,
        decided_by: str = "",
    ) -> Transition:
        tag = token_tag(token_id)
        reply = await self._publish(
            "FAIL",
            token_id,
            [session_key(token_id, session_id), device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                session_id,
                self._feed.channel(token_id),
                "" if end_reason is None else final_message("rejected", end_reason),
                final_message("rejected", "Too many attempts"),
                MAX_SESSION_FAILURES,
                decided_by,
            ],
        )
        return _transition(reply)

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
        tag = token_tag(token_id)
        reply = await self._publish(
            "REJECT",
            token_id,
            [session_key(token_id, session_id), device_key(token_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                session_id,
                self._feed.channel(token_id),
                final_message("rejected", reason),
                pause,
                f"{tag}:sess:",
                decided_by,
            ],
        )
        return _transition(reply)

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
        tag = token_tag(token_id)
        reply = await self._publish(
            "REDEEM",
            token_id,
            [session_key(token_id, session_id), f"{tag}:pending"],
            [
                repr(now),
                RESULT_KEEP,
                session_id,
                self._feed.channel(token_id),
                grant_hash,
                poll_interval,
                max_interval,
            ],
        )
        return _redemption(reply)

    async def expire(
        self, token_id: str, session_id: str, *, now: float, decided_by: str = ""
    ) -> SessionRecord | None:
        tag = token_tag(token_id)
        flat = await self._publish(
            "EXPIRE",
            token_id,
            [session_key(token_id, session_id), f"{tag}:pending"],
            [repr(now), RESULT_KEEP, session_id, self._feed.channel(token_id), decided_by],
        )
        return SessionRecord.from_stored(_pairs(flat)) if flat else None

    async def pending_sessions(self, token_id: str, *, now: float) -> list[SessionRecord]:
        tag = token_tag(token_id)
        rows = await self._run("PENDING", [f"{tag}:pending"], [repr(now), f"{tag}:sess:"])
        sessions = [SessionRecord.from_fields(_pairs(row)) for row in rows]
        live = [s for s in sessions if s.state == "pending" and s.expires_at > now and not s.decoy]
        return sorted(live, key=lambda s: s.created_at)

    async def claim_socket(self, token_id: str, session_id: str) -> int:
        seq = await self._publish(
            "CLAIM",
            token_id,
            [session_key(token_id, session_id)],
            [session_id, self._feed.channel(token_id)],
        )
        return int(seq)

    def listen(self, token_id: str, session_id: str, callback: EventCallback) -> Callable[[], None]:
        stop_local = self._listeners.add(session_id, callback)
        release = self._feed.want(token_id, session_id)

        def stop() -> None:
            stop_local()
            release()

        return stop

    async def schedule_ping(
        self, token_id: str, session_id: str, *, at: float, queued_only: bool = False
    ) -> None:
        member = {_ping_member(token_id, session_id): at}
        await self._call(self._r.zadd(PING_OUTBOX, member, xx=queued_only))

    async def due_pings(self, *, now: float, limit: int) -> list[tuple[str, str]]:
        members = await self._call(
            self._r.zrangebyscore(PING_OUTBOX, "-inf", repr(now), start=0, num=limit)
        )
        return [_ping_pair(str(m)) for m in members]

    async def claim_ping(self, token_id: str, session_id: str, *, now: float, until: float) -> bool:
        member = _ping_member(token_id, session_id)
        return bool(await self._run("CLAIM_PING", [PING_OUTBOX], [member, repr(now), repr(until)]))

    async def ping_done(self, token_id: str, session_id: str) -> None:
        await self._call(self._r.zrem(PING_OUTBOX, _ping_member(token_id, session_id)))

    async def register_secret(self, name: str, fingerprint: str, *, replace: bool = False) -> str:
        recorded = await self._run(
            "FIRST_FINGERPRINT",
            [f"idtoken:secret:{{{name}}}"],
            [fingerprint, "1" if replace else "0"],
        )
        return str(recorded)

    async def hit(self, key: str, *, limit: int, window: int, now: float) -> int:
        reply = await self._run(
            "HIT",
            [f"idtoken:rate:{{{key}}}"],
            [repr(now), window, limit, f"{now!r}:{secrets.token_hex(4)}"],
        )
        wait = float(reply)
        return 0 if wait <= 0 else _ceil(wait)


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
    "expired_now": Outcome.EXPIRED,
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
    ended = tuple(zip(reply[2::2], reply[3::2], strict=True)) if word == "rejected_now" else ()
    return Transition(outcome, failures, decided=word.endswith("_now"), also_ended=ended)


def _redemption(reply: Sequence[str]) -> Redemption:
    interval = int(reply[1] or 0)
    if reply[0] == "expired_now":
        return Redemption(RedeemOutcome.EXPIRED, interval=interval, decided=True)
    outcome = RedeemOutcome(reply[0])
    if outcome is RedeemOutcome.ISSUED:
        return Redemption(
            outcome, grant=reply[2] or None, front=reply[3] or None, interval=interval
        )
    if outcome is RedeemOutcome.USED:
        return Redemption(outcome, revoke=reply[2] or None)
    return Redemption(outcome, interval=interval)


def _ping_member(token_id: str, session_id: str) -> str:
    return f"{token_id} {session_id}"  # ids never contain a space


def _ping_pair(member: str) -> tuple[str, str]:
    token_id, _, session_id = member.partition(" ")
    return token_id, session_id


def _ceil(seconds: float) -> int:
    return max(1, int(seconds) + (0 if seconds == int(seconds) else 1))
