"""``hide_unknown_tokens``: a service whose answers do not tell who is enrolled (issue 13, 6).

By the contract, ``POST /auth/initiate`` answers 404 ``unknown_token`` for a tokenId nobody
enrolled and 201 for one that is: anyone may ask. A service with ``hide_unknown_tokens =
true`` answers an unknown tokenId (and a paused or locked one) with a decoy session: the same
201 and body, the same limits, a socket that sends ``otp_ready`` and then ``expired``; no push,
never on a phone's ``/auth/pending``, never approvable.

Timing is shown, not measured: both answers come from one call of the same store script (Redis
``MONITOR`` sees one ``EVALSHA`` of the create script for each, with as many arguments), and the
push to a real phone is sent in the background after the answer. A test does not assert
durations (they are noise on a shared machine).

Two real ``idtoken-operator serve`` processes on a Redis of their own; pushes go to the
loopback Web Push receiver (tests/pushreceiver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from idtoken.client import Device, Initiation, RelyingParty
from idtoken.store import lua
from idtoken.store.resp import Script
from pushreceiver import PushReceiver, SubscriptionHandle
from support import (
    DEFAULT_SERVICE,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    otp_ready,
    running,
)
from support import redis_server as start_redis
from test_faults import recorders
from test_initiate import started as initiation

QUIET = {
    **DEFAULT_SERVICE,
    "id": "quiet",
    "name": "Quiet Shop",
    "audience": "quiet-audience",
    "session_ttl": 10,
    "hide_unknown_tokens": True,
}
MAX_PENDING = 2
LIMITS = {"enroll_per_ip_per_hour": 10_000, "max_pending_per_token": MAX_PENDING}
SCOPES = ["identity:name"]
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Stage:
    redis: RedisServer
    config: OperatorConfig
    procs: list[OperatorProcess]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """Two instances on a Redis of their own: "shop" as the contract says, "quiet" hiding."""
    with start_redis() as redis:
        config = OperatorConfig(
            tmp_path_factory.mktemp("hidden"),
            redis_url=redis.url,
            services=[dict(DEFAULT_SERVICE), QUIET],
            limits=LIMITS,
        )
        path = config.write()
        procs = [OperatorProcess(path) for _ in range(2)]
        with running(procs):
            yield Stage(redis, config, procs)


@pytest.fixture
async def clients(stage: Stage) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=p.url, timeout=15))
            for p in stage.procs
        ]


# ----------------------------------------------------------------------------- helpers
def new_token_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def enroll_with_push(
    stage: Stage, http: httpx.AsyncClient, receiver: PushReceiver
) -> tuple[Device, SubscriptionHandle]:
    disco = (await http.get("/.well-known/openid-configuration")).json()
    subscription, handle = receiver.new_subscription(
        application_server_key=disco["push_vapid_public_key"]
    )
    token_id = new_token_id()
    device = Device(http, device_id=f"dev-{token_id}")
    await device.enroll(
        stage.config.issuers[0].mint(token_id), push_subscription=subscription.to_json()
    )
    return device, handle


def token_of(device: Device) -> str:
    assert device.enrollment is not None
    return device.enrollment.token_id


async def initiate(http: httpx.AsyncClient, token_id: str, service: str) -> httpx.Response:
    body = {"tokenId": token_id, "serviceId": service, "scopes": SCOPES}
    return await http.post("/auth/initiate", json=body)


def socket_url(http: httpx.AsyncClient, login: Initiation) -> str:
    return RelyingParty(http, service_id="quiet", issuer="").socket_url(login)


def shape(resp: httpx.Response) -> dict[str, Any]:
    """What an observer can compare between two answers without knowing their secrets: the
    status, the header names, and per body member its type, length and the places of the
    characters other than letters, digits, ``-`` and ``_``."""
    body = resp.json()
    return {
        "status": resp.status_code,
        "headers": sorted(set(resp.headers) - {"date"}),
        "body": {
            key: (type(value).__name__, re.sub(r"[A-Za-z0-9_-]", "x", str(value)))
            for key, value in body.items()
        },
    }


class Monitor:
    """Redis ``MONITOR``: every command a client sends, in the order Redis runs them."""

    def __init__(self, redis: RedisServer) -> None:
        self._redis = redis
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._redis.port)
        self._writer.write(b"MONITOR\r\n")
        assert await self._reader.readline() == b"+OK\r\n"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def commands_about(self, needle: str) -> list[list[str]]:
        """The client commands (not those a script runs) that mention ``needle``, from the
        start or the previous call until now."""
        assert self._reader is not None
        marker = f"monitor-mark-{uuid.uuid4().hex}"
        await asyncio.to_thread(self._redis.cli, "ECHO", marker)
        found = []
        async with asyncio.timeout(10):
            while True:
                line = (await self._reader.readline()).decode()
                if marker in line:
                    return found
                source, _, rest = line.partition("] ")
                if needle in rest and not source.endswith(" lua"):
                    found.append(_QUOTED.findall(rest))


# ----------------------------------------------------------------------------- tests
async def test_without_the_option_the_contract_answers_unknown_token(
    clients: list[httpx.AsyncClient],
) -> None:
    a, _ = clients
    resp = await initiate(a, new_token_id(), "shop")
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"] == "unknown_token"


async def test_unknown_and_enrolled_tokens_get_the_same_answer_from_the_same_store_call(
    stage: Stage, clients: list[httpx.AsyncClient]
) -> None:
    a, _ = clients
    create = Script(lua.CREATE).sha
    async with PushReceiver() as receiver:
        device, _ = await enroll_with_push(stage, a, receiver)
        known, unknown = token_of(device), new_token_id()
        await initiate(a, new_token_id(), "shop")  # the create script is cached in Redis now
        async with Monitor(stage.redis) as monitor:
            answers = {}
            calls = {}
            for token_id in (known, unknown):
                answers[token_id] = await initiate(a, token_id, "quiet")
                calls[token_id] = await monitor.commands_about(token_id)

    assert answers[known].status_code == answers[unknown].status_code == 201
    assert shape(answers[known]) == shape(answers[unknown])
    for resp in answers.values():
        assert re.fullmatch(r"\d{6}", resp.json()["autoPassword"])
    # One call each, of the create script, with as many keys and arguments.
    for token_id, commands in calls.items():
        assert [c[:3] for c in commands] == [["EVALSHA", create, "5"]], (token_id, commands)
    assert len(calls[known][0]) == len(calls[unknown][0])


async def test_a_decoy_counts_against_the_limits_like_a_real_session(
    stage: Stage, clients: list[httpx.AsyncClient]
) -> None:
    a, b = clients
    async with PushReceiver() as receiver:
        device, _ = await enroll_with_push(stage, a, receiver)
        refusals = []
        for token_id in (token_of(device), new_token_id()):
            for i in range(MAX_PENDING):
                resp = await initiate((a, b)[i % 2], token_id, "quiet")
                assert resp.status_code == 201, resp.text
            refusals.append(await initiate(a, token_id, "quiet"))
    known, unknown = refusals
    assert shape(known) == shape(unknown)
    assert known.json() == unknown.json()
    assert known.json()["error"] == "too_many_requests"
    for resp in refusals:
        assert 0 < int(resp.headers["retry-after"]) <= QUIET["session_ttl"]


async def test_a_decoy_socket_sends_its_code_then_expires_and_no_push_is_sent(
    stage: Stage, clients: list[httpx.AsyncClient]
) -> None:
    """A real login nobody answers and a decoy look the same on the browser's socket (on the
    other instance): otp_ready, then `expired` at the session's expiry, then close 1000. Only
    the real one was pushed."""
    a, b = clients
    async with PushReceiver() as receiver:
        device, handle = await enroll_with_push(stage, a, receiver)
        real = initiation(await initiate(a, token_of(device), "quiet"))
        decoy = initiation(await initiate(a, new_token_id(), "quiet"))
        async with recorders([socket_url(b, real), socket_url(b, decoy)]) as socks:
            for rec, started in zip(socks, (real, decoy), strict=True):
                assert await rec.until("otp_ready", 5) == otp_ready(started)
            for rec in socks:
                assert await rec.until("expired", QUIET["session_ttl"] + 5) == {"type": "expired"}
                assert await rec.finished() == 1000
                assert [m["type"] for m in rec.messages] == ["otp_ready", "expired"]
        # Both sessions have ended: a push for the decoy would have been sent long ago.
        assert [p["sessionId"] for p in handle.payloads] == [real.session_id]
        assert [r.payload["sessionId"] for r in receiver.requests] == [real.session_id]


async def test_a_paused_token_gets_a_decoy_that_its_phone_never_sees(
    stage: Stage, clients: list[httpx.AsyncClient]
) -> None:
    """After a fraud report ("not me") the token is paused: "shop" refuses with 429 as the
    contract says, "quiet" answers 201 with a decoy. The phone's /auth/pending never lists
    it, it is not pushed, and even the right code and signature cannot approve it."""
    a, b = clients
    async with PushReceiver() as receiver:
        device, handle = await enroll_with_push(stage, a, receiver)
        token_id = token_of(device)
        first = initiation(await initiate(a, token_id, "shop"))
        resp = await device.reject(first.session_id, "not_me")
        assert resp.status_code == 200, resp.text

        paused = await initiate(a, token_id, "shop")
        assert paused.status_code == 429, paused.text
        assert paused.json()["error"] == "too_many_requests"
        decoy = initiation(await initiate(a, token_id, "quiet"))
        key = f"idtoken:{{t:{token_id}}}:sess:{decoy.session_id}"
        assert stage.redis.cli("HGET", key, "decoy") == "1"

        pending = await device.pending_response()
        assert pending["sessions"] == []
        assert pending["push"] == "active"
        async with recorders([socket_url(b, decoy)]) as (rec,):
            assert await rec.until("otp_ready", 5) == otp_ready(decoy)
            approving = Device(b, device_id=device.device_id, private_key=device.private_key)
            approving.enrollment = device.enrollment
            resp = await approving.approve(decoy.session_id, decoy.auto_password, SCOPES)
            assert resp.status_code != 200, resp.text
            assert stage.redis.cli("HGET", key, "state") == "pending"
            assert await device.pending() == []
            assert await rec.until("expired", QUIET["session_ttl"] + 5) == {"type": "expired"}
            assert await rec.finished() == 1000
        assert stage.redis.cli("HGET", key, "state") == "expired"
        assert [p["sessionId"] for p in handle.payloads] == [first.session_id]
