"""Real OpenID Connect client libraries against a fleet of real operator processes.

Three ``idtoken-operator serve`` child processes on one Redis (tests/client_fleet.py, which
says how a request reaches another instance than the issuer, A). Every login touches all
three: the hosted page (authorization endpoint and the page's own requests) is served by A,
the page's WebSocket by B, the phone approves on C, the token is redeemed on C and userinfo
answered by B.

The relying parties:

- **authlib** (``AsyncOAuth2Client``, PKCE S256) with ``client_secret_basic`` and
  ``client_secret_post``; the ID token checked the way authlib's own OpenID Connect client
  does (joserfc with the discovered JWKS and algorithms, then ``CodeIDToken`` with the nonce,
  the client id and the access token for ``at_hash``), the discovery document by authlib's
  ``OpenIDProviderMetadata``.
- **openid-client** (npm), in ``tests/js/code-flow.mjs``: discovery, the authorization URL
  with PKCE, ``authorizationCodeGrant`` (ID token, RFC 9207 ``iss``, state, nonce, PKCE) and
  ``fetchUserInfo``, as a confidential client (``client_secret_basic``) and a public one
  (``none``). This test plays the browser and the phone while the script waits for the
  callback URL on its standard input.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken, UserInfo
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from client_fleet import (
    JS_DIR,
    STEP_TIMEOUT,
    Fleet,
    assert_token_summary,
    collected_on,
    enrolled_phone,
    instances,
    node_binary,
    node_client,
    on,
    openid_client_version,
    operator_fleet,
)
from idtoken.client import Device
from oidc_support import (
    CLIENT_SECRET,
    OIDC_CLIENT,
    PUBLIC_CLIENT,
    REDIRECT_URI,
    HostedBrowser,
    query_of,
)
from support import DEFAULT_SERVICE

POST_CLIENT: dict[str, Any] = {
    **OIDC_CLIENT,
    "id": "webapp-post",
    "token_endpoint_auth_method": "client_secret_post",
}
SCOPE = "openid profile identity:age_over_18"
GRANTED = ["identity:name", "identity:age_over_18"]


@dataclass(frozen=True)
class Sent:
    """A request a client library made after discovery: its method, URL, Authorization
    scheme and the names of its form parameters."""

    method: str
    url: str
    auth: str | None
    form: set[str]

    @classmethod
    def of(cls, method: str, url: str, headers: Any, body: bytes) -> Sent:
        authorization = headers.get("authorization")
        return cls(
            method,
            url,
            authorization.split(" ")[0] if authorization else None,
            {name for name, _ in parse_qsl(body.decode())},
        )


# ----------------------------------------------------------------------------- the fleet
@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    services = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), dict(POST_CLIENT), PUBLIC_CLIENT]
    with operator_fleet(tmp_path_factory.mktemp("oidc-fleet"), services) as fleet:
        yield fleet


async def log_in(
    authorize_url: str,
    token_id: str,
    *,
    page: httpx.AsyncClient,
    socket: httpx.AsyncClient,
    phone: Device,
) -> tuple[str, str]:
    """The user's part: the hosted page (its HTTP on ``page``, its WebSocket on ``socket``)
    and the phone's approval of the name and age_over_18; returns the redirect URL and the
    session id."""
    assert authorize_url.startswith(f"{page.base_url.join('/authorize')}?"), authorize_url
    browser = HostedBrowser(page)
    started = await browser.start(await browser.open(authorize_url), token_id)
    outcome = asyncio.create_task(HostedBrowser(socket).outcome(started))
    try:
        pending = await phone.pending()
        assert [s["sessionId"] for s in pending] == [started.session_id]
        assert pending[0]["scopes"] == [
            "identity:name",
            "identity:date_of_birth",
            "identity:age_over_18",
        ]
        resp = await phone.approve(started.session_id, started.auto_password, GRANTED)
        assert resp.status_code == 200, resp.text
        assert await asyncio.wait_for(outcome, STEP_TIMEOUT) == {"type": "approved"}
    finally:
        outcome.cancel()
    return await browser.complete(started), started.session_id


def consented(sub: str) -> dict[str, Any]:
    """The ``idtoken`` object of the consented name and age_over_18."""
    return {"tokenId": sub, "givenName": "Marie", "familyName": "Dupont", "age_over_18": True}


def assert_consented_claims(claims: dict[str, Any], fleet: Fleet, client_id: str, sub: str) -> None:
    assert claims["iss"] == fleet.issuer
    assert claims["aud"] == client_id
    assert claims["sub"] == sub
    assert claims["acr"] == "urn:idtoken:trust_level:1"
    assert claims["amr"] == ["pop", "user", "mca"]
    assert claims["given_name"] == "Marie" and claims["family_name"] == "Dupont"
    assert claims["idtoken"] == consented(sub)
    assert "birthdate" not in claims


def expected_userinfo(sub: str) -> dict[str, Any]:
    return {
        "sub": sub,
        "given_name": "Marie",
        "family_name": "Dupont",
        "name": "Marie Dupont",
        "idtoken": consented(sub),
    }


# ----------------------------------------------------------------------------- authlib
async def id_token_claims(
    discovery: dict[str, Any], token: dict[str, Any], client_id: str, nonce: str
) -> CodeIDToken:
    """The ID token checked as authlib's OpenID Connect client checks it, with the JWKS and
    the algorithms from discovery, and the audience required too."""
    async with httpx.AsyncClient(timeout=STEP_TIMEOUT) as http:
        resp = await http.get(discovery["jwks_uri"])
        resp.raise_for_status()
    decoded = jwt.decode(
        token["id_token"],
        KeySet.import_key_set(resp.json()),
        registry=JWSRegistry(algorithms=discovery["id_token_signing_alg_values_supported"]),
    )
    options = {
        "iss": {"essential": True, "value": discovery["issuer"]},
        "aud": {"essential": True, "value": client_id},
    }
    params = {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]}
    claims = CodeIDToken(decoded.claims, decoded.header, options, params)
    claims.validate(leeway=60)
    # The nonce check is live: the same token for another request's nonce is refused.
    other = CodeIDToken(decoded.claims, decoded.header, options, {**params, "nonce": "other"})
    with pytest.raises(InvalidClaimError):
        other.validate(leeway=60)
    return claims


def check_discovery(discovery: dict[str, Any]) -> None:
    """authlib's checks of OpenID Connect Discovery §3 and RFC 8414 §2, all but one: Discovery
    wants RS256 among the ID token algorithms, and the operator signs with ES256 alone."""
    metadata = OpenIDProviderMetadata(discovery)
    for key in metadata.REGISTRY_KEYS:
        if key != "id_token_signing_alg_values_supported":
            getattr(metadata, f"validate_{key}")()
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]


@pytest.mark.parametrize("registration", [OIDC_CLIENT, POST_CLIENT], ids=lambda r: r["id"])
async def test_authlib_code_flow_with_pkce_across_three_instances(
    fleet: Fleet, registration: dict[str, Any]
) -> None:
    client_id = registration["id"]
    method = registration.get("token_endpoint_auth_method", "client_secret_basic")
    async with instances(fleet) as (a, b, c):
        resp = await a.get("/.well-known/openid-configuration")
        assert resp.status_code == 200, resp.text
        discovery: dict[str, Any] = resp.json()
        assert discovery["issuer"] == str(a.base_url).rstrip("/") == fleet.issuer
        check_discovery(discovery)
        assert "S256" in discovery["code_challenge_methods_supported"]
        assert method in discovery["token_endpoint_auth_methods_supported"]

        token_id, phone = await enrolled_phone(fleet, c)
        sent: list[Sent] = []

        async def record(request: Any) -> None:
            sent.append(Sent.of(request.method, str(request.url), request.headers, request.content))

        async with AsyncOAuth2Client(
            client_id=client_id,
            client_secret=CLIENT_SECRET,
            token_endpoint_auth_method=method,
            scope=SCOPE,
            redirect_uri=REDIRECT_URI,
            code_challenge_method="S256",
            timeout=STEP_TIMEOUT,
            event_hooks={"request": [record]},
        ) as oauth:
            verifier = generate_token(48)
            nonce = generate_token(20)
            url, state = oauth.create_authorization_url(
                discovery["authorization_endpoint"], code_verifier=verifier, nonce=nonce
            )
            redirect, session_id = await log_in(url, token_id, page=a, socket=b, phone=phone)
            assert redirect.startswith(REDIRECT_URI + "?")
            # RFC 9207: authlib leaves the iss check of the authorization response to its user.
            assert query_of(redirect)["iss"] == discovery["issuer"]

            token = await oauth.fetch_token(
                on(c, discovery["token_endpoint"]),
                authorization_response=redirect,
                state=state,
                code_verifier=verifier,
            )
            assert await collected_on(fleet, session_id) == [2]
            assert token["token_type"] == "Bearer"
            assert token["scope"] == "openid identity:name identity:age_over_18"
            assert "refresh_token" not in token
            assert 0 < token["expires_in"] <= 3600

            claims = await id_token_claims(discovery, token, client_id, nonce)
            assert claims["nonce"] == nonce
            assert_consented_claims(dict(claims), fleet, client_id, token_id)

            info = await oauth.get(on(b, discovery["userinfo_endpoint"]))
            assert info.status_code == 200, info.text
            assert info.headers["content-type"].startswith("application/json")
            userinfo = UserInfo(info.json())
            assert userinfo == expected_userinfo(token_id)
            assert userinfo["sub"] == claims["sub"]

            # The same code again, on A: refused, and the access token it gave is revoked on
            # every instance (RFC 6749 §4.1.2).
            with pytest.raises(OAuthError) as replay:
                await oauth.fetch_token(
                    on(a, discovery["token_endpoint"]),
                    authorization_response=redirect,
                    state=state,
                    code_verifier=verifier,
                )
            assert replay.value.error == "invalid_grant"
            revoked = await oauth.get(on(b, discovery["userinfo_endpoint"]))
            assert revoked.status_code == 401
            assert 'error="invalid_token"' in revoked.headers["www-authenticate"]

        form = {"grant_type", "code", "redirect_uri", "code_verifier"}
        auth = "Basic" if method == "client_secret_basic" else None
        if method == "client_secret_post":
            form |= {"client_id", "client_secret"}
        userinfo_request = Sent("GET", on(b, discovery["userinfo_endpoint"]), "Bearer", set())
        assert sent == [
            Sent("POST", on(c, discovery["token_endpoint"]), auth, form),
            userinfo_request,
            Sent("POST", on(a, discovery["token_endpoint"]), auth, form),
            userinfo_request,
        ]


# ----------------------------------------------------------------------------- openid-client
@pytest.mark.parametrize(
    ("registration", "auth", "redirect_uri"),
    [
        (OIDC_CLIENT, "basic", REDIRECT_URI),
        (PUBLIC_CLIENT, "none", PUBLIC_CLIENT["redirect_uris"][0]),
    ],
    ids=["client_secret_basic", "public-none"],
)
async def test_openid_client_code_flow_with_pkce_across_three_instances(
    fleet: Fleet, registration: dict[str, Any], auth: str, redirect_uri: str
) -> None:
    client_id = registration["id"]
    async with instances(fleet) as (a, b, c):
        token_id, phone = await enrolled_phone(fleet, c)
        settings = {
            "issuer": fleet.issuer,
            "clientId": client_id,
            "clientSecret": CLIENT_SECRET if auth != "none" else None,
            "auth": auth,
            "redirectUri": redirect_uri,
            "scope": SCOPE,
            "route": {"/token": str(c.base_url), "/userinfo": str(b.base_url)},
        }
        async with node_client("code-flow.mjs", settings) as rp:
            url = (await rp.next_step("authorize"))["url"]
            query = query_of(url)
            assert query["code_challenge_method"] == "S256"
            assert query["client_id"] == client_id and query["nonce"] and query["state"]
            redirect, session_id = await log_in(url, token_id, page=a, socket=b, phone=phone)
            assert redirect.startswith(redirect_uri + "?")
            await rp.send(redirect)
            done = await rp.next_step("done")

        assert_token_summary(done["token"], "openid identity:name identity:age_over_18")
        claims = done["claims"]
        assert claims["nonce"] == query["nonce"]
        assert_consented_claims(claims, fleet, client_id, token_id)
        assert done["userinfo"] == expected_userinfo(token_id)
        # The same callback again: the code was spent by the first grant.
        assert done["replay"]["error"] == "invalid_grant", done["replay"]
        assert await collected_on(fleet, session_id) == [2]

        token_url, jwks_url = (
            str(c.base_url.join("/token")),
            f"{fleet.issuer}/.well-known/jwks.json",
        )
        form = {"grant_type", "code", "redirect_uri", "code_verifier"}
        if auth == "basic":
            token_request = Sent("POST", token_url, "Basic", form)
        else:
            token_request = Sent("POST", token_url, None, form | {"client_id"})
        assert [
            Sent(r["method"], r["url"], r["auth"], set(r["form"] or ())) for r in done["sent"]
        ] == [
            token_request,
            Sent("GET", jwks_url, None, set()),
            Sent("GET", str(b.base_url.join("/userinfo")), "Bearer", set()),
            token_request,
        ]


def test_openid_client_is_the_pinned_version() -> None:
    node_binary()
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/openid-client"]["version"] == openid_client_version()
