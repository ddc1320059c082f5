"""OpenID CIBA, poll mode, end to end on a real uvicorn server and a real Redis."""

from __future__ import annotations

import hashlib
import time

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import OperatorFactory
from idtoken.clock import ManualClock
from support import DEFAULT_SERVICE

SECRET = "ciba-client-secret-0123456789-abcdefgh"
CIBA_CLIENT = {
    **DEFAULT_SERVICE,
    "id": "callcentre",
    "name": "Call Centre",
    "client_secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
    "backchannel_token_delivery_mode": "poll",
    "session_ttl": 120,
}
AUTH = httpx.BasicAuth("callcentre", SECRET)


async def test_ciba_poll_issues_tokens_once_after_approval(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(time.time())
    async with make_operator(
        services=[dict(DEFAULT_SERVICE), dict(CIBA_CLIENT)], clock=clock
    ) as op:
        device = await op.enrolled("user-1", given_name="Marie", family_name="Dupont")
        resp = await op.http.post(
            "/bc-authorize",
            data={
                "scope": "openid profile",
                "login_hint": "user-1",
                "binding_message": "Order 4711",
            },
            auth=AUTH,
        )
        assert resp.status_code == 200, resp.text
        started = resp.json()
        assert set(started) == {"auth_req_id", "expires_in", "interval"}
        assert started["expires_in"] == 120 and started["interval"] == 5

        async def poll() -> httpx.Response:
            return await op.http.post(
                "/token",
                data={
                    "grant_type": "urn:openid:params:grant-type:ciba",
                    "auth_req_id": started["auth_req_id"],
                },
                auth=AUTH,
            )

        first = await poll()
        assert first.status_code == 400 and first.json()["error"] == "authorization_pending"
        fast = await poll()
        assert fast.json()["error"] == "slow_down"
        clock.advance(11)
        pending = await device.pending()
        assert len(pending) == 1
        view = pending[0]
        assert view["backchannel"] is True and view["bindingMessage"] == "Order 4711"
        # The binding message is signed: a phone that signed another text is refused.
        forged = await device.approve(
            view["sessionId"], view["autoPassword"], ["identity:name"], binding_message="Order 4712"
        )
        assert forged.status_code == 401
        ok = await device.approve_pending(view, ["identity:name"])
        assert ok.status_code == 200, ok.text
        tokens = await poll()
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        jwks = KeySet.import_key_set((await op.http.get("/.well-known/jwks.json")).json())
        claims = jwt.decode(body["id_token"], jwks, algorithms=["ES256"]).claims
        assert claims["aud"] == "callcentre" and claims["sub"] == "user-1"
        assert claims["amr"] == ["pop", "user"]
        assert claims["given_name"] == "Marie"
        clock.advance(6)
        replay = await poll()
        assert replay.json()["error"] == "invalid_grant"
