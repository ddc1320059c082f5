"""The OpenID Connect code flow end to end, on a real uvicorn server and a real Redis."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import Operator, OperatorFactory
from oidc_support import (
    CLIENT_SECRET,
    OIDC_CLIENT,
    REDIRECT_URI,
    HostedBrowser,
    pkce_pair,
    query_of,
)
from support import DEFAULT_SERVICE


def authorize_url(**params: str) -> str:
    base = {
        "response_type": "code",
        "client_id": "webapp",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile identity:age_over_18",
        "state": "st-1",
        "nonce": "n-1",
    }
    return "/authorize?" + urlencode({**base, **params})


async def test_code_flow_issues_an_id_token_with_only_the_consented_claims(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=[dict(DEFAULT_SERVICE), dict(OIDC_CLIENT)]) as op:
        await run_code_flow(op)


async def run_code_flow(op: Operator) -> None:
    device = await op.enrolled(
        "user-1", given_name="Marie", family_name="Dupont", birthdate="1990-05-01"
    )
    browser = HostedBrowser(op.http)
    verifier, challenge = pkce_pair()
    config = await browser.open(
        authorize_url(code_challenge=challenge, code_challenge_method="S256")
    )
    started = await browser.start(config, "user-1")
    outcome = asyncio.create_task(browser.outcome(started))
    pending = await device.pending()
    assert [s["sessionId"] for s in pending] == [started.session_id]
    assert pending[0]["scopes"] == [
        "identity:name",
        "identity:date_of_birth",
        "identity:age_over_18",
    ]
    resp = await device.approve(
        started.session_id, started.auto_password, ["identity:name", "identity:age_over_18"]
    )
    assert resp.status_code == 200, resp.text
    assert await outcome == {"type": "approved"}
    redirect = await browser.complete(started)
    assert redirect.startswith(REDIRECT_URI + "?")
    query = query_of(redirect)
    assert query["state"] == "st-1"
    assert query["iss"] == op.settings.issuer

    token = await op.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=httpx.BasicAuth("webapp", CLIENT_SECRET),
    )
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid identity:name identity:age_over_18"
    jwks = KeySet.import_key_set((await op.http.get("/.well-known/jwks.json")).json())
    claims = jwt.decode(body["id_token"], jwks, algorithms=["ES256"]).claims
    assert claims["iss"] == op.settings.issuer
    assert claims["aud"] == "webapp"
    assert claims["sub"] == "user-1"
    assert claims["nonce"] == "n-1"
    assert claims["acr"] == "urn:idtoken:trust_level:1"
    assert claims["amr"] == ["pop", "user", "mca"]
    assert claims["given_name"] == "Marie" and claims["family_name"] == "Dupont"
    assert claims["idtoken"] == {
        "tokenId": "user-1",
        "givenName": "Marie",
        "familyName": "Dupont",
        "age_over_18": True,
    }
    assert "birthdate" not in claims
    info = await op.http.get(
        "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": "user-1",
        "given_name": "Marie",
        "family_name": "Dupont",
        "name": "Marie Dupont",
        "idtoken": claims["idtoken"],
    }
    again = await op.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=httpx.BasicAuth("webapp", CLIENT_SECRET),
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    revoked = await op.http.get(
        "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert revoked.status_code == 401
    assert 'error="invalid_token"' in revoked.headers["www-authenticate"]
