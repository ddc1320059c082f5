"""OpenID CIBA ping mode (CIBA Core §10.2) against a real loopback notification endpoint.

The operator is a real uvicorn server on a real Redis; the client's notification endpoint is
an aiohttp server on ``http://127.0.0.1:<port>/cb`` (the configuration lists 127.0.0.0/8 in
``[push] allow_private_networks``); the client collects the tokens with authlib's OAuth 2
client (``client_secret_basic``). Deliveries run on the real clock, except where a test moves
a :class:`ManualClock` to reach an expiry; every wait is bounded and polls for the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client

from ciba_support import (
    CIBA_GRANT,
    GRANTED,
    PING_SECRET,
    CibaClient,
    PingReceiver,
    ReceivedPing,
    error_of,
    ping_client,
)
from conftest import Operator, OperatorFactory
from idtoken.client import Device
from idtoken.clock import ManualClock
from support import DEFAULT_SERVICE, free_port
from test_fatigue import cli

NOTIFICATION_TOKEN = "ntf-8Hq2.zZ~x_0-/+=="
METRICS_TOKEN = "metrics-token-for-the-ping-tests"


@dataclass
class Kiosk:
    op: Operator
    port: int
    client: CibaClient

    async def start(self, login_hint: str, **params: str) -> str:
        params.setdefault("client_notification_token", NOTIFICATION_TOKEN)
        return str((await self.client.start(login_hint, **params))["auth_req_id"])

    async def retried(self) -> float:
        """The ``retried`` count of the operator's ping metric."""
        resp = await self.op.http.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert resp.status_code == 200, resp.text
        for line in resp.text.splitlines():
            if line.startswith('idtoken_ciba_pings_total{outcome="retried"}'):
                return float(line.split()[-1])
        return 0.0


@contextlib.asynccontextmanager
async def kiosk(
    make_operator: OperatorFactory, clock: ManualClock | None = None
) -> AsyncIterator[Kiosk]:
    port = free_port()
    async with make_operator(
        services=[dict(DEFAULT_SERVICE), ping_client(port)],
        clock=clock,
        limits={"max_pending_per_token": 10},
        extra=(
            "\n[oidc]\nciba_interval = 1\nping_retry_seconds = 60\nping_timeout = 2\n"
            f'\n[metrics]\ntoken = "{METRICS_TOKEN}"\n'
        ),
    ) as op:
        yield Kiosk(op, port, CibaClient(op.http, "kiosk", PING_SECRET))


def assert_ping(ping: ReceivedPing, auth_req_id: str) -> None:
    """Exactly the notification of CIBA Core §10.2."""
    assert (ping.method, ping.path) == ("POST", "/cb")
    assert ping.authorization == f"Bearer {NOTIFICATION_TOKEN}"
    assert ping.content_type == "application/json"
    assert ping.body == {"auth_req_id": auth_req_id}


async def view_for(device: Device, binding_message: str) -> dict[str, Any]:
    views = [v for v in await device.pending() if v.get("bindingMessage") == binding_message]
    assert len(views) == 1, views
    return views[0]


async def collect(k: Kiosk, auth_req_id: str) -> dict[str, Any]:
    """The tokens, as a client library collects them (authlib, client_secret_basic)."""
    async with AsyncOAuth2Client(
        "kiosk", PING_SECRET, token_endpoint_auth_method="client_secret_basic"
    ) as oauth:
        token: dict[str, Any] = await oauth.fetch_token(
            f"{k.op.base_url}/token", grant_type=CIBA_GRANT, auth_req_id=auth_req_id
        )
    return token


