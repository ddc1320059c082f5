"""The Store contract, run against both implementations: the embedded store and Redis.

Every test drives the public methods of :class:`idtoken.store.base.Store` only. Times are
passed explicitly from a :class:`ManualClock`; the Redis store keeps its TTLs as real Redis TTLs
(relative to the times it is given), so no test waits for wall-clock time to pass. Events are
awaited through an :class:`asyncio.Queue` with a timeout, never with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from idtoken.clock import ManualClock
from idtoken.store.base import (
    MAX_SESSION_FAILURES,
    RESULT_KEEP,
    CreateStatus,
    DeviceRecord,
    EnrollStatus,
    Event,
    InitiateLimits,
    Outcome,
    SessionRecord,
    Store,
    StoreUnavailable,
    Transition,
)
from idtoken.store.memory import MemoryStore
from idtoken.store.redis import RedisStore
from support import RedisServer, free_port

T0 = 1_800_000_000.5  # exactly representable, so time arithmetic in tests is exact
TOKEN = "tok-1"
ISSUER = "https://integration.test"
OTHER_ISSUER = "https://other-issuer.test"
ENDPOINT = "https://push.example.test/send/abc123"
SUBSCRIPTION: dict[str, Any] = {
    "endpoint": ENDPOINT,
    "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQt", "auth": "tBHItJI5svbpez7K"},
}
EXPIRED_MESSAGE = '{"type":"expired"}'
TOO_MANY_MESSAGE = '{"type":"rejected","reason":"Too many attempts"}'
EVENT_TIMEOUT = 5.0

LIMITS = InitiateLimits(
    max_pending=3, pushes_per_window=5, push_window=600, max_failed_verifications=100
)
ROOMY = InitiateLimits(
    max_pending=50, pushes_per_window=50, push_window=600, max_failed_verifications=100
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, clock: ManualClock, redis_srv: RedisServer
) -> AsyncIterator[Store]:
    if request.param == "memory":
        impl: Store = MemoryStore(clock)
    else:
        redis_srv.cli("FLUSHALL")
        impl = RedisStore(redis_srv.url, clock)
    await impl.start()
    try:
        yield impl
    finally:
        await impl.aclose()


@pytest.fixture
async def redis_store(clock: ManualClock, redis_url: str) -> AsyncIterator[RedisStore]:
    impl = RedisStore(redis_url, clock)
    await impl.start()
    try:
        yield impl
    finally:
        await impl.aclose()


# ----------------------------------------------------------------------------- helpers
def device_record(
    token_id: str = TOKEN,
    *,
    issuer: str = ISSUER,
    device_id: str = "device-1",
    thumbprint: str = "kt-1",
    jti: str = "cj-1",
    push: dict[str, Any] | None = SUBSCRIPTION,
    **fields: Any,
) -> DeviceRecord:
    return DeviceRecord(
        token_id=token_id,
        issuer=issuer,
        device_id=device_id,
        public_jwk={"kty": "EC", "crv": "P-256", "x": f"x-{thumbprint}", "y": f"y-{thumbprint}"},
        key_thumbprint=thumbprint,
        credential_jti=jti,
        credential_exp=int(T0) + 86_400,
        enrolled_at=T0 - 10.25,
        push_subscription=push,
        **fields,
    )


def session_record(
    session_id: str,
    token_id: str = TOKEN,
    *,
    created_at: float = T0,
    ttl: float = 60.0,
    nonce: str | None = None,
    scopes: tuple[str, ...] = ("identity:name",),
) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        token_id=token_id,
        service_id="shop",
        scopes=scopes,
        nonce=nonce,
        otp="123456",
        ws_token_sha256="ab" * 32,
        random="0123456789abcdef",
        created_at=created_at,
        expires_at=created_at + ttl,
    )


def approved_message(session_id: str) -> str:
    return json.dumps(
        {"type": "approved", "jwt": f"h.{session_id}.s", "random": "0123456789abcdef"},
        separators=(",", ":"),
    )


def rejected_message(reason: str) -> str:
    return json.dumps({"type": "rejected", "reason": reason}, separators=(",", ":"))


async def enroll(
    store: Store, device: DeviceRecord | None = None, *, replay_id: str | None = None
) -> EnrollStatus:
    device = device or device_record()
    if replay_id is None:  # each token's own enrollment token (a jti is single use across tokens)
        replay_id = "jti-1" if device.token_id == TOKEN else f"jti-{device.token_id}"
    return await store.enroll(device, replay_id=replay_id, replay_ttl=600)


async def create(
    store: Store,
    session_id: str,
    *,
    now: float = T0,
    limits: InitiateLimits = LIMITS,
    ttl: float = 60.0,
    token_id: str = TOKEN,
) -> SessionRecord:
    """Create a session that must be accepted; returns the record that was stored."""
    record = session_record(session_id, token_id, created_at=now, ttl=ttl)
    result = await store.create_session(record, limits=limits, now=now)
    assert result.status is CreateStatus.CREATED, result
    return record


async def approve(
    store: Store,
    session_id: str,
    *,
    now: float = T0 + 1,
    thumbprint: str = "kt-1",
    jti: str = "cj-1",
    token_id: str = TOKEN,
) -> Transition:
    return await store.approve(
        token_id,
        session_id,
        key_thumbprint=thumbprint,
        credential_jti=jti,
        final=approved_message(session_id),
        now=now,
    )


async def fail(
    store: Store, session_id: str, *, now: float = T0 + 1, end_reason: str | None = None
) -> Transition:
    return await store.fail(TOKEN, session_id, end_reason=end_reason, now=now)


async def stored(store: Store, session_id: str) -> SessionRecord:
    record = await store.get_session(TOKEN, session_id)
    assert record is not None, f"session {session_id} is gone"
    return record


async def stored_device(store: Store, token_id: str = TOKEN) -> DeviceRecord:
    device = await store.get_device(token_id)
    assert device is not None
    return device


class Inbox:
    """An event listener that queues what it receives, to be awaited with a timeout."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Event | None]] = asyncio.Queue()

    def __call__(self, session_id: str, event: Event | None) -> None:
        self.queue.put_nowait((session_id, event))

    async def next(self, timeout: float = EVENT_TIMEOUT) -> tuple[str, Event | None]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def next_event(self, timeout: float = EVENT_TIMEOUT) -> Event:
        """The next real event; resync notices (None) only ask to re-read and are skipped."""
        while True:
            session_id, event = await self.next(timeout)
            if event is not None:
                assert event.session_id == session_id
                return event

    def drained(self) -> list[Event | None]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait()[1])
        return items


