"""OpenID CIBA (CIBA Core 1.0), poll mode and the backchannel request, on a real uvicorn
server, a real Redis and a real loopback Web Push service.

The operator runs on a :class:`ManualClock` set to the real time: the phone signs with the
real time (within ``timestamp_skew``), and the test moves the operator's clock for polls and
expiry. Ping mode is in tests/test_ciba_ping.py, several instances in tests/test_ciba_fleet.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from ciba_support import (
    AUTH_REQ_ID,
    GRANTED,
    POLL_CLIENT,
    POLL_SECRET,
    CibaClient,
    error_of,
)
from conftest import Operator, OperatorFactory
from idtoken.client import Device
from idtoken.clock import ManualClock
from idtoken.errors import ConfigError
from idtoken.settings import load_settings
from oidc_support import CLIENT_SECRET, OIDC_CLIENT
from pushreceiver import PushReceiver
from support import DEFAULT_SERVICE, OperatorConfig
from test_fatigue import cli
from test_push_flow import enroll_with_push


@dataclass
class Desk:
    """An operator with a poll-mode CIBA client, and the clock the test moves."""

    op: Operator
    clock: ManualClock
    client: CibaClient

    async def poll_error(self, auth_req_id: str) -> str:
        resp = await self.client.poll(auth_req_id)
        assert resp.status_code == 400, resp.text
        return error_of(resp)

    async def only_expires(self, auth_req_id: str, after: float) -> None:
        """Polls find the request pending, then expired once ``after`` seconds have passed."""
        assert await self.poll_error(auth_req_id) == "authorization_pending"
        self.clock.advance(after)
        assert await self.poll_error(auth_req_id) == "expired_token"


@contextlib.asynccontextmanager
async def desk(make_operator: OperatorFactory, **limits: Any) -> AsyncIterator[Desk]:
    clock = ManualClock(time.time())
    async with make_operator(
        services=[dict(DEFAULT_SERVICE), dict(POLL_CLIENT), dict(OIDC_CLIENT)],
        clock=clock,
        limits={"max_pending_per_token": 10, **limits},
        extra="\n[oidc]\nciba_interval = 5\nciba_max_interval = 15\n",
    ) as op:
        yield Desk(op, clock, CibaClient(op.http, "desk", POLL_SECRET))


async def view_for(device: Device, binding_message: str) -> dict[str, Any]:
    """The phone's view (``/auth/pending``) of the request showing ``binding_message``."""
    views = [v for v in await device.pending() if v.get("bindingMessage") == binding_message]
    assert len(views) == 1, views
    return views[0]


def assert_alike(body: dict[str, Any], reference: dict[str, Any]) -> None:
    """Two accepted requests that a client cannot tell apart: the same members, an
    ``auth_req_id`` of the same form and length, the same ``expires_in`` and ``interval``."""
    assert set(body) == set(reference) == {"auth_req_id", "expires_in", "interval"}
    for one in (body, reference):
        assert AUTH_REQ_ID.match(one["auth_req_id"]), one
    assert len(body["auth_req_id"]) == len(reference["auth_req_id"])
    assert body["auth_req_id"] != reference["auth_req_id"]
    assert (body["expires_in"], body["interval"]) == (
        reference["expires_in"],
        reference["interval"],
    )


async def pushed_nothing_more(receiver: PushReceiver, count: int) -> None:
    """The push service got exactly ``count`` requests (a moment is left for a late one)."""
    await receiver.wait_for_requests(count)
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == count


