"""Relying-party endpoint: POST /auth/initiate."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.bodies import INITIATE, InitiateResponse
from idtoken.api.body import read_body
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.errors import UnknownService
from idtoken.ids import iso_z


async def initiate(request: Request) -> Response:
    rt = runtime(request)
    # Contract §1: a scope that is not known is invalid_scope, malformed ones included.
    body = await read_body(request, INITIATE)
    service = rt.settings.services.get(body["serviceId"])
    if service is None:
        raise UnknownService("unknown serviceId")
    assert rt.oidc is not None  # create_app always builds it
    address = request.client.host if request.client else "unknown"
    # Failures count with the token endpoint's: it is the same client secret.
    await rt.oidc.clients.authenticate_bearer(
        service, request.headers.get("authorization"), address
    )
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