def redis_keys(srv: RedisServer) -> set[str]:
    out = srv.cli("--scan", "--pattern", "idtoken:*")
    return {line for line in out.splitlines() if line}


# ============================================================================= lifecycle
async def test_ping_answers_when_the_store_is_up(store: Store) -> None:
    await store.ping()


async def test_start_twice_does_not_deliver_events_twice(store: Store) -> None:
    await store.start()
    await enroll(store)
    await create(store, "sess_a")
    inbox = Inbox()
    store.listen(TOKEN, "sess_a", inbox)

    await store.claim_socket(TOKEN, "sess_a")
    await store.claim_socket(TOKEN, "sess_a")

    assert (await inbox.next_event()).claim == 1
    assert (await inbox.next_event()).claim == 2


# ============================================================================= enroll
async def test_enroll_new_token_is_enrolled(store: Store) -> None:
    assert await enroll(store) is EnrollStatus.ENROLLED
    assert await store.get_device(TOKEN) == device_record()


async def test_get_device_of_unknown_token_is_none(store: Store) -> None:
    assert await store.get_device("nobody") is None


async def test_get_device_round_trips_every_field(store: Store) -> None:
    device = DeviceRecord(
        token_id="tok-roundtrip",
        issuer=ISSUER,
        device_id="device-é-1",
        public_jwk={"kty": "EC", "crv": "P-256", "x": "AbC-_123", "y": "xYz_-789"},
        key_thumbprint="thumb-1",
        credential_jti="jti-abc",
        credential_exp=1_900_000_123,
        enrolled_at=T0 - 0.125,
        push_subscription={"endpoint": ENDPOINT, "keys": {"p256dh": "p", "auth": "a"}},
        push_dead=True,
        status="active",
        failed_verifications=7,
        paused_until=T0 - 42.75,
    )
    assert await enroll(store, device) is EnrollStatus.ENROLLED
    assert await store.get_device("tok-roundtrip") == device


async def test_enroll_without_push_subscription_round_trips_none(store: Store) -> None:
    await enroll(store, device_record(push=None))
    assert (await stored_device(store)).push_subscription is None