# ----------------------------------------------------------------------------- tests
async def test_the_ping_names_the_request_then_the_client_collects_the_tokens_once(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with kiosk(make_operator) as k, PingReceiver(k.port) as receiver:
        device = await k.op.enrolled("user-1", given_name="Ada")
        rid = await k.start("user-1", binding_message="Kiosk 7")
        ok = await device.approve_pending(await view_for(device, "Kiosk 7"), GRANTED)
        assert ok.status_code == 200, ok.text
        (ping,) = await receiver.wait_delivered(1)
        assert_ping(ping, rid)
        token = await collect(k, rid)
        assert token["token_type"] == "Bearer" and token["id_token"] and token["access_token"]
        again = await k.client.poll(rid)
        assert again.status_code == 400 and error_of(again) == "invalid_grant"
        # Delivered once: the outbox keeps nothing for a later sweep.
        await asyncio.sleep(2.5)
        assert len(receiver.requests) == 1


async def test_a_ping_mode_request_needs_a_bearer_notification_token(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with kiosk(make_operator) as k:
        await k.op.enrolled("user-1")
        resp = await k.client.request("user-1")
        assert resp.status_code == 400 and error_of(resp) == "invalid_request"
        for token in ("two words", "a,b", "ü", "=abc", "x" * 1025):
            resp = await k.client.request("user-1", client_notification_token=token)
            assert resp.status_code == 400 and error_of(resp) == "invalid_request", token
        assert await k.start("user-1", client_notification_token="x" * 1024)


async def test_a_ping_on_reject_and_on_expiry_for_known_and_unknown_tokens(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(time.time())
    async with kiosk(make_operator, clock) as k, PingReceiver(k.port) as receiver:
        device = await k.op.enrolled("user-1")
        rejected = await k.start("user-1", binding_message="Kiosk 1")
        resp = await device.reject((await view_for(device, "Kiosk 1"))["sessionId"])
        assert resp.status_code == 200, resp.text
        (ping,) = await receiver.wait_delivered(1)
        assert_ping(ping, rejected)
        resp = await k.client.poll(rejected)
        assert resp.status_code == 400 and error_of(resp) == "access_denied"

        expiring = await k.start("user-1", binding_message="Kiosk 2", requested_expiry="10")
        unknown = await k.start("user-2", binding_message="Kiosk 2", requested_expiry="10")
        clock.advance(10)  # the outbox sweep (every second) finds both expired
        pings = await receiver.wait_delivered(3)
        assert len(pings) == 3
        assert {p.body["auth_req_id"] for p in pings[1:]} == {expiring, unknown}
        for ping in pings[1:]:
            assert_ping(ping, ping.body["auth_req_id"])
        for rid in (expiring, unknown):
            resp = await k.client.poll(rid)
            assert resp.status_code == 400 and error_of(resp) == "expired_token"


async def test_requests_ended_by_a_fraud_report_or_a_revocation_are_pinged_before_expiry(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """A request decided without its own decision (another request's ``not_me`` ends every
    pending request of the token; ``tokens revoke`` runs in another process) is found by the
    outbox sweep within seconds, not only when it would have expired (120 s here)."""
    async with kiosk(make_operator) as k, PingReceiver(k.port) as receiver:
        device = await k.op.enrolled("user-1")
        reported = await k.start("user-1", binding_message="Kiosk 1")
        sibling = await k.start("user-1", binding_message="Kiosk 2")
        resp = await device.reject((await view_for(device, "Kiosk 1"))["sessionId"], "not_me")
        assert resp.status_code == 200, resp.text
        pings = await receiver.wait_delivered(2, timeout=30)
        assert [p.body["auth_req_id"] for p in pings] == [reported, sibling]

        await k.op.enrolled("user-3", device_id="device-3")
        revoked = await k.start("user-3")
        result = cli(k.op, "tokens", "revoke", "user-3")
        assert result.returncode == 0, result.stderr
        pings = await receiver.wait_delivered(3, timeout=30)
        assert_ping(pings[2], revoked)
        for rid in (sibling, revoked):
            resp = await k.client.poll(rid)
            assert resp.status_code == 400 and error_of(resp) == "access_denied"


async def test_the_endpoint_down_then_answering_503_then_up_still_gets_the_ping(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with kiosk(make_operator) as k:
        device = await k.op.enrolled("user-1")
        rid = await k.start("user-1", binding_message="Kiosk 1")
        ok = await device.approve_pending(await view_for(device, "Kiosk 1"), GRANTED)
        assert ok.status_code == 200, ok.text
        # Nothing listens on the port: the operator retries.
        async with asyncio.timeout(30):
            while await k.retried() < 2:
                await asyncio.sleep(0.1)
        async with PingReceiver(k.port, 503, 204) as receiver:
            (ping,) = await receiver.wait_delivered(1, timeout=60)
            assert receiver.requests[0].status == 503
            assert receiver.requests[-1] is ping
            assert all(r.body == {"auth_req_id": rid} for r in receiver.requests)
            assert_ping(ping, rid)
        token = await collect(k, rid)
        assert token["id_token"]
