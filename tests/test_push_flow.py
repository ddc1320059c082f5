"""Push in the login flow: a real loopback push service that checks VAPID and decrypts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import Operator, OperatorFactory
from idtoken.app import create_app
from idtoken.client import Device, ResultError
from idtoken.settings import load_settings
from pushreceiver import Behaviour, PushReceiver, Respond, Stall, SubscriptionHandle
from support import OperatorConfig, redis_server, serve_in_process

TYPED = {
    "id": "bank",
    "name": "Example Bank",
    "allowed_scopes": ["identity:name", "identity:trust_level"],
    "default_scopes": ["identity:name"],
    "otp_mode": "typed",
}
SHOP = {
    "id": "shop",
    "name": "Example Shop",
    "audience": "shop-audience",
    "allowed_scopes": ["identity:name", "identity:age_over_18"],
    "default_scopes": ["identity:name"],
}


async def vapid_key(op: Operator) -> str:
    disco = (await op.http.get("/.well-known/openid-configuration")).json()
    return str(disco["push_vapid_public_key"])


async def enroll_with_push(
    op: Operator, receiver: PushReceiver, sub: str, *behaviours: Behaviour
) -> tuple[Device, SubscriptionHandle]:
    subscription, handle = receiver.new_subscription(
        *behaviours, application_server_key=await vapid_key(op)
    )
    device = op.device()
    await device.enroll(op.issuer.mint(sub), push_subscription=subscription.to_json())
    return device, handle


async def test_display_mode_push_is_encrypted_and_carries_the_code(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[SHOP]) as op, PushReceiver() as receiver:
        device, handle = await enroll_with_push(op, receiver, "user-p1")
        started = await op.rp().initiate("user-p1", ["identity:name", "identity:age_over_18"])
        await receiver.wait_for_requests(1)
        (push,) = handle.requests
        assert push.payload == {
            "type": "auth_request",
            "sessionId": started.session_id,
            "serviceId": "shop",
            "serviceName": "Example Shop",
            "scopes": ["identity:name", "identity:age_over_18"],
            "expiresAt": started.expires_at,
            "autoPassword": started.auto_password,
        }
        headers = {k.lower(): v for k, v in push.headers.items()}
        assert headers["content-encoding"] == "aes128gcm"
        assert headers["urgency"] == "high"
        assert 0 < int(headers["ttl"]) <= 60
        assert headers["topic"]
        assert push.status == 201  # the receiver verified the VAPID JWT (aud, exp <= 24 h, sub)
        # The phone approves from the push alone.
        resp = await device.approve(
            started.session_id, push.payload["autoPassword"], ["identity:name"]
        )
        assert resp.status_code == 200


async def test_typed_mode_carries_no_code_and_allows_three_typos(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[TYPED]) as op, PushReceiver() as receiver:
        device, handle = await enroll_with_push(op, receiver, "user-p2")
        rp = op.rp("bank")
        started = await rp.initiate("user-p2")
        await receiver.wait_for_requests(1)
        assert "autoPassword" not in handle.payloads[0]
        (pending,) = await device.pending()
        assert "autoPassword" not in pending
        wrong = "000000" if started.auto_password != "000000" else "111111"
        for _ in range(2):
            resp = await device.approve(started.session_id, wrong, ["identity:name"])
            assert resp.status_code == 400 and resp.json()["error"] == "invalid_otp"
        # The user types the right code at the third try.
        resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
        assert resp.status_code == 200
        message = await rp.wait_result(started, timeout=5)
        assert message["type"] == "approved"

        second = await rp.initiate("user-p2")
        for _ in range(3):
            resp = await device.approve(second.session_id, wrong, ["identity:name"])
            assert resp.status_code == 400
        with pytest.raises(ResultError) as info:
            await rp.wait_result(second, timeout=5)
        assert info.value.detail == "Too many attempts"
        resp = await device.approve(second.session_id, second.auto_password, ["identity:name"])
        assert resp.status_code == 429


async def test_stalled_push_service_never_delays_initiate(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[SHOP]) as op, PushReceiver() as receiver:
        device, _ = await enroll_with_push(op, receiver, "user-p3", Stall(30))
        t0 = time.monotonic()
        started = await op.rp().initiate("user-p3")
        assert time.monotonic() - t0 < 1.0
        # The login still works through /auth/pending while the push hangs.
        (pending,) = await device.pending()
        assert pending["sessionId"] == started.session_id
        resp = await device.approve(started.session_id, pending["autoPassword"], ["identity:name"])
        assert resp.status_code == 200
        dispatcher = op.app.state.runtime.dispatcher
        assert dispatcher.in_flight == 1
    # Shutting the operator down cancelled the stalled push: no task is left behind.
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("idtoken-push")]
    assert leftovers == []


async def test_gone_subscription_is_marked_dead_and_the_app_can_replace_it(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[SHOP]) as op, PushReceiver() as receiver:
        device, _ = await enroll_with_push(op, receiver, "user-p4", 410)
        assert (await device.pending_response())["push"] == "active"
        await op.rp().initiate("user-p4")
        await receiver.wait_for_requests(1)
        for _ in range(100):
            if (await device.pending_response())["push"] == "dead":
                break
            await asyncio.sleep(0.02)
        assert (await device.pending_response())["push"] == "dead"
        # No push is attempted to a dead subscription.
        await op.rp().initiate("user-p4")
        await asyncio.sleep(0.2)
        assert len(receiver.requests) == 1

        fresh, fresh_handle = receiver.new_subscription(application_server_key=await vapid_key(op))
        await device.replace_subscription(fresh.to_json())
        assert (await device.pending_response())["push"] == "active"
        await op.rp().initiate("user-p4")
        await receiver.wait_for_requests(2)
        assert len(fresh_handle.payloads) == 1

        # A subscription signed by another key is refused.
        body = device.subscription_body(fresh.to_json())
        body["signature"] = op.device("other").sign("x")
        resp = await op.http.post("/device/subscription", json=body)
        assert resp.status_code == 401


async def test_push_service_errors_are_retried(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[SHOP]) as op, PushReceiver() as receiver:
        _, handle = await enroll_with_push(
            op, receiver, "user-p5", Respond(429, {"Retry-After": "1"}), 500, 201
        )
        await op.rp().initiate("user-p5")
        await receiver.wait_for_requests(3, timeout=10)
        assert [r.status for r in handle.requests] == [429, 500, 201]
        assert json.loads(json.dumps(handle.payloads[-1]))["type"] == "auth_request"


async def test_p01_no_push_beyond_the_pending_cap_from_one_or_several_services(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """P01: 20 initiates for one token, alternating two services: the first three (the
    default pending cap) are created and pushed, the other 17 answer 429 and push nothing."""
    async with make_operator(services=[SHOP, TYPED]) as op, PushReceiver() as receiver:
        _, handle = await enroll_with_push(op, receiver, "user-p01")
        statuses = []
        for i in range(20):
            body = {"tokenId": "user-p01", "serviceId": ("shop", "bank")[i % 2]}
            statuses.append((await op.http.post("/auth/initiate", json=body)).status_code)
        assert statuses == [201] * 3 + [429] * 17
        await receiver.wait_for_requests(3)
        # Pushes start as soon as their initiate answers; give a stray one time to show up.
        await asyncio.sleep(0.5)
        assert len(handle.requests) == 3


async def test_r01_no_push_and_503_while_redis_is_down(tmp_path: Path) -> None:
    """R01: with Redis stopped, initiate answers 503 with Retry-After and no push is sent."""
    with redis_server() as own:
        cfg = OperatorConfig(tmp_path / "op", redis_url=own.url, services=[SHOP])
        settings = load_settings(cfg.write())
        app = create_app(settings)
        async with (
            serve_in_process(app) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            PushReceiver() as receiver,
        ):
            op = Operator(cfg, settings, None, url, http, app)
            _, handle = await enroll_with_push(op, receiver, "user-r01")
            own.stop()
            body = {"tokenId": "user-r01", "serviceId": "shop", "scopes": ["identity:name"]}
            resp = await http.post("/auth/initiate", json=body)
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json()["error"] == "temporarily_unavailable"
            await asyncio.sleep(0.5)
            assert handle.requests == []