async def test_enroll_with_a_seen_replay_id_is_replayed_and_changes_nothing(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    await create(store, "sess_a")

    status = await enroll(store, device_record(thumbprint="kt-2"), replay_id="jti-1")

    assert status is EnrollStatus.REPLAYED
    assert await store.get_device(TOKEN) == device_record()
    assert (await stored(store, "sess_a")).state == "pending"


async def test_a_replay_id_is_single_use_across_tokens(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    status = await enroll(store, device_record("tok-2"), replay_id="jti-1")
    assert status is EnrollStatus.REPLAYED
    assert await store.get_device("tok-2") is None


async def test_a_refused_enrollment_does_not_use_up_its_replay_id(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    conflict = await enroll(store, device_record(issuer="https://other.example"), replay_id="j2")
    assert conflict is EnrollStatus.CONFLICT
    assert await enroll(store, device_record("tok-2"), replay_id="j2") is EnrollStatus.ENROLLED
    await enroll(store, device_record("tok-3", status="revoked"), replay_id="jti-3")
    revoked = await enroll(store, device_record("tok-3"), replay_id="j4")
    assert revoked is EnrollStatus.REVOKED
    assert await enroll(store, device_record("tok-4"), replay_id="j4") is EnrollStatus.ENROLLED


async def test_enroll_same_issuer_replaces_device(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    new = device_record(device_id="device-2", thumbprint="kt-2", jti="cj-2")

    status = await enroll(store, new, replay_id="jti-2")

    assert status is EnrollStatus.REPLACED
    assert await store.get_device(TOKEN) == new


async def test_replaced_device_key_no_longer_approves(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    await enroll(store, device_record(thumbprint="kt-2", jti="cj-2"), replay_id="jti-2")
    await create(store, "sess_a")

    result = await approve(store, "sess_a", thumbprint="kt-1", jti="cj-1")

    assert result.outcome is Outcome.STALE_DEVICE
    assert (await stored(store, "sess_a")).state == "pending"


async def test_replacing_a_device_rejects_its_pending_sessions_and_publishes(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    await create(store, "sess_a")
    await create(store, "sess_b", now=T0 + 1)
    inbox_a, inbox_b = Inbox(), Inbox()
    store.listen(TOKEN, "sess_a", inbox_a)
    store.listen(TOKEN, "sess_b", inbox_b)

    await enroll(store, device_record(thumbprint="kt-2", jti="cj-2"), replay_id="jti-2")

    for sid, inbox in (("sess_a", inbox_a), ("sess_b", inbox_b)):
        record = await stored(store, sid)
        assert record.state == "rejected"
        assert record.result is not None
        assert json.loads(record.result)["type"] == "rejected"
        assert (await inbox.next_event()).final == record.result
    assert await store.pending_sessions(TOKEN, now=T0 + 2) == []


async def test_enroll_other_issuer_is_conflict_and_changes_nothing(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    await create(store, "sess_a")

    status = await enroll(
        store, device_record(issuer=OTHER_ISSUER, thumbprint="kt-2"), replay_id="jti-2"
    )

    assert status is EnrollStatus.CONFLICT
    assert await store.get_device(TOKEN) == device_record()
    assert (await stored(store, "sess_a")).state == "pending"


async def test_conflicting_enroll_does_not_consume_its_replay_id(store: Store) -> None:
    await enroll(store, replay_id="jti-1")
    await enroll(store, device_record(issuer=OTHER_ISSUER), replay_id="jti-2")

    status = await enroll(store, device_record(thumbprint="kt-2"), replay_id="jti-2")

    assert status is EnrollStatus.REPLACED


async def test_enroll_on_revoked_token_is_refused(store: Store) -> None:
    await enroll(store, device_record(status="revoked"), replay_id="jti-1")

    status = await enroll(store, device_record(thumbprint="kt-2"), replay_id="jti-2")

    assert status is EnrollStatus.REVOKED
    assert await store.get_device(TOKEN) == device_record(status="revoked")


# ============================================================================= push subscription
async def test_create_session_returns_the_push_subscription(store: Store) -> None:
    await enroll(store)
    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)
    assert result.status is CreateStatus.CREATED
    assert result.push_subscription == SUBSCRIPTION


async def test_create_session_without_subscription_returns_none(store: Store) -> None:
    await enroll(store, device_record(push=None))
    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)
    assert result.status is CreateStatus.CREATED
    assert result.push_subscription is None


async def test_dead_push_subscription_is_not_returned(store: Store) -> None:
    await enroll(store)
    await store.mark_push_dead(TOKEN, ENDPOINT)

    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)

    assert result.status is CreateStatus.CREATED
    assert result.push_subscription is None
    assert (await stored_device(store)).push_dead is True


async def test_mark_push_dead_with_another_endpoint_changes_nothing(store: Store) -> None:
    await enroll(store)
    await store.mark_push_dead(TOKEN, "https://push.example.test/send/OTHER")

    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)

    assert result.push_subscription == SUBSCRIPTION
    assert await store.get_device(TOKEN) == device_record()


async def test_mark_push_dead_on_unknown_token_is_harmless(store: Store) -> None:
    await store.mark_push_dead("nobody", ENDPOINT)
    assert await store.get_device("nobody") is None


# ============================================================================= create_session
async def test_create_session_for_unknown_token_is_refused(store: Store) -> None:
    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)
    assert result.status is CreateStatus.UNKNOWN_TOKEN


async def test_create_session_for_revoked_token_is_refused(store: Store) -> None:
    await enroll(store, device_record(status="revoked"))
    result = await store.create_session(session_record("sess_a"), limits=LIMITS, now=T0)
    assert result.status is CreateStatus.REVOKED


async def test_too_many_pending_until_the_oldest_expires(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=2)
    await create(store, "sess_a", now=T0, limits=limits)  # expires T0 + 60
    await create(store, "sess_b", now=T0 + 5, limits=limits)  # expires T0 + 65

    result = await store.create_session(
        session_record("sess_c", created_at=T0 + 10), limits=limits, now=T0 + 10
    )

    assert result.status is CreateStatus.TOO_MANY_PENDING
    assert result.retry_after == 50


async def test_expired_sessions_no_longer_count_as_pending(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=2)
    await create(store, "sess_a", now=T0, limits=limits)
    await create(store, "sess_b", now=T0, limits=limits)

    refused = await store.create_session(
        session_record("sess_c", created_at=T0 + 59), limits=limits, now=T0 + 59
    )
    accepted = await store.create_session(
        session_record("sess_d", created_at=T0 + 60), limits=limits, now=T0 + 60
    )

    assert refused.status is CreateStatus.TOO_MANY_PENDING
    assert accepted.status is CreateStatus.CREATED


async def test_decided_sessions_no_longer_count_as_pending(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=1)
    await create(store, "sess_a", limits=limits)
    await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1)

    await create(store, "sess_b", now=T0 + 2, limits=limits)


async def test_push_rate_refuses_after_pushes_per_window(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=10, pushes_per_window=2, push_window=600)
    await create(store, "sess_a", now=T0, limits=limits)
    await create(store, "sess_b", now=T0 + 1, limits=limits)

    result = await store.create_session(
        session_record("sess_c", created_at=T0 + 10), limits=limits, now=T0 + 10
    )

    assert result.status is CreateStatus.PUSH_RATE
    assert result.retry_after == 590


async def test_push_rate_window_slides(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=10, pushes_per_window=2, push_window=600)
    await create(store, "sess_a", now=T0, limits=limits)
    await create(store, "sess_b", now=T0 + 1, limits=limits)

    await create(store, "sess_c", now=T0 + 600, limits=limits)


async def test_successful_approve_resets_push_rate(store: Store) -> None:
    await enroll(store)
    limits = replace(LIMITS, max_pending=10, pushes_per_window=2, push_window=600)
    await create(store, "sess_a", now=T0, limits=limits)
    await create(store, "sess_b", now=T0 + 1, limits=limits)
    assert (await approve(store, "sess_a", now=T0 + 2)).outcome is Outcome.APPROVED

    await create(store, "sess_c", now=T0 + 3, limits=limits)


async def test_paused_after_fraud_report_with_retry_after_of_the_pause(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await store.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0 + 1)

    result = await store.create_session(
        session_record("sess_b", created_at=T0 + 101), limits=LIMITS, now=T0 + 101
    )

    assert result.status is CreateStatus.PAUSED
    assert result.retry_after == 800


async def test_pause_ends_after_its_duration(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await store.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0 + 1)

    await create(store, "sess_b", now=T0 + 901)


async def test_locked_once_failed_verifications_reach_the_limit(store: Store) -> None:
    await enroll(store)
    limits = replace(ROOMY, max_failed_verifications=4)
    await create(store, "sess_a", limits=limits)
    await fail(store, "sess_a")
    await fail(store, "sess_a")
    await create(store, "sess_b", now=T0 + 2, limits=limits)  # the count survives
    await store.fail(TOKEN, "sess_b", end_reason=None, now=T0 + 3)
    await store.fail(TOKEN, "sess_b", end_reason=None, now=T0 + 3)

    result = await store.create_session(
        session_record("sess_c", created_at=T0 + 4), limits=limits, now=T0 + 4
    )

    assert (await stored_device(store)).failed_verifications == 4
    assert result.status is CreateStatus.LOCKED
    assert result.retry_after > 0


async def test_approve_resets_the_failed_verification_count(store: Store) -> None:
    await enroll(store)
    limits = replace(ROOMY, max_failed_verifications=3)
    await create(store, "sess_a", limits=limits)
    await fail(store, "sess_a")
    await fail(store, "sess_a")
    assert (await approve(store, "sess_a", now=T0 + 2)).outcome is Outcome.APPROVED
    assert (await stored_device(store)).failed_verifications == 0
    await create(store, "sess_b", now=T0 + 3, limits=limits)
    await store.fail(TOKEN, "sess_b", end_reason=None, now=T0 + 4)
    await store.fail(TOKEN, "sess_b", end_reason=None, now=T0 + 4)

    await create(store, "sess_c", now=T0 + 5, limits=limits)


async def _refuse_unknown_token(store: Store) -> InitiateLimits:
    return LIMITS


async def _refuse_revoked(store: Store) -> InitiateLimits:
    await enroll(store, device_record(status="revoked"))
    return LIMITS


async def _refuse_paused(store: Store) -> InitiateLimits:
    await enroll(store)
    await create(store, "sess_prior")
    await store.reject(TOKEN, "sess_prior", reason="Not me", pause=900, now=T0)
    return LIMITS


async def _refuse_locked(store: Store) -> InitiateLimits:
    await enroll(store)
    limits = replace(LIMITS, max_failed_verifications=1)
    await create(store, "sess_prior", limits=limits)
    await fail(store, "sess_prior", now=T0)
    return limits


async def _refuse_too_many_pending(store: Store) -> InitiateLimits:
    await enroll(store)
    limits = replace(LIMITS, max_pending=1)
    await create(store, "sess_prior", limits=limits)
    return limits


async def _refuse_push_rate(store: Store) -> InitiateLimits:
    await enroll(store)
    limits = replace(LIMITS, max_pending=5, pushes_per_window=1)
    await create(store, "sess_prior", limits=limits)
    return limits


REFUSALS: dict[CreateStatus, Callable[[Store], Awaitable[InitiateLimits]]] = {
    CreateStatus.UNKNOWN_TOKEN: _refuse_unknown_token,
    CreateStatus.REVOKED: _refuse_revoked,
    CreateStatus.PAUSED: _refuse_paused,
    CreateStatus.LOCKED: _refuse_locked,
    CreateStatus.TOO_MANY_PENDING: _refuse_too_many_pending,
    CreateStatus.PUSH_RATE: _refuse_push_rate,
}


@pytest.mark.parametrize("refusal", list(REFUSALS), ids=str)
async def test_refused_create_session_writes_nothing(
    store: Store, redis_srv: RedisServer, refusal: CreateStatus
) -> None:
    limits = await REFUSALS[refusal](store)
    device_before = await store.get_device(TOKEN)
    pending_before = await store.pending_sessions(TOKEN, now=T0 + 1)
    keys_before = redis_keys(redis_srv) if isinstance(store, RedisStore) else set()

    result = await store.create_session(
        session_record("sess_refused", created_at=T0 + 1), limits=limits, now=T0 + 1
    )

    assert result.status is refusal
    assert await store.find_session("sess_refused") is None
    assert await store.get_session(TOKEN, "sess_refused") is None
    assert await store.get_device(TOKEN) == device_before
    assert await store.pending_sessions(TOKEN, now=T0 + 1) == pending_before
    if isinstance(store, RedisStore):
        keys_after = redis_keys(redis_srv)
        assert [k for k in keys_after if "sess_refused" in k] == []
        assert keys_after == keys_before


# ============================================================================= reading sessions
@pytest.mark.parametrize("nonce", [None, "", "n-0123456789"], ids=["none", "empty", "value"])
async def test_get_session_round_trips_every_field(store: Store, nonce: str | None) -> None:
    await enroll(store)
    record = SessionRecord(
        session_id="sess_Ab-_9",
        token_id=TOKEN,
        service_id="shop",
        scopes=("identity:name", "identity:age_over_18"),
        nonce=nonce,
        otp="004200",
        ws_token_sha256="0f" * 32,
        random="fedcba9876543210",
        created_at=T0 + 0.375,
        expires_at=T0 + 60.375,
    )
    await store.create_session(record, limits=LIMITS, now=T0 + 0.375)

    assert await store.get_session(TOKEN, "sess_Ab-_9") == record
    assert await store.find_session("sess_Ab-_9") == record


async def test_session_without_scopes_round_trips(store: Store) -> None:
    await enroll(store)
    record = session_record("sess_a", scopes=())
    await store.create_session(record, limits=LIMITS, now=T0)
    assert await store.find_session("sess_a") == record


async def test_get_session_with_wrong_token_is_none(store: Store) -> None:
    await enroll(store)
    await enroll(store, device_record("tok-2"))
    await create(store, "sess_a")
    assert await store.get_session("tok-2", "sess_a") is None


async def test_unknown_session_reads_as_none(store: Store) -> None:
    assert await store.get_session(TOKEN, "sess_nope") is None
    assert await store.find_session("sess_nope") is None


# ============================================================================= approve
async def test_approve_pending_session_stores_the_final_message(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    result = await approve(store, "sess_a")

    assert result.outcome is Outcome.APPROVED
    record = await stored(store, "sess_a")
    assert record.state == "approved"
    assert record.result == approved_message("sess_a")


async def test_second_approve_is_not_pending(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await approve(store, "sess_a")

    assert (await approve(store, "sess_a", now=T0 + 2)).outcome is Outcome.NOT_PENDING
    assert (await stored(store, "sess_a")).result == approved_message("sess_a")


@pytest.mark.parametrize(
    ("thumbprint", "jti"), [("kt-OLD", "cj-1"), ("kt-1", "cj-OLD")], ids=["key", "credential"]
)
async def test_approve_with_stale_device_changes_nothing(
    store: Store, thumbprint: str, jti: str
) -> None:
    await enroll(store)
    record = await create(store, "sess_a")

    result = await approve(store, "sess_a", thumbprint=thumbprint, jti=jti)

    assert result.outcome is Outcome.STALE_DEVICE
    assert await stored(store, "sess_a") == record
    assert (await approve(store, "sess_a")).outcome is Outcome.APPROVED


async def test_approve_at_expiry_expires_the_session(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a", ttl=60)

    result = await approve(store, "sess_a", now=T0 + 60)

    assert result.outcome is Outcome.EXPIRED
    record = await stored(store, "sess_a")
    assert record.state == "expired"
    assert record.result == EXPIRED_MESSAGE


async def test_approve_just_before_expiry_succeeds(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a", ttl=60)
    assert (await approve(store, "sess_a", now=T0 + 59.5)).outcome is Outcome.APPROVED


async def test_approve_unknown_session(store: Store) -> None:
    await enroll(store)
    assert (await approve(store, "sess_nope")).outcome is Outcome.UNKNOWN


async def test_approve_with_another_token_is_unknown(store: Store) -> None:
    await enroll(store)
    await enroll(store, device_record("tok-2"))
    await create(store, "sess_a")

    assert (await approve(store, "sess_a", token_id="tok-2")).outcome is Outcome.UNKNOWN
    assert (await stored(store, "sess_a")).state == "pending"


# ============================================================================= fail
async def test_fail_counts_then_rejects_at_the_third_failure(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    first = await fail(store, "sess_a")
    second = await fail(store, "sess_a")
    third = await fail(store, "sess_a")

    assert (first.outcome, first.failures) == (Outcome.COUNTED, 1)
    assert (second.outcome, second.failures) == (Outcome.COUNTED, 2)
    assert (third.outcome, third.failures) == (Outcome.REJECTED, MAX_SESSION_FAILURES)
    record = await stored(store, "sess_a")
    assert record.state == "rejected"
    assert record.failures == MAX_SESSION_FAILURES
    assert record.result == TOO_MANY_MESSAGE


async def test_after_too_many_failures_approve_and_fail_are_too_many(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    for _ in range(MAX_SESSION_FAILURES):
        await fail(store, "sess_a")

    assert (await approve(store, "sess_a", now=T0 + 2)).outcome is Outcome.TOO_MANY
    assert (await fail(store, "sess_a", now=T0 + 2)).outcome is Outcome.TOO_MANY


async def test_fail_with_end_reason_rejects_at_once(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    result = await fail(store, "sess_a", end_reason="Invalid OTP")

    assert (result.outcome, result.failures) == (Outcome.REJECTED, 1)
    record = await stored(store, "sess_a")
    assert record.state == "rejected"
    assert record.result == rejected_message("Invalid OTP")
    assert (await approve(store, "sess_a", now=T0 + 2)).outcome is Outcome.NOT_PENDING


async def test_failed_verifications_accumulate_across_sessions(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a", limits=ROOMY)
    await fail(store, "sess_a")
    await fail(store, "sess_a", end_reason="Invalid OTP")
    await create(store, "sess_b", now=T0 + 2, limits=ROOMY)
    await store.fail(TOKEN, "sess_b", end_reason=None, now=T0 + 3)

    assert (await stored_device(store)).failed_verifications == 3
    assert (await stored(store, "sess_b")).failures == 1


async def test_fail_on_expired_session_counts_nothing(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a", ttl=60)

    result = await fail(store, "sess_a", now=T0 + 60)

    assert result.outcome is Outcome.EXPIRED
    assert (await stored(store, "sess_a")).failures == 0
    assert (await stored_device(store)).failed_verifications == 0


async def test_fail_on_unknown_session(store: Store) -> None:
    await enroll(store)
    assert (await fail(store, "sess_nope")).outcome is Outcome.UNKNOWN
    assert (await stored_device(store)).failed_verifications == 0


# ============================================================================= reject
async def test_reject_ends_the_session_with_the_reason(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    result = await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1)

    assert result.outcome is Outcome.REJECTED
    record = await stored(store, "sess_a")
    assert record.state == "rejected"
    assert record.result == rejected_message("User rejected")


async def test_reject_without_pause_leaves_other_sessions_pending(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await create(store, "sess_b")

    await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1)

    assert (await stored(store, "sess_b")).state == "pending"
    assert (await stored_device(store)).paused_until == 0.0


async def test_reject_with_pause_rejects_every_pending_session_and_publishes(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await create(store, "sess_b", now=T0 + 1)
    await create(store, "sess_c", now=T0 + 2)
    inboxes = {sid: Inbox() for sid in ("sess_a", "sess_b", "sess_c")}
    for sid, inbox in inboxes.items():
        store.listen(TOKEN, sid, inbox)

    result = await store.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0 + 3)

    assert result.outcome is Outcome.REJECTED
    for sid, inbox in inboxes.items():
        record = await stored(store, sid)
        assert record.state == "rejected"
        assert record.result == rejected_message("Not me")
        assert (await inbox.next_event()).final == rejected_message("Not me")
    assert await store.pending_sessions(TOKEN, now=T0 + 3) == []


async def test_reject_with_pause_sets_paused_until(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    await store.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0 + 3)

    assert (await stored_device(store)).paused_until == pytest.approx(T0 + 903, abs=1e-3)


async def test_reject_of_decided_session_is_not_pending(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await approve(store, "sess_a")

    result = await store.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0 + 2)

    assert result.outcome is Outcome.NOT_PENDING
    assert (await stored(store, "sess_a")).state == "approved"
    assert (await stored_device(store)).paused_until == 0.0


# ============================================================================= expire
async def test_expire_before_expiry_leaves_the_session_pending(store: Store) -> None:
    await enroll(store)
    record = await create(store, "sess_a", ttl=60)

    assert await store.expire(TOKEN, "sess_a", now=T0 + 59) == record
    assert await stored(store, "sess_a") == record


async def test_expire_after_expiry_marks_the_session_expired(store: Store) -> None:
    await enroll(store)
    record = await create(store, "sess_a", ttl=60)

    result = await store.expire(TOKEN, "sess_a", now=T0 + 61)

    expected = replace(record, state="expired", result=EXPIRED_MESSAGE, decided_at=T0 + 61)
    assert result == expected
    assert await stored(store, "sess_a") == expected


async def test_expire_returns_a_decided_session_unchanged(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a", ttl=60)
    await approve(store, "sess_a")

    result = await store.expire(TOKEN, "sess_a", now=T0 + 61)

    assert result is not None
    assert result.state == "approved"
    assert result.result == approved_message("sess_a")


async def test_expire_of_unknown_session_is_none(store: Store) -> None:
    await enroll(store)
    assert await store.expire(TOKEN, "sess_nope", now=T0) is None


# ============================================================================= pending_sessions
async def test_pending_sessions_oldest_first(store: Store) -> None:
    await enroll(store)
    # Created oldest first but expiring in the opposite order: the order is by creation.
    a = await create(store, "sess_a", now=T0, ttl=300, limits=ROOMY)
    b = await create(store, "sess_b", now=T0 + 1, ttl=200, limits=ROOMY)
    c = await create(store, "sess_c", now=T0 + 2, ttl=100, limits=ROOMY)

    assert await store.pending_sessions(TOKEN, now=T0 + 3) == [a, b, c]


async def test_pending_sessions_only_pending_and_unexpired(store: Store) -> None:
    await enroll(store)
    await enroll(store, device_record("tok-2"))
    await create(store, "sess_approved", now=T0, limits=ROOMY)
    await create(store, "sess_rejected", now=T0, limits=ROOMY)
    await create(store, "sess_short", now=T0, ttl=10, limits=ROOMY)
    live = await create(store, "sess_live", now=T0 + 1, ttl=60, limits=ROOMY)
    await create(store, "sess_other_token", token_id="tok-2", limits=ROOMY)
    await approve(store, "sess_approved", now=T0 + 2)
    await store.reject(TOKEN, "sess_rejected", reason="User rejected", pause=0, now=T0 + 2)

    assert await store.pending_sessions(TOKEN, now=T0 + 10) == [live]


async def test_pending_sessions_of_unknown_token_is_empty(store: Store) -> None:
    assert await store.pending_sessions("nobody", now=T0) == []


# ============================================================================= events
async def test_claim_socket_numbers_claims_and_publishes_them(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    inbox = Inbox()
    store.listen(TOKEN, "sess_a", inbox)

    first = await store.claim_socket(TOKEN, "sess_a")
    second = await store.claim_socket(TOKEN, "sess_a")

    assert second > first >= 1
    assert await inbox.next_event() == Event("sess_a", claim=first)
    assert await inbox.next_event() == Event("sess_a", claim=second)


async def test_listeners_only_hear_about_their_session(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await create(store, "sess_b")
    inbox_a, inbox_b = Inbox(), Inbox()
    store.listen(TOKEN, "sess_a", inbox_a)
    store.listen(TOKEN, "sess_b", inbox_b)

    await approve(store, "sess_b")

    assert (await inbox_b.next_event()).session_id == "sess_b"
    assert [e for e in inbox_a.drained() if e is not None] == []


async def test_approval_event_carries_the_stored_message(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    inbox = Inbox()
    store.listen(TOKEN, "sess_a", inbox)

    await approve(store, "sess_a")

    event = await inbox.next_event()
    assert event == Event("sess_a", final=approved_message("sess_a"))
    assert event.final == (await stored(store, "sess_a")).result


async def test_rejection_event_carries_the_stored_message(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    inbox = Inbox()
    store.listen(TOKEN, "sess_a", inbox)

    await fail(store, "sess_a", end_reason="Invalid OTP")

    assert (await inbox.next_event()).final == rejected_message("Invalid OTP")


async def test_expiry_event_carries_the_expired_message(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    inbox = Inbox()
    store.listen(TOKEN, "sess_a", inbox)

    await store.expire(TOKEN, "sess_a", now=T0 + 60)

    assert (await inbox.next_event()).final == EXPIRED_MESSAGE


async def test_stop_function_stops_delivery(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    stopped, still = Inbox(), Inbox()
    stop = store.listen(TOKEN, "sess_a", stopped)
    store.listen(TOKEN, "sess_a", still)
    await store.claim_socket(TOKEN, "sess_a")
    assert (await stopped.next_event()).claim == 1
    assert (await still.next_event()).claim == 1

    stop()
    await approve(store, "sess_a")

    # Both callbacks are served by the same dispatch: once `still` has the event, `stopped`
    # would have it too.
    assert (await still.next_event()).final == approved_message("sess_a")
    assert [e for e in stopped.drained() if e is not None] == []


# ============================================================================= rate limits
async def test_hit_allows_limit_hits_then_returns_the_wait(store: Store) -> None:
    assert await store.hit("ip:1", limit=3, window=60, now=T0) == 0
    assert await store.hit("ip:1", limit=3, window=60, now=T0 + 1) == 0
    assert await store.hit("ip:1", limit=3, window=60, now=T0 + 2) == 0

    assert await store.hit("ip:1", limit=3, window=60, now=T0 + 10) == 50


async def test_hit_allows_again_in_a_new_window(store: Store) -> None:
    for i in range(3):
        await store.hit("ip:1", limit=3, window=60, now=T0 + i)

    assert await store.hit("ip:1", limit=3, window=60, now=T0 + 60) == 0
    assert await store.hit("ip:1", limit=3, window=60, now=T0 + 60.5) == 1


async def test_refused_hits_are_not_counted(store: Store) -> None:
    await store.hit("ip:1", limit=2, window=60, now=T0)
    await store.hit("ip:1", limit=2, window=60, now=T0 + 10)
    for _ in range(5):
        assert await store.hit("ip:1", limit=2, window=60, now=T0 + 20) == 40

    assert await store.hit("ip:1", limit=2, window=60, now=T0 + 60) == 0
    assert await store.hit("ip:1", limit=2, window=60, now=T0 + 61) == 9


async def test_hit_keys_are_independent(store: Store) -> None:
    await store.hit("ip:1", limit=1, window=60, now=T0)
    assert await store.hit("ip:1", limit=1, window=60, now=T0) > 0
    assert await store.hit("ip:2", limit=1, window=60, now=T0) == 0


async def test_same_instant_hits_count_separately(store: Store) -> None:
    results = [await store.hit("ip:1", limit=2, window=60, now=T0) for _ in range(3)]
    assert results == [0, 0, 60]


# ============================================================================= concurrency (R09)
async def test_concurrent_approves_yield_exactly_one_approval(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    results = await asyncio.gather(*(approve(store, "sess_a") for _ in range(100)))

    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.APPROVED) == 1
    assert outcomes.count(Outcome.NOT_PENDING) == 99


async def test_concurrent_failures_are_counted_exactly(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    results = await asyncio.gather(*(fail(store, "sess_a") for _ in range(100)))

    counted = sorted((r.failures, r.outcome) for r in results if r.outcome is Outcome.COUNTED)
    rejected = [r for r in results if r.outcome is Outcome.REJECTED]
    assert counted == [(1, Outcome.COUNTED), (2, Outcome.COUNTED)]
    assert [r.failures for r in rejected] == [MAX_SESSION_FAILURES]
    assert [r.outcome for r in results].count(Outcome.TOO_MANY) == 97
    assert (await stored(store, "sess_a")).failures == MAX_SESSION_FAILURES
    assert (await stored_device(store)).failed_verifications == MAX_SESSION_FAILURES


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_concurrent_approves_and_failures_stay_consistent(store: Store, seed: int) -> None:
    await enroll(store)
    await create(store, "sess_a")
    calls = ["approve"] * 50 + ["fail"] * 50
    random.Random(seed).shuffle(calls)

    results = await asyncio.gather(
        *(approve(store, "sess_a") if c == "approve" else fail(store, "sess_a") for c in calls)
    )

    approvals = [r for r in results if r.outcome is Outcome.APPROVED]
    counted = [r for r in results if r.outcome in (Outcome.COUNTED, Outcome.REJECTED)]
    record = await stored(store, "sess_a")
    device = await stored_device(store)
    assert len(approvals) <= 1
    assert record.failures == len(counted)
    assert sorted(r.failures for r in counted) == list(range(1, len(counted) + 1))
    if approvals:
        assert record.state == "approved"
        assert approvals[0].failures == len(counted) < MAX_SESSION_FAILURES
        assert not any(r.outcome is Outcome.REJECTED for r in results)
        assert device.failed_verifications == 0
    else:
        assert record.state == "rejected"
        assert len(counted) == MAX_SESSION_FAILURES
        assert device.failed_verifications == MAX_SESSION_FAILURES
    settled = {Outcome.APPROVED, Outcome.COUNTED, Outcome.REJECTED, Outcome.NOT_PENDING}
    assert {r.outcome for r in results} <= settled | {Outcome.TOO_MANY}


# ============================================================================= Redis only
async def _redis_flow(store: RedisStore) -> None:
    """Enroll, replace, create, approve, fail, reject and rate-limit: every kind of key."""
    await enroll(store, replay_id="jti-1")
    await enroll(store, device_record(thumbprint="kt-2", jti="cj-2"), replay_id="jti-2")
    await create(store, "sess_a")
    await create(store, "sess_b")
    await create(store, "sess_c")
    await approve(store, "sess_a", thumbprint="kt-2", jti="cj-2")
    await fail(store, "sess_b")
    await store.claim_socket(TOKEN, "sess_c")
    await store.hit("enroll:203.0.113.9", limit=5, window=3600, now=T0)


async def test_redis_every_key_but_the_device_has_a_ttl(
    redis_store: RedisStore, redis_srv: RedisServer
) -> None:
    await _redis_flow(redis_store)

    keys = redis_keys(redis_srv)
    device = f"idtoken:{{t:{TOKEN}}}:device"
    assert device in keys
    assert redis_srv.cli("PTTL", device) == "-1"
    without_ttl = {k: redis_srv.cli("PTTL", k) for k in keys - {device}}
    assert {k: t for k, t in without_ttl.items() if int(t) <= 0} == {}
    assert len(keys) >= 8  # device, 2 markers, pending, pushes, 3 sessions, refs, rate


async def test_redis_session_and_token_keys_carry_the_token_hash_tag(
    redis_store: RedisStore, redis_srv: RedisServer
) -> None:
    await _redis_flow(redis_store)

    keys = redis_keys(redis_srv)
    refs = {k for k in keys if k.startswith("idtoken:sessref:")}
    rates = {k for k in keys if k.startswith("idtoken:rate:")}
    # An enrollment token is single use across tokens, so its claim has its own slot.
    claims = {k for k in keys if k.startswith("idtoken:lock:")}
    assert refs == {f"idtoken:sessref:{{{sid}}}" for sid in ("sess_a", "sess_b", "sess_c")}
    assert rates == {"idtoken:rate:{enroll:203.0.113.9}"}
    assert claims == {"idtoken:lock:{enroll-jti:jti-1}", "idtoken:lock:{enroll-jti:jti-2}"}
    tagged = keys - refs - rates - claims
    assert {k for k in tagged if not k.startswith(f"idtoken:{{t:{TOKEN}}}:")} == set()
    assert {f"idtoken:{{t:{TOKEN}}}:sess:{s}" for s in ("sess_a", "sess_b", "sess_c")} <= tagged


async def test_redis_decided_session_stays_readable_for_result_keep(
    redis_store: RedisStore, redis_srv: RedisServer
) -> None:
    await enroll(redis_store)
    await create(redis_store, "sess_a", ttl=60)

    await approve(redis_store, "sess_a", now=T0 + 1)

    ttl_ms = int(redis_srv.cli("PTTL", f"idtoken:{{t:{TOKEN}}}:sess:sess_a"))
    ref_ms = int(redis_srv.cli("PTTL", "idtoken:sessref:{sess_a}"))
    assert ttl_ms >= (RESULT_KEEP + 59 - 5) * 1000
    assert ref_ms >= (RESULT_KEEP + 59 - 5) * 1000


async def test_redis_listeners_resync_after_the_pubsub_connection_is_killed(
    redis_store: RedisStore, redis_srv: RedisServer
) -> None:
    await enroll(redis_store)
    await create(redis_store, "sess_a")
    await create(redis_store, "sess_b")
    inbox_a, inbox_b = Inbox(), Inbox()
    redis_store.listen(TOKEN, "sess_a", inbox_a)
    redis_store.listen(TOKEN, "sess_b", inbox_b)

    assert int(redis_srv.cli("CLIENT", "KILL", "TYPE", "pubsub")) >= 1

    assert await inbox_a.next(timeout=5.0) == ("sess_a", None)
    assert await inbox_b.next(timeout=5.0) == ("sess_b", None)


async def _wait_for_subscriber(srv: RedisServer, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        numsub = srv.cli("PUBSUB", "NUMSUB", "idtoken:events").splitlines()
        if numsub[-1] == "1":
            return
        await asyncio.sleep(0.02)  # bounded polling, not synchronisation by timing
    raise AssertionError("the store did not resubscribe to idtoken:events")


async def test_redis_events_arrive_after_the_pubsub_connection_is_killed(
    redis_store: RedisStore, redis_srv: RedisServer
) -> None:
    await enroll(redis_store)
    await create(redis_store, "sess_a")
    inbox = Inbox()
    redis_store.listen(TOKEN, "sess_a", inbox)

    redis_srv.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await _wait_for_subscriber(redis_srv)
    await approve(redis_store, "sess_a")

    assert (await inbox.next_event()).final == approved_message("sess_a")


async def test_redis_start_succeeds_while_redis_is_unreachable(clock: ManualClock) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", clock)
    try:
        await store.start()
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


UNREACHABLE_CALLS: dict[str, Callable[[RedisStore], Awaitable[object]]] = {
    "ping": lambda s: s.ping(),
    "get_device": lambda s: s.get_device(TOKEN),
    "enroll": lambda s: enroll(s),
    "mark_push_dead": lambda s: s.mark_push_dead(TOKEN, ENDPOINT),
    "create_session": lambda s: s.create_session(session_record("sess_a"), limits=LIMITS, now=T0),
    "get_session": lambda s: s.get_session(TOKEN, "sess_a"),
    "find_session": lambda s: s.find_session("sess_a"),
    "approve": lambda s: approve(s, "sess_a"),
    "fail": lambda s: fail(s, "sess_a"),
    "reject": lambda s: s.reject(TOKEN, "sess_a", reason="Not me", pause=900, now=T0),
    "expire": lambda s: s.expire(TOKEN, "sess_a", now=T0),
    "pending_sessions": lambda s: s.pending_sessions(TOKEN, now=T0),
    "claim_socket": lambda s: s.claim_socket(TOKEN, "sess_a"),
    "hit": lambda s: s.hit("ip:1", limit=1, window=60, now=T0),
}


@pytest.mark.parametrize("call", list(UNREACHABLE_CALLS))
async def test_redis_calls_raise_store_unavailable_when_unreachable(
    clock: ManualClock, call: str
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", clock)
    try:
        with pytest.raises(StoreUnavailable):
            await UNREACHABLE_CALLS[call](store)
    finally:
        await store.aclose()
