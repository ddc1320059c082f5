"""Attacks on the authorization response and the hosted page, against real operators (uvicorn,
Redis): ``state`` and ``nonce`` echoed exactly, the largest accepted request still served,
mix-up (``iss``), sessions still pending, rejected or expired, oversized and malformed
requests. The request's own errors are in tests/test_oidc_authorize_errors.py, the token
endpoint's in tests/test_oidc_token_attacks.py and tests/test_oidc_client_auth.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import httpx

from conftest import Operator, OperatorFactory
from idtoken.clock import ManualClock
from idtoken.oidc.secret import load_or_create_secret
from idtoken.oidc.tokens import FOR_CODE
from oidc_support import (
    OIDC_CLIENT,
    PUBLIC_CLIENT,
    REDIRECT_URI,
    HostedBrowser,
    assert_error_page,
    authorize_pairs,
    authorize_path,
    code_login,
    error_redirect,
    id_token_claims,
    pkce_pair,
    query_of,
    redeem,
    send_authorize,
    store_keys,
)
from support import DEFAULT_SERVICE, RedisServer

SERVICES = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), dict(PUBLIC_CLIENT)]
VSCHARS = "".join(chr(c) for c in range(0x20, 0x7F))  # RFC 6749 Appendix A: state, nonce


# ----------------------------------------------------------------------------- state, nonce, iss
async def test_state_and_nonce_come_back_exactly(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """Every character a state may hold (1024 of them) and a 255-character nonce."""
    state = (VSCHARS * 11)[:1024]
    nonce = (VSCHARS[::-1] * 3)[:255]
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        login = await code_login(op.http, device, [], token_id="user-1", state=state, nonce=nonce)
        expected = (
            REDIRECT_URI
            + "?"
            + urlencode([("code", login.code), ("state", state), ("iss", op.settings.issuer)])
        )
        assert login.redirect == expected
        assert login.query["state"] == state
        token = await redeem(op.http, login.code, login.verifier)
        assert token.status_code == 200, token.text
        claims = await id_token_claims(op.http, token.json()["id_token"])
        assert claims["nonce"] == nonce
        # A login without a nonce gets an ID token without one.
        plain = await code_login(op.http, device, [], token_id="user-1", nonce=None, state=None)
        assert set(plain.query) == {"code", "iss"}
        token = await redeem(op.http, plain.code, plain.verifier)
        assert "nonce" not in await id_token_claims(op.http, token.json()["id_token"])


async def test_the_largest_state_and_nonce_the_checks_accept_still_log_in(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """The page's sealed handle carries the whole request: a request /authorize accepts must
    fit it, even when every character of state and nonce needs escaping in JSON."""
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        for state, nonce in (("\\" * 1024, '"' * 255), ('"' * 1024, "\\" * 255)):
            login = await code_login(
                op.http,
                device,
                [],
                token_id="user-1",
                state=state,
                nonce=nonce,
                scope="openid profile email identity:full identity:age_over_18",
                login_hint="u" * 128,
                acr_values="urn:idtoken:trust_level:1",
            )
            assert login.query["state"] == state
            token = await redeem(op.http, login.code, login.verifier)
            assert token.status_code == 200, token.text
            assert (await id_token_claims(op.http, token.json()["id_token"]))["nonce"] == nonce


async def test_the_issuer_is_in_every_authorization_response(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """Mix-up (RFC 9207, RFC 9700 §4.4): success and error responses name their issuer, and a
    code from one operator is worth nothing at another."""
    async with (
        make_operator(services=SERVICES) as op,
        make_operator(services=SERVICES, store="memory") as elsewhere,
    ):
        meta = (await op.http.get("/.well-known/openid-configuration")).json()
        assert meta["authorization_response_iss_parameter_supported"] is True
        assert meta["issuer"] == op.settings.issuer
        device = await op.enrolled("user-1", given_name="Ada")
        login = await code_login(op.http, device, [], token_id="user-1")
        assert login.query["iss"] == op.settings.issuer
        denied = await send_authorize(op.http, "GET", authorize_pairs(prompt="none"))
        assert query_of(denied.headers["location"])["iss"] == op.settings.issuer
        # The other operator (its own secret and store) does not know the code...
        other = await redeem(elsewhere.http, login.code, login.verifier)
        assert other.status_code == 400
        assert other.json() == {
            "error": "invalid_grant",
            "error_description": "the code is not valid",
        }
        # ...and its refusal changed nothing here.
        token = await redeem(op.http, login.code, login.verifier)
        assert token.status_code == 200, token.text


# ----------------------------------------------------------------------------- pending, rejected
def code_for_session(op: Operator, real_code: str, session_id: str) -> str:
    """A code for ``session_id`` sealed with the operator's own secret, made from a real one:
    what an attacker would need to collect a session the approval never gave a code."""
    secret = load_or_create_secret(op.settings.oidc.secret_key_file)
    where = json.loads(secret.open(FOR_CODE, real_code))
    where[1] = session_id
    return secret.seal(FOR_CODE, json.dumps(where, separators=(",", ":")).encode())


async def complete(op: Operator, session_id: str, ws_token: str) -> httpx.Response:
    return await op.http.post(
        "/authorize/complete", json={"sessionId": session_id, "wsToken": ws_token}
    )


async def test_a_session_still_pending_or_rejected_gives_no_code_and_no_tokens(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        model = await code_login(
            op.http, device, ["identity:name"], token_id="user-1", scope="openid profile"
        )
        browser = HostedBrowser(op.http)
        verifier, challenge = pkce_pair()
        url = authorize_path(code_challenge=challenge, code_challenge_method="S256", state="p-1")

        # Pending: the page learns to wait; a code sealed for the session collects nothing.
        pending = await browser.start(await browser.open(url), "user-1")
        waiting = await complete(op, pending.session_id, pending.ws_token)
        assert waiting.status_code == 409
        assert waiting.json() == {
            "error": "authorization_pending",
            "error_description": "the login is still waiting for the phone",
        }
        forged = code_for_session(op, model.code, pending.session_id)
        refused = await redeem(op.http, forged, verifier)
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "invalid_grant",
            "error_description": "the code is not valid or has expired",
        }
        # Nothing changed: the session can still be approved and its own code collected.
        outcome = asyncio.create_task(browser.outcome(pending))
        resp = await device.approve(pending.session_id, pending.auto_password, [])
        assert resp.status_code == 200, resp.text
        assert await outcome == {"type": "approved"}
        done = query_of(await browser.complete(pending))
        assert done["state"] == "p-1"
        assert (await redeem(op.http, done["code"], verifier)).status_code == 200

        # Someone else's wsToken, or a session of /auth/initiate, completes nothing.
        other = await browser.start(await browser.open(url), "user-1")
        assert (await complete(op, other.session_id, pending.ws_token)).status_code == 404
        direct = await op.rp("shop").initiate("user-1", scopes=["identity:name"])
        resp = await complete(op, direct.session_id, direct.ws_token)
        assert resp.status_code == 404
        assert resp.json()["error"] == "invalid_request"

        # Rejected, for either reason (a fraud report last: it pauses the token):
        # access_denied at the redirect URI, and no tokens.
        for reason, description in (
            ("user_rejected", "the user declined on their phone"),
            ("not_me", "the user reported the request as not theirs"),
        ):
            rejected = await browser.start(await browser.open(url), "user-1")
            assert (await device.reject(rejected.session_id, reason)).status_code == 200
            resp = await complete(op, rejected.session_id, rejected.ws_token)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {
                "redirect": error_redirect(REDIRECT_URI, "access_denied", description, "p-1")
            }
            forged = code_for_session(op, model.code, rejected.session_id)
            refused = await redeem(op.http, forged, verifier)
            assert refused.status_code == 400
            assert refused.json()["error"] == "invalid_grant"
            assert set(refused.json()) == {"error", "error_description"}


async def test_a_login_that_expired_unapproved_is_access_denied(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(time.time())
    async with make_operator(services=SERVICES, clock=clock) as op:
        await op.enrolled("user-1", given_name="Ada")
        browser = HostedBrowser(op.http)
        started = await browser.start(await browser.open(authorize_path()), "user-1")
        clock.advance(61)
        resp = await complete(op, started.session_id, started.ws_token)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "redirect": error_redirect(
                REDIRECT_URI,
                "access_denied",
                "the login request expired before it was approved",
                "st-1",
            )
        }


# ----------------------------------------------------------------------------- oversized input
async def test_oversized_or_malformed_authorization_requests_are_refused_without_redirect(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator(services=SERVICES) as op:
        before = store_keys(redis_srv)
        huge = await op.http.get(authorize_path(login_hint="u" * 9000))
        assert_error_page(huge, "the login request is too large")
        for bad in ("%ff", "%C3%28", "%ED%A0%80"):  # not UTF-8 once decoded
            resp = await op.http.get(f"{authorize_path(state=None)}&state={bad}")
            assert_error_page(resp, "the login request is not valid", bad)
        # A POSTed request too: the page, whatever is wrong with the body.
        resp = await send_authorize(op.http, "POST", authorize_pairs(login_hint="u" * 70_000))
        assert_error_page(resp, "the request body is larger than 64 KiB", status=413)
        resp = await op.http.post("/authorize", json=dict(authorize_pairs()))
        assert_error_page(
            resp, "the request body must be application/x-www-form-urlencoded", status=415
        )
        resp = await op.http.post(
            "/authorize",
            content=b"state=\xff&" + urlencode(authorize_pairs(state=None)).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_error_page(resp, "the request body must be UTF-8")
        # The page's own calls: a handle that is too long, or not the operator's.
        for handle in ("x" * 9000, "A" * 200):
            resp = await op.http.post(
                "/authorize/session", json={"handle": handle, "tokenId": "user-1"}
            )
            assert resp.status_code == 400
            assert resp.json() == {
                "error": "invalid_request",
                "error_description": "this login page is not valid; start again from the site",
            }
        assert store_keys(redis_srv) == before
