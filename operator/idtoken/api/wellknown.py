"""Public metadata: the JWKS and the discovery document."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from idtoken.api.runtime import Runtime, runtime
from idtoken.oidc.authorize import PKCE_METHOD, PROMPTS, RESPONSE_MODE, RESPONSE_TYPE
from idtoken.oidc.claims import ACR_VALUES, ID_TOKEN_CLAIMS, OPENID, STANDARD_SCOPES
from idtoken.oidc.exchange import AUTHORIZATION_CODE, CIBA_GRANT
from idtoken.scopes import KNOWN_SCOPES, SUPPORTED_CLAIMS
from idtoken.settings import AUTH_METHODS, Settings

JWKS_MAX_AGE = 3600


async def jwks(request: Request) -> Response:
    keys = runtime(request).keys
    headers = {
        "Cache-Control": f"public, max-age={JWKS_MAX_AGE}",
        "ETag": keys.jwks_etag,
        "Access-Control-Allow-Origin": "*",
    }
    if keys.jwks_etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(keys.jwks_body, media_type="application/json", headers=headers)


async def openid_configuration(request: Request) -> Response:
    body = runtime(request).discovery_body
    return Response(
        body,
        media_type="application/json",
        headers={
            "Cache-Control": f"public, max-age={JWKS_MAX_AGE}",
            "Access-Control-Allow-Origin": "*",
        },
    )


def discovery_document(settings: Settings, vapid_public_key: str) -> bytes:
    base = settings.issuer
    ws_base = (
        "wss://" + base.removeprefix("https://")
        if base.startswith("https://")
        else ("ws://" + base.removeprefix("http://"))
    )
    doc: dict[str, Any] = {
        "issuer": base,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        # OpenID Connect Discovery 1.0 §3 and RFC 8414: the code flow with PKCE.
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "userinfo_endpoint": f"{base}/userinfo",
        "scopes_supported": [OPENID, *STANDARD_SCOPES, *sorted(KNOWN_SCOPES)],
        "response_types_supported": [RESPONSE_TYPE],
        "response_modes_supported": [RESPONSE_MODE],
        "grant_types_supported": [AUTHORIZATION_CODE, CIBA_GRANT],
        "code_challenge_methods_supported": [PKCE_METHOD],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "userinfo_signing_alg_values_supported": ["none"],
        "acr_values_supported": list(ACR_VALUES),
        # The ID token's own claims, then the IDToken protocol's `idtoken` object members.
        "claims_supported": list(dict.fromkeys((*ID_TOKEN_CLAIMS, *SUPPORTED_CLAIMS))),
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "require_request_uri_registration": False,
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": sorted(PROMPTS),
        "ui_locales_supported": ["en"],
        # OpenID CIBA Core 1.0 §4.
        "backchannel_authentication_endpoint": f"{base}/bc-authorize",
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_user_code_parameter_supported": False,
        "auth_initiate_endpoint": f"{base}/auth/initiate",
        "auth_verify_endpoint": f"{base}/auth/verify",
        "auth_reject_endpoint": f"{base}/auth/reject",
        "auth_pending_endpoint": f"{base}/auth/pending",
        "enrollment_endpoint": f"{base}/enroll",
        "device_subscription_endpoint": f"{base}/device/subscription",
        "session_websocket_endpoint": f"{ws_base}/ws/session/{{sessionId}}",
        "push_vapid_public_key": vapid_public_key,
        "device_signing_alg_values_supported": ["ES256"],
        "otp_modes_supported": ["display", "typed"],
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


async def serve_fast(rt: Runtime, scope: Scope, send: Send) -> bool:
    """Answer GET/HEAD of the two well-known documents straight from ASGI, without routing.

    They are the most requested and cheapest resources (every relying party's JWKS cache
    refresh); going through the router and middleware stack would triple their cost. Returns
    False when the request is not for them.
    """
    path = scope["path"]
    if path == "/.well-known/jwks.json":
        body, etag = rt.keys.jwks_body, rt.keys.jwks_etag
    elif path == "/.well-known/openid-configuration":
        body, etag = rt.discovery_body, None
    else:
        return False
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        return False
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", _CACHE_CONTROL),
        (b"access-control-allow-origin", b"*"),
    ]
    status = 200
    if etag is not None:
        headers.append((b"etag", etag.encode("ascii")))
        for name, value in scope["headers"]:
            if name == b"if-none-match" and etag in _etags(value.decode("latin-1")):
                status, body = 304, b""
                break
    if status == 200:
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
    return True


_CACHE_CONTROL = f"public, max-age={JWKS_MAX_AGE}".encode("ascii")
