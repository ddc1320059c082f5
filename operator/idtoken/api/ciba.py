"""OpenID CIBA's backchannel authentication endpoint: ``POST /bc-authorize`` (CIBA Core §7).

The domain is :mod:`idtoken.oidc.ciba`; the poll is the token endpoint's CIBA grant
(:mod:`idtoken.api.oidc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.form import read_form
from idtoken.api.oidc import oidc_runtime
from idtoken.api.oidc_bodies import BACKCHANNEL
from idtoken.api.oidc_responses import BackchannelAuthenticationResponse
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.errors import NotFound
from idtoken.oidc.clients import presented_client


async def bc_authorize(request: Request) -> Response:
    rt = runtime(request)
    oidc = oidc_runtime(rt)
    if rt.ciba is None:  # pragma: no cover - create_app always builds it
        raise NotFound("no such endpoint")
    form = BACKCHANNEL.decode(await read_form(request))
    presented = presented_client(
        request.headers.get("authorization"), form.get("client_id"), form.get("client_secret")
    )
    address = request.client.host if request.client else "unknown"
    client = await oidc.clients.authenticate(presented, address)
    # Every member is a string; the parameters the declaration does not name are left out.
    accepted = await rt.ciba.authorize(client, cast(Mapping[str, str], form))
    answer: BackchannelAuthenticationResponse = {
        "auth_req_id": accepted.auth_req_id,
        "expires_in": accepted.expires_in,
        "interval": accepted.interval,
    }
    return json_response(answer)
