"""OpenID Connect test support: registered clients, a browser that walks the hosted page, whole
code-flow logins and the token request, several instances sharing one configuration, and what
the endpoints' answers must look like.

``HostedBrowser`` does over HTTP and the WebSocket exactly what the page's script does
(``operator/idtoken/oidc/static/authorize.js``): it reads the page's data block, starts the
session, waits for the outcome and asks where to go. Headless Chromium runs the page itself in
tests/test_oidc_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import json
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx
import websockets
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import Operator
from idtoken.app import create_app
from idtoken.client import Device
from idtoken.settings import load_settings
from support import DEFAULT_SERVICE, OperatorConfig, RedisServer, serve_in_process

CLIENT_SECRET = "s3cret-for-the-code-flow-tests-0123456789"
REDIRECT_URI = "http://127.0.0.1:9/callback"
OIDC_CLIENT: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "webapp",
    "name": "Web App",
    "client_secret_sha256": hashlib.sha256(CLIENT_SECRET.encode()).hexdigest(),
    "redirect_uris": [REDIRECT_URI, "https://app.example/cb?x=1"],
}
PUBLIC_CLIENT: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "spa",
    "name": "Single-page App",
    "redirect_uris": ["http://localhost:9/spa"],
}
_CONFIG = re.compile(r'<script type="application/json" id="login-config">(.*?)</script>', re.S)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def page_config(html: str) -> dict[str, Any]:
    match = _CONFIG.search(html)
    assert match is not None, html[:500]
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


@dataclass
class Started:
    session_id: str
    ws_token: str
    auto_password: str
    expires_at: str


class HostedBrowser:
    """The hosted login page's script, in Python."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def open(self, authorize_url: str) -> dict[str, Any]:
        resp = await self.http.get(authorize_url)
        assert resp.status_code == 200, resp.text
        return page_config(resp.text)

    async def start(self, config: dict[str, Any], token_id: str) -> Started:
        resp = await self.http.post(
            "/authorize/session", json={"handle": config["handle"], "tokenId": token_id}
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return Started(body["sessionId"], body["wsToken"], body["autoPassword"], body["expiresAt"])

    def socket_url(self, started: Started) -> str:
        base = str(self.http.base_url).replace("http://", "ws://").rstrip("/")
        return f"{base}/ws/session/{started.session_id}?token={started.ws_token}"

    async def outcome(self, started: Started) -> dict[str, Any]:
        """The socket's terminal message (after otp_ready)."""
        async with websockets.connect(self.socket_url(started), compression=None) as sock:
            while True:
                message: dict[str, Any] = json.loads(await sock.recv())
                if message["type"] != "otp_ready":
                    return message

    async def complete(self, started: Started) -> str:
        resp = await self.http.post(
            "/authorize/complete",
            json={"sessionId": started.session_id, "wsToken": started.ws_token},
        )
        assert resp.status_code == 200, resp.text
        redirect: str = resp.json()["redirect"]
        return redirect


# ----------------------------------------------------------------------------- logins
def authorize_path(**params: str | None) -> str:
    """``/authorize`` for the registered web client: ``openid`` with ``state`` and ``nonce``,
    ``params`` over them (``None`` leaves a parameter out)."""
    base: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "webapp",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": "st-1",
        "nonce": "n-1",
    }
    chosen = {k: v for k, v in {**base, **params}.items() if v is not None}
    return "/authorize?" + urlencode(chosen)


@dataclass
class CodeLogin:
    """A hosted-page login that ended at the redirect URI."""

    started: Started
    redirect: str
    query: dict[str, str]
    verifier: str | None

    @property
    def code(self) -> str:
        return self.query["code"]


async def code_login(
    http: httpx.AsyncClient,
    device: Device,
    granted: list[str],
    *,
    token_id: str,
    pkce: bool = True,
    **params: str | None,
) -> CodeLogin:
    """Open ``authorize_path(**params)`` (with a fresh S256 challenge unless ``pkce`` is
    false), start the login for ``token_id``, approve ``granted`` on ``device`` (which may talk
    to another instance) and follow the page to the redirect URI."""
    verifier, challenge = pkce_pair() if pkce else (None, None)
    pkce_params = {"code_challenge": challenge, "code_challenge_method": "S256"} if pkce else {}
    browser = HostedBrowser(http)
    config = await browser.open(authorize_path(**{**pkce_params, **params}))
    started = await browser.start(config, token_id)
    outcome = asyncio.create_task(browser.outcome(started))
    resp = await device.approve(started.session_id, started.auto_password, granted)
    assert resp.status_code == 200, resp.text
    assert await outcome == {"type": "approved"}
    redirect = await browser.complete(started)
    return CodeLogin(started, redirect, query_of(redirect), verifier)


