"""Relying-party endpoint: POST /auth/initiate."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.bodies import INITIATE, InitiateResponse
from idtoken.api.body import read_body
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.errors import InvalidClient, UnknownService
from idtoken.ids import iso_z
from idtoken.settings import ServiceSettings


async def initiate(request: Request) -> Response:
    rt = runtime(request)
    # Contract §1: a scope that is not known is invalid_scope, malformed ones included.
    body = await read_body(request, INITIATE)
    service = rt.settings.services.get(body["serviceId"])
    if service is None:
        raise UnknownService("unknown serviceId")
    authenticate_client(service, request.headers.get("authorization"))
    # Repeated scopes are canonicalised away rather than refused.
    scopes = tuple(dict.fromkeys(body.get("scopes") or ()))
    with rt.metrics.initiate_seconds.time():
        started = await rt.login.initiate(service, body["tokenId"], scopes, body.get("nonce"))
    created: InitiateResponse = {
        "sessionId": started.session_id,
        "autoPassword": started.auto_password,
        "wsToken": started.ws_token,
        "expiresAt": iso_z(started.expires_at),
        "random": started.random,
    }
    return json_response(created, status=201)


def authenticate_client(service: ServiceSettings, authorization: str | None) -> None:
    """A confidential service proves itself with ``Authorization: Bearer <secret>``."""
    expected = service.client_secret_sha256
    if expected is None:
        return
    scheme, _, secret = (authorization or "").partition(" ")
    presented = hashlib.sha256(secret.strip().encode("utf-8")).digest()
    # Compare digests in constant time; the scheme check does not depend on the secret.
    ok = hmac.compare_digest(presented, expected)
    if scheme.lower() != "bearer" or not secret.strip() or not ok:
        raise InvalidClient(
            "client authentication failed",
            headers={"WWW-Authenticate": 'Bearer realm="idtoken", error="invalid_client"'},
        )
