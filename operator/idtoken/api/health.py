"""Probes: /healthz (the process answers) and /readyz (the store answers, keys are loaded).

Both are cheap and unauthenticated, and reveal nothing but up/down.
"""

from __future__ import annotations

import asyncio
import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.bodies import Alive, NotReady, Ready
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.errors import NotFound, Unauthorized
from idtoken.store.base import StoreUnavailable


async def metrics(request: Request) -> Response:
    """Prometheus metrics, for holders of the configured ``[metrics] token`` only."""
    rt = runtime(request)
    expected = rt.settings.metrics.token
    if expected is None:
        raise NotFound("no such endpoint")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    ok = hmac.compare_digest(presented.strip().encode(), expected.encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized(
            "a valid metrics token is required",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    alive: Alive = {"status": "ok"}
    return json_response(alive)


async def readyz(request: Request) -> Response:
    rt = runtime(request)
    not_ready: NotReady
    try:
        await asyncio.wait_for(rt.store.ping(), timeout=1.0)
    except (StoreUnavailable, TimeoutError):
        not_ready = {"status": "unavailable", "store": "unreachable"}
        return json_response(not_ready, status=503)
    if not rt.keys.kids:
        not_ready = {"status": "unavailable", "keys": "none"}
        return json_response(not_ready, status=503)
    ready: Ready = {"status": "ready"}
    return json_response(ready)