# ----------------------------------------------------------------------------- the poll
async def test_polling_too_fast_is_slow_down_and_the_interval_grows_by_5_s_up_to_the_maximum(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d:
        await d.op.enrolled("user-1")
        started = await d.client.start("user-1", binding_message="Call 1")
        assert started["interval"] == 5
        rid = started["auth_req_id"]

        async def answer() -> tuple[str, str]:
            resp = await d.client.poll(rid)
            assert resp.status_code == 400, resp.text
            body = resp.json()
            return body["error"], body["error_description"]

        assert (await answer())[0] == "authorization_pending"
        assert await answer() == (
            "slow_down",
            "polled too fast: wait at least 10 seconds between polls",
        )
        d.clock.advance(5)  # the first interval, no longer enough: 15 s
        assert (await answer())[1].endswith("at least 15 seconds between polls")
        d.clock.advance(5)  # ciba_max_interval = 15: it grows no further
        assert (await answer())[1].endswith("at least 15 seconds between polls")
        d.clock.advance(15)
        assert (await answer())[0] == "authorization_pending"
        d.clock.advance(10)  # the interval stays grown: 10 s is too fast now
        assert (await answer())[1].endswith("at least 15 seconds between polls")
        d.clock.advance(15)
        assert (await answer())[0] == "authorization_pending"


async def test_expiry_is_expired_token_and_requested_expiry_is_clamped_to_session_ttl(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d:
        await d.op.enrolled("user-1")
        assert (await d.client.start("user-1", requested_expiry="99999"))["expires_in"] == 120
        assert (await d.client.start("user-1", requested_expiry="3"))["expires_in"] == 10
        for bad in ("0", "-5", "1e3", "ten", "1234567"):
            resp = await d.client.request("user-1", requested_expiry=bad)
            assert resp.status_code == 400 and error_of(resp) == "invalid_request", bad
        started = await d.client.start("user-1", requested_expiry="20")
        assert started["expires_in"] == 20
        rid = started["auth_req_id"]
        await d.only_expires(rid, after=20)
        d.clock.advance(5)
        assert await d.poll_error(rid) == "expired_token"


async def test_reject_and_not_me_are_access_denied(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d:
        device = await d.op.enrolled("user-1")
        rejected = await d.client.start("user-1", binding_message="Call 1")
        resp = await device.reject((await view_for(device, "Call 1"))["sessionId"])
        assert resp.status_code == 200, resp.text
        assert await d.poll_error(rejected["auth_req_id"]) == "access_denied"

        reported = await d.client.start("user-1", binding_message="Call 2")
        resp = await device.reject((await view_for(device, "Call 2"))["sessionId"], "not_me")
        assert resp.status_code == 200, resp.text
        assert await d.poll_error(reported["auth_req_id"]) == "access_denied"
        d.clock.advance(5)  # and so it stays
        for rid in (rejected["auth_req_id"], reported["auth_req_id"]):
            assert await d.poll_error(rid) == "access_denied"


async def test_tokens_are_handed_out_once_then_the_auth_req_id_is_invalid_grant(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d:
        device = await d.op.enrolled("user-1", given_name="Marie", family_name="Dupont")
        started = await d.client.start("user-1", binding_message="Call 1")
        rid = started["auth_req_id"]
        ok = await device.approve_pending(await view_for(device, "Call 1"), GRANTED)
        assert ok.status_code == 200, ok.text
        # Another client cannot collect it; neither can a forged handle.
        other = CibaClient(d.op.http, "webapp", CLIENT_SECRET)
        resp = await other.poll(rid)
        assert resp.status_code == 400 and error_of(resp) == "unauthorized_client"
        for forged in (rid[:-2] + ("AA" if rid[-2:] != "AA" else "BB"), "x" * 60):
            assert await d.poll_error(forged) == "invalid_grant"

        tokens = await d.client.poll(rid)
        assert tokens.status_code == 200, tokens.text
        assert tokens.headers["cache-control"] == "no-store"
        body = tokens.json()
        assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 3600
        jwks = KeySet.import_key_set((await d.op.http.get("/.well-known/jwks.json")).json())
        claims = jwt.decode(body["id_token"], jwks, algorithms=["ES256"]).claims
        assert (claims["aud"], claims["sub"], claims["given_name"]) == ("desk", "user-1", "Marie")
        info = await d.op.http.get(
            "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert info.status_code == 200 and info.json()["family_name"] == "Dupont"

        for _ in range(2):  # a replay, however patient, is invalid_grant
            d.clock.advance(16)
            assert await d.poll_error(rid) == "invalid_grant"


# ----------------------------------------------------------------------------- the request
async def test_backchannel_request_checks(make_operator: OperatorFactory, redis_url: str) -> None:
    async with desk(make_operator) as d:
        await d.op.enrolled("user-1")
        refused: dict[str, dict[str, str | None]] = {
            "login_hint_token": {"login_hint": None, "login_hint_token": "eyJ.x.y"},
            "id_token_hint": {"login_hint": None, "id_token_hint": "eyJ.x.y"},
            "two hints": {"login_hint": "user-1", "id_token_hint": "eyJ.x.y"},
            "no hint": {"login_hint": None},
            "user_code": {"login_hint": "user-1", "user_code": "1234"},
            "request object": {"login_hint": "user-1", "request": "eyJ.x.y"},
            "a hint that is no tokenId": {"login_hint": "user 1"},
        }
        for what, params in refused.items():
            hint = params.pop("login_hint")
            resp = await d.client.request(hint, **{k: str(v) for k, v in params.items()})
            assert resp.status_code == 400, what
            assert error_of(resp) == "invalid_request", what
        resp = await d.client.request("user-1", scope="profile")  # no openid
        assert resp.status_code == 400 and error_of(resp) == "invalid_scope"

        # A confidential client not registered for CIBA, at both endpoints.
        webapp = CibaClient(d.op.http, "webapp", CLIENT_SECRET)
        resp = await webapp.request("user-1")
        assert resp.status_code == 400 and error_of(resp) == "unauthorized_client"
        started = await d.client.start("user-1")
        resp = await webapp.poll(started["auth_req_id"])
        assert resp.status_code == 400 and error_of(resp) == "unauthorized_client"
        # A wrong secret, or none.
        wrong = CibaClient(d.op.http, "desk", POLL_SECRET + "x")
        resp = await wrong.request("user-1")
        assert resp.status_code == 401 and error_of(resp) == "invalid_client"
        resp = await d.op.http.post(
            "/bc-authorize", data={"scope": "openid", "login_hint": "user-1", "client_id": "desk"}
        )
        assert resp.status_code == 401 and error_of(resp) == "invalid_client"


def test_a_ciba_client_must_be_confidential(tmp_path: Any) -> None:
    public = {
        **DEFAULT_SERVICE,
        "id": "public-desk",
        "backchannel_token_delivery_mode": "poll",
    }
    config = OperatorConfig(tmp_path, services=[public]).write()
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "backchannel_token_delivery_mode" in str(info.value)
    assert "confidential" in str(info.value)


async def test_a_revoked_token_is_403_access_denied(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d:
        await d.op.enrolled("user-1")
        earlier = await d.client.start("user-1")
        result = cli(d.op, "tokens", "revoke", "user-1")
        assert result.returncode == 0, result.stderr
        resp = await d.client.request("user-1")
        assert resp.status_code == 403 and error_of(resp) == "access_denied"
        assert await d.poll_error(earlier["auth_req_id"]) == "access_denied"


# ----------------------------------------------------------------------------- binding message
async def test_a_bad_binding_message_is_invalid_binding_message_and_creates_nothing(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d, PushReceiver() as receiver:
        device, handle = await enroll_with_push(d.op, receiver, "user-1")
        bad = [
            "Order\x004711",
            "Order\n4711",
            "Order\t4711",
            "Order \u202e1174",  # right-to-left override
            "Order\u200b4711",  # zero-width space
            "x" * 65,
            " Order 4711",
            "Order 4711 ",
        ]
        for message in bad:
            resp = await d.client.request("user-1", binding_message=message)
            assert resp.status_code == 400, repr(message)
            assert error_of(resp) == "invalid_binding_message", repr(message)
        assert await device.pending() == []

        # At the limits: 64 characters, letters, symbols and punctuation of any script; the
        # phone is shown (and signs) the NFC form.
        longest = "Ü" * 64
        await d.client.start("user-1", binding_message=longest)
        await d.client.start("user-1", binding_message="Cafe\u0301 №7 → €12,50!")
        await pushed_nothing_more(receiver, 2)
        shown = {p["bindingMessage"] for p in handle.payloads}
        assert shown == {longest, "Café №7 → €12,50!"}
        assert {v["bindingMessage"] for v in await device.pending()} == shown
        ok = await device.approve_pending(await view_for(device, "Café №7 → €12,50!"), GRANTED)
        assert ok.status_code == 200, ok.text


async def test_the_phone_is_shown_the_binding_message_and_signs_it(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d, PushReceiver() as receiver:
        device, handle = await enroll_with_push(d.op, receiver, "user-1")
        started = await d.client.start("user-1", binding_message="Order 4711")
        await receiver.wait_for_requests(1)
        (push,) = handle.payloads
        (view,) = await device.pending()
        assert push == {"type": "auth_request", **view}
        assert set(view) == {
            "sessionId",
            "serviceId",
            "serviceName",
            "scopes",
            "expiresAt",
            "backchannel",
            "bindingMessage",
            "autoPassword",
        }
        assert view["backchannel"] is True and view["bindingMessage"] == "Order 4711"
        assert (view["serviceId"], view["serviceName"]) == ("desk", "Help Desk")
        assert view["scopes"] == ["identity:name", "identity:date_of_birth"]
        assert len(view["autoPassword"]) == 6 and view["autoPassword"].isdigit()

        # A signature over another message is refused and counts as a failed verification.
        for other in ("Order 4712", None):
            forged = await device.approve(
                view["sessionId"], view["autoPassword"], GRANTED, binding_message=other
            )
            assert forged.status_code == 401 and error_of(forged) == "invalid_signature"
        shown = cli(d.op, "tokens", "show", "user-1")
        assert '"failedVerifications": 2' in shown.stdout, shown.stdout
        assert await d.poll_error(started["auth_req_id"]) == "authorization_pending"
        ok = await device.approve_pending(view, GRANTED)
        assert ok.status_code == 200, ok.text
        d.clock.advance(5)
        assert (await d.client.poll(started["auth_req_id"])).status_code == 200

        # Without a binding message the phone is still told it is a backchannel request.
        await d.client.start("user-1")
        (plain,) = await device.pending()
        assert plain["backchannel"] is True and "bindingMessage" not in plain
        ok = await device.approve_pending(plain, GRANTED)
        assert ok.status_code == 200, ok.text


# ----------------------------------------------------------------------------- no enumeration
async def test_an_unknown_token_is_answered_like_a_known_one_and_expires(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d, PushReceiver() as receiver:
        device, handle = await enroll_with_push(d.op, receiver, "user-1")
        known = await d.client.request("user-1", binding_message="Call 1", requested_expiry="20")
        unknown = await d.client.request("user-2", binding_message="Call 1", requested_expiry="20")
        assert (known.status_code, unknown.status_code) == (200, 200)
        assert known.headers.keys() == unknown.headers.keys()
        assert_alike(unknown.json(), known.json())
        # Only the enrolled phone was told.
        await pushed_nothing_more(receiver, 1)
        assert handle.payloads[0]["bindingMessage"] == "Call 1"
        rids = [known.json()["auth_req_id"], unknown.json()["auth_req_id"]]
        assert [await d.poll_error(r) for r in rids] == ["authorization_pending"] * 2
        d.clock.advance(10)
        assert [await d.poll_error(r) for r in rids] == ["authorization_pending"] * 2
        d.clock.advance(10)
        assert [await d.poll_error(r) for r in rids] == ["expired_token"] * 2
        assert await device.pending() == []


# ----------------------------------------------------------------------------- fatigue limits
async def test_the_pending_cap_is_429_with_retry_after_for_known_and_unknown_tokens(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator, max_pending_per_token=2) as d:
        await d.op.enrolled("user-1")
        for token_id in ("user-1", "user-2"):
            for _ in range(2):
                await d.client.start(token_id)
            refused = await d.client.request(token_id)
            assert refused.status_code == 429, refused.text
            assert error_of(refused) == "too_many_requests"
            assert 0 < int(refused.headers["retry-after"]) <= 120
        d.clock.advance(121)  # the pending requests expired: room again
        await d.client.start("user-1")


async def test_after_not_me_the_paused_token_is_answered_normally_but_nothing_reaches_the_phone(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator) as d, PushReceiver() as receiver:
        device, _ = await enroll_with_push(d.op, receiver, "user-1")
        reference = await d.client.start("user-1", binding_message="Call 1")
        resp = await device.reject((await view_for(device, "Call 1"))["sessionId"], "not_me")
        assert resp.status_code == 200, resp.text
        paused = await d.client.request("user-1", binding_message="Call 2")
        assert paused.status_code == 200
        assert_alike(paused.json(), reference)
        await pushed_nothing_more(receiver, 1)
        assert await device.pending() == []
        await d.only_expires(paused.json()["auth_req_id"], after=120)


async def test_after_consecutive_failures_the_locked_token_is_answered_normally_and_expires(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with desk(make_operator, max_failed_verifications=2) as d, PushReceiver() as receiver:
        device, _ = await enroll_with_push(d.op, receiver, "user-1")
        reference = await d.client.start("user-1", binding_message="Call 1")
        view = await view_for(device, "Call 1")
        for _ in range(2):
            forged = await device.approve(
                view["sessionId"], view["autoPassword"], GRANTED, binding_message="Call 9"
            )
            assert forged.status_code == 401
        locked = await d.client.request("user-1", binding_message="Call 2")
        assert locked.status_code == 200
        assert_alike(locked.json(), reference)
        await pushed_nothing_more(receiver, 1)
        assert [v.get("bindingMessage") for v in await device.pending()] == ["Call 1"]
        await d.only_expires(locked.json()["auth_req_id"], after=120)
