"""Attacks on the authorization code and the tokens, against real operators (uvicorn, Redis).

A code is single use (across instances too: nothing is issued twice, and a replay revokes what
the first use got), lives at most ``[oidc] code_ttl`` seconds and is bound to its client, its
redirect URI and its PKCE verifier (no downgrade); a refused request issues nothing. The access
token expires with the service's ``token_ttl`` and opens nothing but ``/userinfo``. Client
authentication is in tests/test_oidc_client_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from pathlib import Path

import httpx
import pytest

from conftest import OperatorFactory
from idtoken.clock import ManualClock
from idtoken.errors import ConfigError
from idtoken.settings import load_settings
from oidc_support import (
    CLIENT_SECRET,
    OIDC_CLIENT,
    OTHER_CLIENT,
    OTHER_SECRET,
    PUBLIC_CLIENT,
    CodeLogin,
    assert_issued,
    assert_refused,
    assert_token_refused,
    code_login,
    id_token_claims,
    instances,
    on_instance,
    pkce_pair,
    redeem,
    userinfo,
)
from support import DEFAULT_SERVICE, OperatorConfig

SPA_URI = PUBLIC_CLIENT["redirect_uris"][0]
SERVICES = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), dict(OTHER_CLIENT), dict(PUBLIC_CLIENT)]
USED = "the code has already been used"
NOT_VALID = "the code is not valid"
EXPIRED = "the code is not valid or has expired"
VERIFIER_MISMATCH = "code_verifier does not match the code_challenge"
OTHER_REDIRECT = "redirect_uri differs from the authorization request's"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# ----------------------------------------------------------------------------- replay
async def test_a_code_is_single_use_even_across_instances(tmp_path: Path, redis_url: str) -> None:
    async with instances(tmp_path / "fleet", redis_url, 3, services=SERVICES) as ops:
        phone = await ops[0].enrolled("user-1", given_name="Ada")
        # The page on instance 0, the phone on instance 1, the code raced on all three.
        login = await code_login(
            ops[0].http, on_instance(phone, ops[1].http), [], token_id="user-1"
        )
        answers = await asyncio.gather(*(redeem(op.http, login.code, login.verifier) for op in ops))
        issued = [r for r in answers if r.status_code == 200]
        assert len(issued) == 1, [r.text for r in answers]
        body = assert_issued(issued[0])
        for refused in (r for r in answers if r.status_code != 200):
            assert_refused(refused, 400, "invalid_grant", USED)
        for op in ops:
            assert_token_refused(
                await userinfo(op.http, body["access_token"]), "the access token has been revoked"
            )

        # One after the other: the replay on another instance revokes what the first got.
        login = await code_login(
            ops[1].http, on_instance(phone, ops[2].http), [], token_id="user-1"
        )
        body = assert_issued(await redeem(ops[2].http, login.code, login.verifier))
        assert (await userinfo(ops[0].http, body["access_token"])).status_code == 200
        assert_refused(
            await redeem(ops[0].http, login.code, login.verifier), 400, "invalid_grant", USED
        )
        assert_refused(
            await redeem(ops[1].http, login.code, login.verifier), 400, "invalid_grant", USED
        )
        for op in ops:
            assert_token_refused(
                await userinfo(op.http, body["access_token"]), "the access token has been revoked"
            )


# ----------------------------------------------------------------------------- injection
async def test_a_code_is_bound_to_its_client_redirect_uri_and_verifier(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")

        async def login() -> CodeLogin:
            return await code_login(op.http, device, [], token_id="user-1")

        # Another client, even with the right verifier and redirect URI, gets nothing; its
        # attempt does not spend the code.
        first = await login()
        for auth, form in (
            (("other", OTHER_SECRET), {}),
            (None, {"client_id": "spa"}),
        ):
            resp = await redeem(op.http, first.code, first.verifier, auth=auth, **form)
            assert_refused(resp, 400, "invalid_grant", "the code was issued to another client")
        assert_issued(await redeem(op.http, first.code, first.verifier))

        # A code stolen from one login and injected into another: that login's verifier.
        victim, stolen = await login(), await login()
        resp = await redeem(op.http, stolen.code, victim.verifier)
        assert_refused(resp, 400, "invalid_grant", VERIFIER_MISMATCH)
        # The code was spent by that attempt.
        assert_refused(
            await redeem(op.http, stolen.code, stolen.verifier), 400, "invalid_grant", USED
        )

        # Another registered redirect URI, or none.
        for redirect_uri in ("https://app.example/cb?x=1", ""):
            moved = await login()
            resp = await redeem(op.http, moved.code, moved.verifier, redirect_uri=redirect_uri)
            assert_refused(resp, 400, "invalid_grant", OTHER_REDIRECT)
            assert_refused(
                await redeem(op.http, moved.code, moved.verifier), 400, "invalid_grant", USED
            )

        # Forged, garbled and borrowed codes: not the operator's.
        kept = await login()
        flipped = kept.code[:-1] + ("A" if kept.code[-1] != "A" else "B")
        access = assert_issued(await redeem(op.http, victim.code, victim.verifier))
        for forged in (
            secrets.token_urlsafe(64),
            flipped,
            kept.code[:-4],
            kept.code + "A",
            kept.code + "=",
            access["access_token"],
            access["id_token"],
            "A" * 9000,
        ):
            resp = await redeem(op.http, forged, kept.verifier)
            assert_refused(resp, 400, "invalid_grant", NOT_VALID)
        # None of them touched the real code.
        assert_issued(await redeem(op.http, kept.code, kept.verifier))


# ----------------------------------------------------------------------------- PKCE
async def test_pkce_cannot_be_downgraded_or_skipped(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        # No challenge at /authorize, a verifier at /token: RFC 9700 §2.1.1 refuses it.
        bare = await code_login(op.http, device, [], token_id="user-1", pkce=False)
        resp = await redeem(op.http, bare.code, pkce_pair()[0])
        assert_refused(
            resp, 400, "invalid_grant", "code_verifier given, but the request had no code_challenge"
        )
        assert_refused(await redeem(op.http, bare.code, None), 400, "invalid_grant", USED)

        # A challenge at /authorize: no verifier, or the challenge itself (what plain would
        # take), is refused.
        for verifier in (None, "challenge"):
            login = await code_login(op.http, device, [], token_id="user-1")
            assert login.verifier is not None
            sent = s256(login.verifier) if verifier == "challenge" else None
            resp = await redeem(op.http, login.code, sent)
            assert_refused(resp, 400, "invalid_grant", VERIFIER_MISMATCH)

        # A malformed verifier is refused before the code is looked at: it stays good.
        login = await code_login(op.http, device, [], token_id="user-1")
        assert login.verifier is not None
        for malformed in ("a" * 42, "a" * 129, login.verifier[:42] + "+", login.verifier + "/"):
            resp = await redeem(op.http, login.code, malformed)
            assert_refused(
                resp,
                400,
                "invalid_request",
                "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]",
            )
        assert_issued(await redeem(op.http, login.code, login.verifier))

        # A public client: the verifier is all it has.
        spa = {"client_id": "spa", "redirect_uri": SPA_URI}
        login = await code_login(op.http, device, [], token_id="user-1", **spa)
        resp = await redeem(op.http, login.code, None, auth=None, **spa)
        assert_refused(resp, 400, "invalid_grant", VERIFIER_MISMATCH)
        login = await code_login(op.http, device, [], token_id="user-1", **spa)
        assert_issued(await redeem(op.http, login.code, login.verifier, auth=None, **spa))


# ----------------------------------------------------------------------------- lifetimes
@pytest.mark.parametrize("code_ttl", [None, 10])
async def test_a_code_lives_code_ttl_seconds(
    make_operator: OperatorFactory, redis_url: str, code_ttl: int | None
) -> None:
    clock = ManualClock(float(int(time.time())))
    extra = "" if code_ttl is None else f"\n[oidc]\ncode_ttl = {code_ttl}\n"
    async with make_operator(services=SERVICES, clock=clock, extra=extra) as op:
        ttl = op.settings.oidc.code_ttl
        assert ttl == (code_ttl or 60)
        device = await op.enrolled("user-1", given_name="Ada")
        late = await code_login(op.http, device, [], token_id="user-1")
        in_time = await code_login(op.http, device, [], token_id="user-1")
        clock.advance(ttl)
        assert_issued(await redeem(op.http, in_time.code, in_time.verifier))
        clock.advance(1)
        assert_refused(
            await redeem(op.http, late.code, late.verifier), 400, "invalid_grant", EXPIRED
        )


def test_code_ttl_cannot_be_set_above_60_seconds(tmp_path: Path) -> None:
    config = OperatorConfig(tmp_path, extra="\n[oidc]\ncode_ttl = 61\n")
    with pytest.raises(ConfigError, match="code_ttl"):
        load_settings(config.write())


async def test_the_access_token_expires_with_token_ttl_and_opens_nothing_else(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    clock = ManualClock(float(int(time.time())))
    services = [dict(DEFAULT_SERVICE), {**OIDC_CLIENT, "token_ttl": 120}]
    async with make_operator(services=services, clock=clock) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        login = await code_login(
            op.http, device, ["identity:name"], token_id="user-1", scope="openid identity:name"
        )
        body = assert_issued(await redeem(op.http, login.code, login.verifier))
        access, id_token = body["access_token"], body["id_token"]
        assert body["expires_in"] == 120
        claims = await id_token_claims(op.http, id_token)
        assert claims["exp"] - claims["iat"] == 120

        # Not a client secret, not a code, not a refresh token, not a login page.
        resp = await op.http.post(
            "/auth/initiate",
            json={"tokenId": "user-1", "serviceId": "webapp"},
            headers={"Authorization": f"Bearer {access}"},
        )
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
        resp = await redeem(op.http, login.code, login.verifier, auth=("webapp", access))
        assert_refused(resp, 401, "invalid_client", "client authentication failed")
        assert_refused(
            await redeem(op.http, access, login.verifier), 400, "invalid_grant", NOT_VALID
        )
        resp = await op.http.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": access},
            auth=httpx.BasicAuth("webapp", CLIENT_SECRET),
        )
        assert_refused(resp, 400, "unsupported_grant_type", "this grant type is not supported")
        resp = await op.http.post(
            "/authorize/session", json={"handle": access, "tokenId": "user-1"}
        )
        assert resp.status_code == 400
        assert resp.json()["error_description"] == (
            "this login page is not valid; start again from the site"
        )
        # And /userinfo takes nothing but an access token.
        for other in (id_token, login.code, login.started.ws_token):
            assert_token_refused(await userinfo(op.http, other), "the access token is not valid")
        query = await op.http.get(f"/userinfo?access_token={access}")
        assert query.status_code == 401 and query.json()["error"] == "invalid_request"

        clock.advance(119)
        info = await userinfo(op.http, access)
        assert info.status_code == 200, info.text
        assert info.json()["given_name"] == "Ada"
        clock.advance(1)
        assert_token_refused(await userinfo(op.http, access), "the access token is not valid")
