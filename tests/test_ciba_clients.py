"""openid-client (npm) runs OpenID CIBA in poll mode against a fleet of real operator
processes on a real Redis, the reference device answering on another instance.

tests/js/ciba-poll.mjs is the client: discovery, ``initiateBackchannelAuthentication`` with
``client_secret_basic``, then ``pollBackchannelAuthenticationGrant``, which waits ``interval``
between polls and honours ``slow_down`` by itself. The backchannel request goes to A (the
issuer), every poll to B, userinfo to C; the user's phone (``idtoken.client.Device``) talks to
C. This test plays the phone: once openid-client has been told ``authorization_pending``, the
phone approves (or rejects) the request as ``/auth/pending`` shows it.

The fleet and the node runner are tests/client_fleet.py's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ciba_support import AUTH_REQ_ID, GRANTED, POLL_CLIENT, POLL_SECRET, SCOPE
from client_fleet import (
    Fleet,
    NodeClient,
    assert_token_summary,
    collected_on,
    enrolled_phone,
    instances,
    node_client,
    operator_fleet,
)
from idtoken.client import Device

INTERVAL = 2  # [oidc] ciba_interval: small, to keep the polls few and quick
BINDING_MESSAGE = "Call 4711 – desk №3"
CLIENT_ID = POLL_CLIENT["id"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with operator_fleet(
        tmp_path_factory.mktemp("ciba-clients"),
        [dict(POLL_CLIENT)],
        oidc=f"ciba_interval = {INTERVAL}\n",
    ) as fleet:
        yield fleet


class Run:
    """What the script says, its requests (the ``sent`` lines) kept apart as they come."""

    def __init__(self, rp: NodeClient) -> None:
        self.rp = rp
        self.sent: list[dict[str, Any]] = []

    async def step(self, expected: str) -> dict[str, Any]:
        """The next line that is not a request, which must be ``expected``."""
        while (message := await self.rp.next_message(expected))["step"] == "sent":
            self.sent.append(message)
        assert message["step"] == expected, message
        return message

    async def polled(self, error: str) -> None:
        """Until openid-client has been answered ``error`` by the token endpoint."""
        while not any(r["url"].endswith("/token") and r["error"] == error for r in self.sent):
            message = await self.rp.next_message(f"a poll answered {error}")
            assert message["step"] == "sent", message
            self.sent.append(message)

    def polls(self, token_url: str) -> list[dict[str, Any]]:
        return [r for r in self.sent if r["url"] == token_url]


def settings(
    fleet: Fleet, token_id: str, a: httpx.AsyncClient, b: httpx.AsyncClient, c: httpx.AsyncClient
) -> dict[str, Any]:
    return {
        "issuer": fleet.issuer,
        "clientId": CLIENT_ID,
        "clientSecret": POLL_SECRET,
        "scope": SCOPE,
        "loginHint": token_id,
        "bindingMessage": BINDING_MESSAGE,
        "route": {
            "/bc-authorize": str(a.base_url),
            "/token": str(b.base_url),
            "/userinfo": str(c.base_url),
        },
    }


async def started_on_phone(run: Run, phone: Device) -> dict[str, Any]:
    """The script's backchannel request, answered, as the phone sees it."""
    started = await run.step("started")
    assert set(started) == {"step", "auth_req_id", "expires_in", "interval"}, started
    assert AUTH_REQ_ID.match(started["auth_req_id"])
    assert started["interval"] == INTERVAL
    assert 0 < started["expires_in"] <= POLL_CLIENT["session_ttl"]
    # The request is stored before /bc-authorize answers: the phone sees it at once.
    (view,) = await phone.pending()
    assert view["backchannel"] is True
    assert view["bindingMessage"] == BINDING_MESSAGE
    assert view["scopes"] == ["identity:name", "identity:date_of_birth"]
    # openid-client is answered authorization_pending before the user does anything.
    await run.polled("authorization_pending")
    return view


