"""OpenID CIBA on several ``idtoken-operator serve`` processes sharing one Redis, one
``keys_dir`` and one operator secret (``[oidc] secret_key_file``), as a load-balanced
deployment runs: concurrent polls on every instance hand the tokens out once, and a ping whose
instance is killed between the decision and the delivery is delivered by another instance's
outbox sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from ciba_support import (
    GRANTED,
    PING_SECRET,
    POLL_CLIENT,
    POLL_SECRET,
    CibaClient,
    Hold,
    PingReceiver,
    error_of,
    ping_client,
)
from idtoken.client import Device
from support import OperatorConfig, OperatorProcess, RedisServer, free_port, redis_server, running

NOTIFICATION_TOKEN = "fleet-notification-token-0123456789"
PING_TIMEOUT = 5  # [oidc] ping_timeout: a delivery's lease is this and 5 s more


@dataclass
class Fleet:
    redis: RedisServer
    config: OperatorConfig
    config_file: Path
    procs: list[OperatorProcess]
    ping_port: int

    def healthy(self) -> None:
        """Start a fresh process in the place of one a previous test killed."""
        for i, proc in enumerate(self.procs):
            if proc.process is None or proc.process.poll() is not None:
                self.procs[i] = OperatorProcess(self.config_file).start(timeout=60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    ping_port = free_port()
    with redis_server() as redis:
        config = OperatorConfig(
            tmp_path_factory.mktemp("ciba-fleet"),
            redis_url=redis.url,
            services=[dict(POLL_CLIENT), ping_client(ping_port)],
            limits={"enroll_per_ip_per_hour": 10_000, "max_pending_per_token": 100},
            extra=(
                '\n[oidc]\nsecret_key_file = "secret.key"\nciba_interval = 1\n'
                f"ping_timeout = {PING_TIMEOUT}\nping_retry_seconds = 60\n"
            ),
        )
        config_file = config.write()
        procs = [OperatorProcess(config_file) for _ in range(3)]
        with running(procs, timeout=60):
            yield Fleet(redis, config, config_file, procs, ping_port)


@contextlib.asynccontextmanager
async def instances(fleet: Fleet) -> AsyncIterator[list[httpx.AsyncClient]]:
    fleet.healthy()
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=proc.url, timeout=60))
            for proc in fleet.procs
        ]


async def enrolled(fleet: Fleet, http: httpx.AsyncClient) -> Device:
    token_id = f"user-{uuid.uuid4().hex[:12]}"
    device = Device(http, device_id=f"dev-{token_id}")
    await device.enroll(fleet.config.issuers[0].mint(token_id, given_name="Ada"))
    return device


def on(http: httpx.AsyncClient, device: Device) -> Device:
    """The same phone talking to another instance."""
    twin = Device(http, device_id=device.device_id, private_key=device.private_key)
    twin.enrollment = device.enrollment
    return twin


async def test_hundred_concurrent_polls_across_instances_hand_the_tokens_out_once(
    fleet: Fleet,
) -> None:
    async with instances(fleet) as (a, b, c):
        device = await enrolled(fleet, a)
        token_id = device.enrollment.token_id if device.enrollment else ""
        clients = [CibaClient(http, "desk", POLL_SECRET) for http in (a, b, c)]
        rid = (await clients[0].start(token_id, binding_message="Fleet 1"))["auth_req_id"]
        pending = await clients[1].poll(rid)
        assert pending.status_code == 400 and error_of(pending) == "authorization_pending"
        (view,) = await on(c, device).pending()
        ok = await on(c, device).approve_pending(view, GRANTED)
        assert ok.status_code == 200, ok.text
        await asyncio.sleep(1.2)  # one interval (ciba_interval = 1) after the last poll

        answers = await asyncio.gather(*(clients[i % 3].poll(rid) for i in range(100)))
        issued = [r for r in answers if r.status_code == 200]
        assert len(issued) == 1, Counter(r.status_code for r in answers)
        refused = [r for r in answers if r.status_code != 200]
        assert {r.status_code for r in refused} == {400}
        assert set(Counter(error_of(r) for r in refused)) <= {"invalid_grant", "slow_down"}
        jwks = KeySet.import_key_set((await b.get("/.well-known/jwks.json")).json())
        claims = jwt.decode(issued[0].json()["id_token"], jwks, algorithms=["ES256"]).claims
        assert (claims["sub"], claims["aud"]) == (token_id, "desk")

        await asyncio.sleep(1.2)
        for client in clients:
            later = await client.poll(rid)
            assert later.status_code == 400 and error_of(later) == "invalid_grant"


async def test_an_instance_killed_between_decision_and_ping_another_delivers_it(
    fleet: Fleet,
) -> None:
    """A takes the decision and starts delivering; the endpoint holds A's request until A is
    killed (SIGKILL). B and C are stopped (SIGSTOP) while A decides, so that the first attempt
    is surely A's; once they run again, the first of them to sweep the outbox after A's lease
    delivers the ping."""
    async with (
        instances(fleet) as (a, b, c),
        PingReceiver(fleet.ping_port, Hold(), 204) as receiver,
    ):
        victim, survivors = fleet.procs[0], fleet.procs[1:]
        device = await enrolled(fleet, a)
        token_id = device.enrollment.token_id if device.enrollment else ""
        kiosk = CibaClient(a, "kiosk", PING_SECRET)
        started = await kiosk.start(
            token_id, binding_message="Fleet 2", client_notification_token=NOTIFICATION_TOKEN
        )
        rid = started["auth_req_id"]
        (view,) = await device.pending()
        for proc in survivors:
            proc.signal(signal.SIGSTOP)
        try:
            ok = await device.approve_pending(view, GRANTED)
            assert ok.status_code == 200, ok.text
            await receiver.wait_arrived(1, timeout=PING_TIMEOUT)
            victim.signal(signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait(timeout=10)
        finally:
            for proc in survivors:
                proc.signal(signal.SIGCONT)

        (ping,) = await receiver.wait_delivered(1, timeout=60)
        first = receiver.requests[0]
        assert first.status is None  # A's attempt, cut off with A
        for request in (first, ping):
            assert (request.method, request.path) == ("POST", "/cb")
            assert request.authorization == f"Bearer {NOTIFICATION_TOKEN}"
            assert request.body == {"auth_req_id": rid}
        async with asyncio.timeout(30):  # the survivor that delivered says so
            while not any(
                "ping delivered" in line and view["sessionId"] in line
                for proc in survivors
                for line in proc.logs().splitlines()
            ):
                await asyncio.sleep(0.1)

        tokens = await CibaClient(b, "kiosk", PING_SECRET).poll(rid)
        assert tokens.status_code == 200, tokens.text
        again = await CibaClient(c, "kiosk", PING_SECRET).poll(rid)
        assert again.status_code == 400 and error_of(again) == "invalid_grant"
        assert len(receiver.delivered) == 1
