"""The Store contract for decoys, cancellation, recorded decisions, grants (authorization codes
and CIBA polls), the ping outbox and shared secrets, run against the embedded store and Redis.

The tests whose Redis path differs on a Cluster (the socket reference lives in another slot
than the token's keys: creation, cancellation, decoys, redemption) run on a three-master
Redis Cluster too. As in ``test_store_contract.py``, times are passed explicitly and nothing
waits for wall-clock time to pass.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace

import pytest

from idtoken.clock import ManualClock
from idtoken.ids import sha256_hex
from idtoken.store.base import (
    CreateResult,
    CreateStatus,
    InitiateLimits,
    Outcome,
    RedeemOutcome,
    Redemption,
    SessionRecord,
    Store,
    Transition,
)
from idtoken.store.layout import ref_key, session_key
from idtoken.store.memory import MemoryStore
from idtoken.store.redis import RedisStore
from support import RedisServer
from test_redis_cluster import Cluster, cluster
from test_store_contract import (  # fixtures and helpers shared with the contract suite
    EXPIRED_MESSAGE,
    LIMITS,
    ROOMY,
    T0,
    TOKEN,
    _refuse_locked,
    _refuse_paused,
    approve,
    approved_message,
    clock,
    create,
    device_record,
    enroll,
    rejected_message,
    session_record,
    stored,
)

__all__ = ["clock", "cluster"]  # fixtures

FRONT = '{"client_id":"rp-1","redirect_uri":"https://rp.example.test/cb"}'
CODE = "code-0123456789"
CIBA_SECRET = "auth-req-0123456789"
GRANT_TEXT = '{"id_token":"h.p.s","access_token":"at"}'
CODE_DEADLINE = T0 + 31
INTERVAL = 5


CODE_GRANT = {
    "gh": sha256_hex(CODE),
    "gexp": repr(CODE_DEADLINE),
    "grant": GRANT_TEXT,
    "atj": "at-1",
}


# ----------------------------------------------------------------------------- fixtures
Server = RedisServer | Cluster

ON_CLUSTER_TOO = pytest.mark.parametrize("backend", ["memory", "redis", "cluster"], indirect=True)
ON_REDIS = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def server(backend: str, request: pytest.FixtureRequest) -> Server | None:
    """The Redis server or Cluster behind the store, emptied; None for the embedded store."""
    if backend == "memory":
        return None
    found: Server = request.getfixturevalue("redis_srv" if backend == "redis" else "cluster")
    found.cli("FLUSHALL")
    return found


@pytest.fixture
async def store(server: Server | None, clock: ManualClock) -> AsyncIterator[Store]:
    impl: Store = MemoryStore(clock) if server is None else RedisStore(server.url, clock)
    await impl.start()
    try:
        yield impl
    finally:
        await impl.aclose()


@pytest.fixture
async def peers(server: Server | None, clock: ManualClock) -> AsyncIterator[list[RedisStore]]:
    """Three more stores on the same Redis: three more operator instances."""
    assert server is not None, "peers are other instances on a shared Redis"
    stores = [RedisStore(server.url, clock) for _ in range(3)]
    for peer in stores:
        await peer.start()
    try:
        yield stores
    finally:
        for peer in stores:
            await peer.aclose()


# ----------------------------------------------------------------------------- helpers
async def create_allowing_decoys(
    store: Store,
    session_id: str,
    *,
    now: float = T0,
    limits: InitiateLimits = LIMITS,
    token_id: str = TOKEN,
) -> CreateResult:
    record = session_record(session_id, token_id, created_at=now)
    return await store.create_session(record, limits=limits, now=now, decoy_allowed=True)


async def create_record(store: Store, record: SessionRecord) -> None:
    result = await store.create_session(record, limits=LIMITS, now=record.created_at)
    assert result.status is CreateStatus.CREATED, result


async def approve_with(
    store: Store,
    session_id: str,
    *,
    grant: Mapping[str, str] | None = None,
    decided_by: str = "",
    now: float = T0 + 1,
) -> Transition:
    return await store.approve(
        TOKEN,
        session_id,
        key_thumbprint="kt-1",
        credential_jti="cj-1",
        final=approved_message(session_id),
        now=now,
        grant=grant,
        decided_by=decided_by,
    )


async def code_session(store: Store, session_id: str = "sess_a") -> None:
    """An OpenID Connect session, approved with an authorization code."""
    await enroll(store)
    await create_record(store, replace(session_record(session_id), kind="oidc", front=FRONT))
    assert (await approve_with(store, session_id, grant=CODE_GRANT)).outcome is Outcome.APPROVED


async def redeem_code(
    store: Store, session_id: str = "sess_a", *, code: str = CODE, now: float = T0 + 2
) -> Redemption:
    return await store.redeem(TOKEN, session_id, grant_hash=sha256_hex(code), now=now)


def answered(r: Redemption) -> Redemption:
    """The documented answer of a redemption: outcome, grant, front, interval, revoke."""
    return Redemption(r.outcome, grant=r.grant, front=r.front, interval=r.interval, revoke=r.revoke)


async def ciba_session(store: Store, session_id: str = "sess_a", *, ttl: float = 120.0) -> None:
    """A pending CIBA session, collected with the secret whose hash it was created with."""
    await enroll(store)
    record = replace(
        session_record(session_id, ttl=ttl),
        kind="ciba",
        front=FRONT,
        grant_hash=sha256_hex(CIBA_SECRET),
    )
    await create_record(store, record)


async def poll(
    store: Store,
    at: float,
    session_id: str = "sess_a",
    *,
    secret: str = CIBA_SECRET,
    max_interval: int = 60,
) -> Redemption:
    return await store.redeem(
        TOKEN,
        session_id,
        grant_hash=sha256_hex(secret),
        now=at,
        poll_interval=INTERVAL,
        max_interval=max_interval,
    )


# ============================================================================= create: EXISTS
@ON_CLUSTER_TOO
async def test_create_of_an_existing_id_is_exists_and_writes_nothing(store: Store) -> None:
    await enroll(store)
    limits = replace(ROOMY, pushes_per_window=2)
    first = await create(store, "sess_a", limits=limits)

    late = replace(session_record("sess_a", created_at=T0 + 1), service_id="other", otp="999999")
    result = await store.create_session(late, limits=limits, now=T0 + 1)

    assert result.status is CreateStatus.EXISTS
    assert result.push_subscription is None
    assert await stored(store, "sess_a") == first
    assert await store.find_session("sess_a") == first  # its socket reference is kept
    assert [s.session_id for s in await store.pending_sessions(TOKEN, now=T0 + 1)] == ["sess_a"]
    # The refused call counted no push: one more session fits in the window of two.
    await create(store, "sess_b", now=T0 + 2, limits=limits)
    refused = await store.create_session(
        session_record("sess_c", created_at=T0 + 3), limits=limits, now=T0 + 3
    )
    assert refused.status is CreateStatus.PUSH_RATE


async def test_create_of_a_decided_id_is_exists(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")
    assert (await approve(store, "sess_a")).outcome is Outcome.APPROVED

    result = await store.create_session(
        session_record("sess_a", created_at=T0 + 2), limits=LIMITS, now=T0 + 2
    )

    assert result.status is CreateStatus.EXISTS
    assert (await stored(store, "sess_a")).state == "approved"
    assert await store.pending_sessions(TOKEN, now=T0 + 2) == []


# ============================================================================= decoys
async def _unknown_token(store: Store) -> None:
    return None


async def _paused_token(store: Store) -> None:
    await enroll(store, device_record(paused_until=T0 + 600))


async def _locked_token(store: Store) -> None:
    await enroll(store, device_record(failed_verifications=LIMITS.max_failed_verifications))


CANNOT_LOG_IN: dict[str, Callable[[Store], Awaitable[None]]] = {
    "unknown": _unknown_token,
    "paused": _paused_token,
    "locked": _locked_token,
}


@ON_CLUSTER_TOO
@pytest.mark.parametrize("situation", list(CANNOT_LOG_IN))
async def test_a_token_that_cannot_log_in_gets_a_decoy(store: Store, situation: str) -> None:
    await CANNOT_LOG_IN[situation](store)

    result = await create_allowing_decoys(store, "sess_d")

    assert result.status is CreateStatus.CREATED
    assert result.push_subscription is None
    decoy = await stored(store, "sess_d")
    assert decoy.decoy is True
    assert decoy.state == "pending"
    assert decoy == replace(session_record("sess_d"), decoy=True)
    assert await store.find_session("sess_d") == decoy  # a socket opens it like any other
    assert await store.pending_sessions(TOKEN, now=T0 + 1) == []  # no phone sees it


@pytest.mark.parametrize("situation", ["paused", "locked"])
async def test_without_decoys_allowed_the_same_token_is_refused(
    store: Store, situation: str
) -> None:
    await CANNOT_LOG_IN[situation](store)

    result = await store.create_session(session_record("sess_d"), limits=LIMITS, now=T0)

    assert result.status is CreateStatus(situation)
    assert await store.get_session(TOKEN, "sess_d") is None


async def test_a_revoked_token_is_revoked_even_with_decoys_allowed(store: Store) -> None:
    await enroll(store, device_record(status="revoked"))

    result = await create_allowing_decoys(store, "sess_d")

    assert result.status is CreateStatus.REVOKED
    assert await store.get_session(TOKEN, "sess_d") is None
    assert await store.find_session("sess_d") is None


async def test_an_active_token_with_decoys_allowed_gets_a_real_session(store: Store) -> None:
    await enroll(store)

    result = await create_allowing_decoys(store, "sess_a")

    assert result.status is CreateStatus.CREATED
    assert result.push_subscription is not None
    assert (await stored(store, "sess_a")).decoy is False
    assert [s.session_id for s in await store.pending_sessions(TOKEN, now=T0 + 1)] == ["sess_a"]


@pytest.mark.parametrize("situation", list(CANNOT_LOG_IN))
async def test_decoys_count_against_the_pending_limit(store: Store, situation: str) -> None:
    await CANNOT_LOG_IN[situation](store)
    for i in range(LIMITS.max_pending):
        assert (await create_allowing_decoys(store, f"sess_{i}")).status is CreateStatus.CREATED

    result = await create_allowing_decoys(store, "sess_over", now=T0 + 10)

    assert result.status is CreateStatus.TOO_MANY_PENDING
    assert result.retry_after == 50  # the oldest decoy expires at T0 + 60
    assert await store.get_session(TOKEN, "sess_over") is None


@pytest.mark.parametrize("situation", list(CANNOT_LOG_IN))
async def test_decoys_count_against_the_push_rate(store: Store, situation: str) -> None:
    await CANNOT_LOG_IN[situation](store)
    limits = replace(ROOMY, pushes_per_window=2)
    for i in range(2):
        result = await create_allowing_decoys(store, f"sess_{i}", limits=limits)
        assert result.status is CreateStatus.CREATED

    result = await create_allowing_decoys(store, "sess_over", now=T0 + 10, limits=limits)

    assert result.status is CreateStatus.PUSH_RATE
    assert await store.get_session(TOKEN, "sess_over") is None


@pytest.mark.parametrize(
    ("situation", "outcome"),
    [
        ("unknown", Outcome.REVOKED),
        ("paused", Outcome.STALE_DEVICE),
        ("locked", Outcome.STALE_DEVICE),
    ],
)
async def test_a_decoy_is_never_approved(store: Store, situation: str, outcome: Outcome) -> None:
    await CANNOT_LOG_IN[situation](store)
    await create_allowing_decoys(store, "sess_d")
    before = await stored(store, "sess_d")

    # With the token's current key and credential (where it has any).
    result = await approve_with(store, "sess_d", grant=CODE_GRANT, decided_by="n1")

    assert result.outcome is outcome
    assert await stored(store, "sess_d") == before


async def test_a_decoy_can_only_expire(store: Store) -> None:
    await _paused_token(store)
    await create_allowing_decoys(store, "sess_d")

    still = await store.expire(TOKEN, "sess_d", now=T0 + 59)
    ended = await store.expire(TOKEN, "sess_d", now=T0 + 60)

    assert still is not None and still.state == "pending"
    assert ended is not None and ended.state == "expired" and ended.result == EXPIRED_MESSAGE
    assert ended.decoy is True


async def _decoy_of_a_paused_token(store: Store) -> None:
    """A fraud report pauses the token, a decoy is made, the token is unlocked again and two
    real sessions follow."""
    await _refuse_paused(store)
    assert (await create_allowing_decoys(store, "sess_d")).status is CreateStatus.CREATED
    assert await store.unlock_token(TOKEN)
    await create(store, "sess_x", now=T0 + 1)
    await create(store, "sess_y", now=T0 + 1.5)


async def _decoy_of_a_locked_token(store: Store) -> None:
    """A counted failure on a pending session locks the token; a decoy is made."""
    limits = await _refuse_locked(store)
    result = await create_allowing_decoys(store, "sess_d", limits=limits)
    assert result.status is CreateStatus.CREATED


@ON_CLUSTER_TOO
@pytest.mark.parametrize("make", [_decoy_of_a_paused_token, _decoy_of_a_locked_token])
async def test_a_not_me_cascade_leaves_decoys_pending(
    store: Store, make: Callable[[Store], Awaitable[None]]
) -> None:
    await make(store)
    assert (await stored(store, "sess_d")).decoy is True
    real = [s.session_id for s in await store.pending_sessions(TOKEN, now=T0 + 2)]

    reported = await store.reject(TOKEN, real[-1], reason="Not me", pause=900, now=T0 + 2)

    assert reported.outcome is Outcome.REJECTED
    for sid in real:
        assert (await stored(store, sid)).result == rejected_message("Not me")
    decoy = await stored(store, "sess_d")
    assert decoy.state == "pending" and decoy.result is None


# ============================================================================= cancel_session
@ON_CLUSTER_TOO
async def test_cancel_ends_a_pending_session(store: Store, server: Server | None) -> None:
    await enroll(store)
    await create(store, "sess_a")

    assert await store.cancel_session(TOKEN, "sess_a", keep=400) is True

    cancelled = await stored(store, "sess_a")
    assert cancelled.state == "expired"
    assert cancelled.result == EXPIRED_MESSAGE
    assert await store.pending_sessions(TOKEN, now=T0 + 1) == []
    if server is not None:  # the socket reference (on a Cluster in another slot) is gone
        assert server.cli("EXISTS", ref_key("sess_a")) == "0"
        assert await store.find_session("sess_a") is None


async def test_cancel_frees_the_pending_limit(store: Store) -> None:
    await enroll(store)
    limits = replace(ROOMY, max_pending=2)
    await create(store, "sess_a", limits=limits)
    await create(store, "sess_b", limits=limits)
    refused = await store.create_session(
        session_record("sess_c", created_at=T0 + 1), limits=limits, now=T0 + 1
    )
    assert refused.status is CreateStatus.TOO_MANY_PENDING

    assert await store.cancel_session(TOKEN, "sess_b", keep=400) is True

    await create(store, "sess_c", now=T0 + 2, limits=limits)


async def test_cancel_frees_the_push_rate(store: Store) -> None:
    await enroll(store)
    limits = replace(ROOMY, pushes_per_window=2)
    await create(store, "sess_a", limits=limits)
    await create(store, "sess_b", now=T0 + 1, limits=limits)
    refused = await store.create_session(
        session_record("sess_c", created_at=T0 + 2), limits=limits, now=T0 + 2
    )
    assert refused.status is CreateStatus.PUSH_RATE

    assert await store.cancel_session(TOKEN, "sess_b", keep=400) is True

    await create(store, "sess_c", now=T0 + 3, limits=limits)
    again = await store.create_session(
        session_record("sess_d", created_at=T0 + 4), limits=limits, now=T0 + 4
    )
    assert again.status is CreateStatus.PUSH_RATE  # one push was given back, not all


@ON_CLUSTER_TOO
async def test_cancel_of_an_id_never_created_forbids_its_late_creation(store: Store) -> None:
    await enroll(store)

    assert await store.cancel_session(TOKEN, "sess_late", keep=400) is True
    late = await store.create_session(session_record("sess_late"), limits=LIMITS, now=T0)

    assert late.status is CreateStatus.EXISTS
    assert late.push_subscription is None
    assert await store.get_session(TOKEN, "sess_late") is None
    assert await store.find_session("sess_late") is None  # a reference leads to nothing
    # The tombstone counts against nothing.
    await create(store, "sess_b", now=T0 + 1)
    assert [s.session_id for s in await store.pending_sessions(TOKEN, now=T0 + 1)] == ["sess_b"]


async def test_cancel_twice_of_an_id_never_created_is_true_both_times(store: Store) -> None:
    assert await store.cancel_session(TOKEN, "sess_late", keep=400) is True
    assert await store.cancel_session(TOKEN, "sess_late", keep=400) is True

    late = await store.create_session(session_record("sess_late"), limits=LIMITS, now=T0)
    assert late.status is CreateStatus.EXISTS


@ON_REDIS
async def test_redis_a_tombstone_lasts_keep_seconds(store: Store, server: Server) -> None:
    await store.cancel_session(TOKEN, "sess_late", keep=120)

    ttl_ms = int(server.cli("PTTL", session_key(TOKEN, "sess_late")))

    assert 0 < ttl_ms <= 120_000


async def _approved(store: Store) -> None:
    assert (await approve(store, "sess_a")).outcome is Outcome.APPROVED


async def _rejected(store: Store) -> None:
    reply = await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1)
    assert reply.outcome is Outcome.REJECTED


@pytest.mark.parametrize("decide", [_approved, _rejected])
async def test_cancel_of_a_decided_session_is_false_and_changes_nothing(
    store: Store, decide: Callable[[Store], Awaitable[None]]
) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await decide(store)
    before = await stored(store, "sess_a")

    assert await store.cancel_session(TOKEN, "sess_a", keep=400) is False

    assert await stored(store, "sess_a") == before
    assert await store.find_session("sess_a") == before


# ============================================================================= decided_by, grants
async def _decide_approve(store: Store) -> Transition:
    return await approve_with(store, "sess_a", decided_by="n1")


async def _decide_fail_with_reason(store: Store) -> Transition:
    return await store.fail(
        TOKEN, "sess_a", end_reason="Invalid signature", now=T0 + 1, decided_by="n1"
    )


async def _decide_fail_too_many(store: Store) -> Transition:
    for _ in range(2):
        await store.fail(TOKEN, "sess_a", end_reason=None, now=T0 + 1, decided_by="n0")
    return await store.fail(TOKEN, "sess_a", end_reason=None, now=T0 + 1, decided_by="n1")


async def _decide_reject(store: Store) -> Transition:
    return await store.reject(
        TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1, decided_by="n1"
    )


DECISIONS: dict[str, tuple[Callable[[Store], Awaitable[Transition]], Outcome]] = {
    "approve": (_decide_approve, Outcome.APPROVED),
    "fail_with_reason": (_decide_fail_with_reason, Outcome.REJECTED),
    "fail_too_many": (_decide_fail_too_many, Outcome.REJECTED),
    "reject": (_decide_reject, Outcome.REJECTED),
}


@pytest.mark.parametrize("decision", list(DECISIONS))
async def test_the_deciding_call_is_recorded(store: Store, decision: str) -> None:
    await enroll(store)
    await create(store, "sess_a")
    decide, outcome = DECISIONS[decision]

    assert (await decide(store)).outcome is outcome

    assert (await stored(store, "sess_a")).decided_by == "n1"


async def test_a_counted_failure_records_no_decision(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    counted = await store.fail(TOKEN, "sess_a", end_reason=None, now=T0 + 1, decided_by="n1")

    assert counted.outcome is Outcome.COUNTED
    assert (await stored(store, "sess_a")).decided_by is None


async def test_an_undecided_session_has_no_decided_by_or_grant_hash(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    session = await stored(store, "sess_a")

    assert session.decided_by is None and session.grant_hash is None


async def test_the_approval_stores_the_grant(store: Store) -> None:
    await code_session(store)

    approved = await stored(store, "sess_a")

    assert approved.grant_hash == sha256_hex(CODE)
    assert approved.state == "approved"


async def test_a_refused_approval_stores_no_grant(store: Store) -> None:
    await enroll(store)
    await create(store, "sess_a")

    stale = await store.approve(
        TOKEN,
        "sess_a",
        key_thumbprint="kt-old",
        credential_jti="cj-1",
        final=approved_message("sess_a"),
        now=T0 + 1,
        grant=CODE_GRANT,
        decided_by="n1",
    )

    assert stale.outcome is Outcome.STALE_DEVICE
    session = await stored(store, "sess_a")
    assert session.grant_hash is None and session.decided_by is None
    assert (await redeem_code(store)).outcome is RedeemOutcome.INVALID


# ============================================================================= redeem: codes
@ON_CLUSTER_TOO
async def test_a_code_is_issued_once_then_used(store: Store) -> None:
    await code_session(store)

    issued = await redeem_code(store)
    replayed = await redeem_code(store, now=T0 + 3)

    assert answered(issued) == Redemption(RedeemOutcome.ISSUED, grant=GRANT_TEXT, front=FRONT)
    assert answered(replayed) == Redemption(RedeemOutcome.USED, revoke="at-1")


async def test_a_code_is_issued_up_to_its_deadline(store: Store) -> None:
    await code_session(store)

    issued = await redeem_code(store, now=CODE_DEADLINE)

    assert issued.outcome is RedeemOutcome.ISSUED


async def test_a_code_past_its_deadline_is_invalid(store: Store) -> None:
    await code_session(store)

    assert (await redeem_code(store, now=CODE_DEADLINE + 0.5)).outcome is RedeemOutcome.INVALID


async def test_a_wrong_code_is_invalid_and_changes_nothing(store: Store) -> None:
    await code_session(store)

    wrong = await redeem_code(store, code="code-guessed")
    right = await redeem_code(store, now=T0 + 3)

    assert answered(wrong) == Redemption(RedeemOutcome.INVALID)
    assert right.outcome is RedeemOutcome.ISSUED and right.grant == GRANT_TEXT


async def test_a_code_for_an_unknown_session_is_invalid(store: Store) -> None:
    await code_session(store)

    assert (await redeem_code(store, "sess_other")).outcome is RedeemOutcome.INVALID
    assert (
        await store.redeem("tok-other", "sess_a", grant_hash=sha256_hex(CODE), now=T0 + 2)
    ).outcome is RedeemOutcome.INVALID


async def _pending_with_grant_hash(store: Store) -> None:
    """Not approved: a pending session that carries a grant hash from its creation."""
    await enroll(store)
    await create_record(store, replace(session_record("sess_a"), grant_hash=sha256_hex(CODE)))


async def _rejected_with_grant_hash(store: Store) -> None:
    await _pending_with_grant_hash(store)
    await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 1)


@pytest.mark.parametrize("make", [_pending_with_grant_hash, _rejected_with_grant_hash])
async def test_a_code_for_a_session_not_approved_is_invalid(
    store: Store, make: Callable[[Store], Awaitable[None]]
) -> None:
    await make(store)

    assert (await redeem_code(store)).outcome is RedeemOutcome.INVALID


@ON_REDIS
async def test_redis_the_grant_is_not_kept_after_it_is_issued(store: Store, server: Server) -> None:
    await code_session(store)
    key = session_key(TOKEN, "sess_a")
    assert server.cli("HEXISTS", key, "grant") == "1"

    await redeem_code(store)

    assert server.cli("HEXISTS", key, "grant") == "0"


# ============================================================================= redeem: CIBA polls
@ON_CLUSTER_TOO
async def test_a_ciba_poll_before_the_decision_is_pending(store: Store) -> None:
    await ciba_session(store)

    first = await poll(store, T0 + 1)
    second = await poll(store, T0 + 1 + INTERVAL)

    assert answered(first) == Redemption(RedeemOutcome.PENDING, interval=INTERVAL)
    assert answered(second) == Redemption(RedeemOutcome.PENDING, interval=INTERVAL)
    assert (await stored(store, "sess_a")).state == "pending"


@ON_CLUSTER_TOO
async def test_a_ciba_poll_too_soon_slows_down_and_the_longer_interval_stays(
    store: Store,
) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1)

    first = await poll(store, T0 + 3)  # 2 s after the last poll, 5 in force
    second = await poll(store, T0 + 3 + 5)  # 5 s after the last poll, 10 in force
    settled = await poll(store, T0 + 8 + 15)

    assert answered(first) == Redemption(RedeemOutcome.SLOW_DOWN, interval=10)
    assert answered(second) == Redemption(RedeemOutcome.SLOW_DOWN, interval=15)
    assert answered(settled) == Redemption(RedeemOutcome.PENDING, interval=15)


async def test_a_ciba_interval_grows_up_to_the_maximum(store: Store) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1, max_interval=12)

    grown = [(await poll(store, T0 + 2 + i, max_interval=12)).interval for i in range(3)]

    assert grown == [10, 12, 12]


async def test_a_ciba_poll_with_a_wrong_secret_is_invalid_and_changes_nothing(
    store: Store,
) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1)

    wrong = await poll(store, T0 + 2, secret="auth-req-guessed")
    right = await poll(store, T0 + 1 + INTERVAL)

    assert answered(wrong) == Redemption(RedeemOutcome.INVALID)
    assert answered(right) == Redemption(RedeemOutcome.PENDING, interval=INTERVAL)


async def test_a_ciba_poll_after_a_rejection_is_denied(store: Store) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1)
    await store.reject(TOKEN, "sess_a", reason="User rejected", pause=0, now=T0 + 2)

    denied = await poll(store, T0 + 1 + INTERVAL)

    assert answered(denied) == Redemption(RedeemOutcome.DENIED, interval=INTERVAL)


@ON_CLUSTER_TOO
async def test_a_ciba_poll_after_the_lifetime_is_expired_and_expires_the_session(
    store: Store,
) -> None:
    await ciba_session(store, ttl=60.0)

    ended = await poll(store, T0 + 60)

    assert answered(ended) == Redemption(RedeemOutcome.EXPIRED, interval=INTERVAL)
    session = await stored(store, "sess_a")
    assert session.state == "expired" and session.result == EXPIRED_MESSAGE
    assert await store.pending_sessions(TOKEN, now=T0) == []
    assert (await approve(store, "sess_a", now=T0 + 61)).outcome is Outcome.EXPIRED


@ON_CLUSTER_TOO
async def test_a_ciba_result_is_issued_once_after_the_approval_then_used(store: Store) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1)
    approved = await approve_with(store, "sess_a", grant={"grant": GRANT_TEXT}, now=T0 + 2)
    assert approved.outcome is Outcome.APPROVED

    issued = await poll(store, T0 + 1 + INTERVAL)
    replayed = await poll(store, T0 + 1 + 2 * INTERVAL)

    assert answered(issued) == Redemption(
        RedeemOutcome.ISSUED, grant=GRANT_TEXT, front=FRONT, interval=INTERVAL
    )
    assert replayed.outcome is RedeemOutcome.USED and replayed.grant is None


async def test_a_ciba_interval_stays_in_force_across_the_approval(store: Store) -> None:
    await ciba_session(store)
    await poll(store, T0 + 1)
    await approve_with(store, "sess_a", grant={"grant": GRANT_TEXT}, now=T0 + 2)

    early = await poll(store, T0 + 3)
    issued = await poll(store, T0 + 3 + 10)

    assert answered(early) == Redemption(RedeemOutcome.SLOW_DOWN, interval=10)
    assert issued.outcome is RedeemOutcome.ISSUED and issued.interval == 10


# ============================================================================= redeem: concurrency
async def _code_redeemer(store: Store) -> Callable[[Store], Awaitable[Redemption]]:
    await code_session(store)
    return lambda s: redeem_code(s)


async def _ciba_redeemer(store: Store) -> Callable[[Store], Awaitable[Redemption]]:
    await ciba_session(store)
    await approve_with(store, "sess_a", grant={"grant": GRANT_TEXT})
    return lambda s: poll(s, T0 + 2)


REDEEMERS = {"code": _code_redeemer, "ciba": _ciba_redeemer}


def _issued_once(results: list[Redemption]) -> None:
    outcomes = [r.outcome for r in results]
    assert outcomes.count(RedeemOutcome.ISSUED) == 1, outcomes
    assert outcomes.count(RedeemOutcome.USED) == len(results) - 1, outcomes
    assert [r.grant for r in results if r.grant is not None] == [GRANT_TEXT]


@ON_CLUSTER_TOO
@pytest.mark.parametrize("mode", list(REDEEMERS))
async def test_concurrent_redeems_issue_exactly_once(store: Store, mode: str) -> None:
    redeem = await REDEEMERS[mode](store)

    results = await asyncio.gather(*(redeem(store) for _ in range(100)))

    _issued_once(list(results))


@ON_REDIS
@pytest.mark.parametrize("mode", list(REDEEMERS))
async def test_redis_concurrent_redeems_on_several_instances_issue_exactly_once(
    store: Store, peers: list[RedisStore], mode: str
) -> None:
    redeem = await REDEEMERS[mode](store)
    instances = itertools.cycle([store, *peers])

    results = await asyncio.gather(*(redeem(next(instances)) for _ in range(100)))

    _issued_once(list(results))


# ============================================================================= the ping outbox
async def test_due_pings_lists_what_is_due_oldest_first(store: Store) -> None:
    await store.schedule_ping(TOKEN, "sess_late", at=T0 + 5)
    await store.schedule_ping("tok-2", "sess_early", at=T0 + 1)
    await store.schedule_ping(TOKEN, "sess_future", at=T0 + 100)

    due = await store.due_pings(now=T0 + 10, limit=10)
    first = await store.due_pings(now=T0 + 10, limit=1)

    assert due == [("tok-2", "sess_early"), (TOKEN, "sess_late")]
    assert first == [("tok-2", "sess_early")]
    assert await store.due_pings(now=T0, limit=10) == []


async def test_scheduling_a_ping_again_moves_it(store: Store) -> None:
    await store.schedule_ping(TOKEN, "sess_a", at=T0 + 1)

    await store.schedule_ping(TOKEN, "sess_a", at=T0 + 50)

    assert await store.due_pings(now=T0 + 10, limit=10) == []
    assert await store.due_pings(now=T0 + 50, limit=10) == [(TOKEN, "sess_a")]


async def test_a_ping_is_claimed_only_while_due(store: Store) -> None:
    await store.schedule_ping(TOKEN, "sess_a", at=T0 + 5)

    early = await store.claim_ping(TOKEN, "sess_a", now=T0 + 4, until=T0 + 34)
    unknown = await store.claim_ping(TOKEN, "sess_other", now=T0 + 5, until=T0 + 35)

    assert early is False and unknown is False
    assert await store.claim_ping(TOKEN, "sess_a", now=T0 + 5, until=T0 + 35) is True


async def _claim_concurrently(stores: list[Store]) -> None:
    await stores[0].schedule_ping(TOKEN, "sess_a", at=T0 + 1)
    claimers = itertools.cycle(stores)

    won = await asyncio.gather(
        *(next(claimers).claim_ping(TOKEN, "sess_a", now=T0 + 2, until=T0 + 32) for _ in range(50))
    )

    assert won.count(True) == 1
    # Leased: not due, and not claimable, before the lease ends; due again when it does.
    assert await stores[0].due_pings(now=T0 + 31, limit=10) == []
    assert await stores[-1].claim_ping(TOKEN, "sess_a", now=T0 + 31, until=T0 + 61) is False
    assert await stores[0].due_pings(now=T0 + 32, limit=10) == [(TOKEN, "sess_a")]
    assert await stores[-1].claim_ping(TOKEN, "sess_a", now=T0 + 32, until=T0 + 62) is True


async def test_exactly_one_of_many_concurrent_claimers_takes_a_ping(store: Store) -> None:
    await _claim_concurrently([store])


@ON_REDIS
async def test_redis_exactly_one_instance_takes_a_ping(
    store: Store, peers: list[RedisStore]
) -> None:
    await _claim_concurrently([store, *peers])


async def test_a_done_ping_leaves_the_outbox(store: Store) -> None:
    await store.schedule_ping(TOKEN, "sess_a", at=T0 + 1)
    await store.schedule_ping(TOKEN, "sess_b", at=T0 + 1)

    await store.ping_done(TOKEN, "sess_a")
    await store.ping_done(TOKEN, "sess_never")

    assert await store.due_pings(now=T0 + 10, limit=10) == [(TOKEN, "sess_b")]
    assert await store.claim_ping(TOKEN, "sess_a", now=T0 + 10, until=T0 + 40) is False


# ============================================================================= shared secrets
async def test_the_first_fingerprint_of_a_secret_wins(store: Store) -> None:
    assert await store.register_secret("signing", "fp-1") == "fp-1"
    assert await store.register_secret("signing", "fp-2") == "fp-1"
    assert await store.register_secret("signing", "fp-1") == "fp-1"
    assert await store.register_secret("pairwise", "fp-3") == "fp-3"


@ON_REDIS
async def test_redis_the_first_fingerprint_wins_on_every_instance(
    store: Store, peers: list[RedisStore]
) -> None:
    instances: list[Store] = [store, *peers]

    recorded = await asyncio.gather(
        *(s.register_secret("signing", f"fp-{i}") for i, s in enumerate(instances))
    )

    assert len(set(recorded)) == 1
    assert recorded[0] in {f"fp-{i}" for i in range(len(instances))}
    assert await peers[0].register_secret("signing", "fp-late") == recorded[0]