async def redeem(
    http: httpx.AsyncClient,
    code: str,
    verifier: str | None,
    *,
    redirect_uri: str = REDIRECT_URI,
    auth: tuple[str, str] | None = ("webapp", CLIENT_SECRET),
    **form: str,
) -> httpx.Response:
    """``POST /token`` with the authorization code grant (HTTP Basic with ``auth``)."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    return await http.post(
        "/token",
        data={**data, **form},
        auth=httpx.BasicAuth(*auth) if auth else httpx.USE_CLIENT_DEFAULT,
    )


def on_instance(device: Device, http: httpx.AsyncClient) -> Device:
    """The same phone (key and enrollment) talking to another instance."""
    twin = Device(http, device_id=device.device_id, private_key=device.private_key)
    twin.enrollment = device.enrollment
    return twin


@contextlib.asynccontextmanager
async def instances(
    directory: Path, redis_url: str, count: int, **config: Any
) -> AsyncIterator[list[Operator]]:
    """``count`` operators on one configuration (one keys_dir, one operator secret) and one
    Redis, each its own app on its own uvicorn server: a load-balanced deployment."""
    cfg = OperatorConfig(directory, redis_url=redis_url, **config)
    settings = load_settings(cfg.write())
    async with contextlib.AsyncExitStack() as stack:
        ops = []
        for _ in range(count):
            app = create_app(settings)
            url = await stack.enter_async_context(serve_in_process(app))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            ops.append(Operator(cfg, settings, None, url, http, app))
        yield ops


# ----------------------------------------------------------------------------- answers
ISSUER = str(OperatorConfig.__dataclass_fields__["issuer_url"].default)  # the tests' issuer
OTHER_SECRET = "the-other-clients-secret-0123456789abcdef"
OTHER_CLIENT: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "other",
    "name": "Other App",
    "client_secret_sha256": hashlib.sha256(OTHER_SECRET.encode()).hexdigest(),
    "redirect_uris": [REDIRECT_URI],  # the same URI: only the client id tells them apart
}
Pairs = Sequence[tuple[str, str]]


def authorize_pairs(**params: str | None) -> list[tuple[str, str]]:
    """The parameters of ``authorize_path(**params)``, in order."""
    return parse_qsl(authorize_path(**params).partition("?")[2])


async def send_authorize(http: httpx.AsyncClient, method: str, params: Pairs) -> httpx.Response:
    """The authorization request as a GET query or a POSTed form (Core §3.1.2.1: both)."""
    query = urlencode(list(params))
    if method == "GET":
        return await http.get(f"/authorize?{query}")
    return await http.post(
        "/authorize", content=query, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


def error_redirect(redirect_uri: str, error: str, description: str, state: str | None) -> str:
    """Where an authorization error must send the browser, built independently of the code:
    the registered URI, its own query kept, then error, error_description, state and iss."""
    params = [("error", error), ("error_description", description)]
    if state is not None:
        params.append(("state", state))
    params.append(("iss", ISSUER))
    return redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(params)


def assert_error_page(
    resp: httpx.Response, description: str, label: object = "", status: int = 400
) -> None:
    """The hosted error page: never a redirect."""
    assert resp.status_code == status, (label, resp.status_code, resp.headers, resp.text[:300])
    assert "location" not in resp.headers, label
    assert resp.headers["content-type"].startswith("text/html"), label
    assert html.escape(description) in resp.text, (label, resp.text[:600])
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]


def assert_redirect(resp: httpx.Response, expected: str, label: object = "") -> None:
    assert resp.status_code == 303, (label, resp.status_code, resp.text[:300])
    assert resp.headers["location"] == expected, label
    assert resp.headers["cache-control"] == "no-store"
    assert resp.content == b"", label


def store_keys(redis_srv: RedisServer) -> set[str]:
    return set(redis_srv.cli("--scan").split())


def assert_refused(resp: httpx.Response, status: int, error: str, description: str) -> None:
    """A token endpoint error (RFC 6749 §5.2), with nothing issued."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.json() == {"error": error, "error_description": description}
    if error == "invalid_client":
        assert resp.headers["www-authenticate"] == 'Basic realm="idtoken"'


def assert_issued(resp: httpx.Response) -> dict[str, Any]:
    """A token response (RFC 6749 §5.1, Core §3.1.3.3); its body."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    body: dict[str, Any] = resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "id_token", "scope"}
    assert body["token_type"] == "Bearer"
    return body


async def userinfo(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})


def assert_token_refused(resp: httpx.Response, description: str) -> None:
    """``/userinfo``'s refusal of a token (RFC 6750 §3.1)."""
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": "invalid_token", "error_description": description}
    assert resp.headers["www-authenticate"] == 'Bearer realm="idtoken", error="invalid_token"'


async def id_token_claims(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """The claims of an ID token, verified with the operator's published JWKS."""
    jwks = KeySet.import_key_set((await http.get("/.well-known/jwks.json")).json())
    return dict(jwt.decode(token, jwks, algorithms=["ES256"]).claims)