def assert_polled_politely(polls: list[dict[str, Any]]) -> None:
    """openid-client's polls: pending, then the last answer; each at least the interval after
    the one before (it waits after every answer), so never slow_down."""
    assert len(polls) >= 2, polls
    assert {p["error"] for p in polls[:-1]} == {"authorization_pending"}, polls
    for before, after in itertools.pairwise(polls):
        assert after["at"] - before["at"] >= INTERVAL, polls


def consented(sub: str) -> dict[str, Any]:
    return {"tokenId": sub, "givenName": "Marie", "familyName": "Dupont"}


async def test_openid_client_ciba_poll_across_three_instances(fleet: Fleet) -> None:
    async with instances(fleet) as (a, b, c):
        token_id, phone = await enrolled_phone(fleet, c)
        async with node_client("ciba-poll.mjs", settings(fleet, token_id, a, b, c)) as rp:
            run = Run(rp)
            view = await started_on_phone(run, phone)
            ok = await phone.approve_pending(view, GRANTED)
            assert ok.status_code == 200, ok.text
            tokens = await run.step("tokens")
            replay = await run.step("replay")
            await run.step("done")

        assert_token_summary(tokens["token"], "openid identity:name")
        claims = tokens["claims"]
        assert claims["iss"] == fleet.issuer
        assert claims["aud"] == CLIENT_ID
        assert claims["sub"] == token_id
        assert claims["amr"] == ["pop", "user"]  # no browser: not mca
        assert claims["acr"] == "urn:idtoken:trust_level:1"
        assert claims["given_name"] == "Marie" and claims["family_name"] == "Dupont"
        assert claims["idtoken"] == consented(token_id)
        assert "birthdate" not in claims and "nonce" not in claims
        assert tokens["userinfo"] == {
            "sub": token_id,
            "given_name": "Marie",
            "family_name": "Dupont",
            "name": "Marie Dupont",
            "idtoken": consented(token_id),
        }
        # The same auth_req_id again: the tokens were handed out once.
        assert (replay["name"], replay["error"]) == ("ResponseBodyError", "invalid_grant"), replay
        assert await collected_on(fleet, view["sessionId"]) == [1]

        token_url = str(b.base_url.join("/token"))
        polls = run.polls(token_url)
        assert_polled_politely(polls[:-1])
        assert polls[-2]["status"] == 200 and polls[-1]["error"] == "invalid_grant"
        poll = ("POST", token_url, "Basic", ["auth_req_id", "grant_type"])
        assert [(r["method"], r["url"], r["auth"], r["form"]) for r in run.sent] == [
            (
                "POST",
                str(a.base_url.join("/bc-authorize")),
                "Basic",
                ["binding_message", "client_id", "login_hint", "scope"],
            ),
            *[poll] * (len(polls) - 1),
            ("GET", f"{fleet.issuer}/.well-known/jwks.json", None, None),
            ("GET", str(c.base_url.join("/userinfo")), "Bearer", None),
            poll,
        ]
        assert run.sent[0]["status"] == 200


async def test_openid_client_ciba_poll_ends_in_access_denied_when_the_user_rejects(
    fleet: Fleet,
) -> None:
    async with instances(fleet) as (a, b, c):
        token_id, phone = await enrolled_phone(fleet, c)
        async with node_client("ciba-poll.mjs", settings(fleet, token_id, a, b, c)) as rp:
            run = Run(rp)
            view = await started_on_phone(run, phone)
            rejected = await phone.reject(view["sessionId"])
            assert rejected.status_code == 200, rejected.text
            refused = await run.step("refused")
            await run.step("done")

        assert (refused["name"], refused["error"]) == ("ResponseBodyError", "access_denied")
        polls = run.polls(str(b.base_url.join("/token")))
        assert_polled_politely(polls)
        assert polls[-1]["status"] == 400 and polls[-1]["error"] == "access_denied"
