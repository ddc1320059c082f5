"""OpenID Connect test support: a registered client, and a browser that walks the hosted page.

``HostedBrowser`` does over HTTP and the WebSocket exactly what the page's script does
(``operator/idtoken/oidc/static/authorize.js``): it reads the page's data block, starts the
session, waits for the outcome and asks where to go. Headless Chromium runs the page itself in
tests/test_oidc_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import websockets

from support import DEFAULT_SERVICE

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
