"""The GET operations as the OpenAPI document states them: metadata, probes, metrics and the
operator's bare address. What ``/metrics`` and ``/`` answer depends on the configuration.
"""

from __future__ import annotations

from idtoken.api import bodies, metadata_bodies
from idtoken.wire.operation import NO_STORE, Operation, header, refused, reply
from idtoken.wire.schema import JsonObject, ref

BEARER_CHALLENGE = header(
    {"type": "string", "pattern": "^Bearer "}, "The Bearer challenge (RFC 6750)."
)
_PUBLIC_CACHE = header({"const": "public, max-age=3600"}, "Cacheable by anyone for an hour.")
_ETAG = header({"type": "string", "pattern": '^"[^"]+"$'}, "Strong validator of the key set.")


def get(
    path: str,
    operation_id: str,
    tag: str,
    summary: str,
    responses: JsonObject,
    *,
    description: str | None = None,
    parameters: tuple[JsonObject, ...] = (),
    security: list[JsonObject] | None = None,
) -> Operation:
    return Operation(
        "get",
        path,
        operation_id,
        tag,
        summary,
        responses,
        description=description,
        parameters=parameters,
        security=security,
    )


JWKS = get(
    "/.well-known/jwks.json",
    "getJwks",
    "metadata",
    "The operator's public signing keys",
    {
        "200": reply(metadata_bodies.Jwks, "The JWKS.", cache=_PUBLIC_CACHE, ETag=_ETAG),
        "304": {
            "description": "The key set has not changed.",
            "headers": {"Cache-Control": _PUBLIC_CACHE, "ETag": _ETAG},
        },
    },
    description=(
        "Every key that may have signed an unexpired token. Conditional requests with "
        "`If-None-Match` get 304 while the key set is unchanged."
    ),
    parameters=(
        {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
    ),
)
DISCOVERY = get(
    "/.well-known/openid-configuration",
    "getOpenidConfiguration",
    "metadata",
    "Discovery document",
    {"200": reply(metadata_bodies.Discovery, "The discovery document.", cache=_PUBLIC_CACHE)},
)
OPENAPI = get(
    "/openapi.json",
    "getOpenapi",
    "metadata",
    "This document",
    {
        "200": {
            "description": "The OpenAPI 3.1 document.",
            "content": {"application/json": {"schema": ref("OpenApiDocument")}},
        }
    },
)
HEALTHZ = get(
    "/healthz",
    "healthz",
    "operations",
    "Liveness: the process answers",
    {"200": reply(bodies.Alive, "The process is alive.")},
)
READYZ = get(
    "/readyz",
    "readyz",
    "operations",
    "Readiness: the store answers and signing keys are loaded",
    {
        "200": reply(bodies.Ready, "Ready to serve."),
        "503": reply(bodies.NotReady, "Not ready: the store is unreachable or no signing key."),
    },
)


def metrics(enabled: bool) -> Operation:
    """``GET /metrics`` as this configuration serves it."""
    if not enabled:
        return get(
            "/metrics",
            "metrics",
            "operations",
            "Prometheus metrics (off)",
            {"404": refused("Metrics are not enabled.", "not_found")},
            description=(
                "This operator has no `[metrics] token`, so the endpoint does not exist: every "
                "request gets 404 `not_found`."
            ),
        )
    return get(
        "/metrics",
        "metrics",
        "operations",
        "Prometheus metrics",
        {
            "200": {
                "description": "The Prometheus text exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": refused(
                "Missing or wrong metrics token.",
                "unauthorized",
                **{"WWW-Authenticate": BEARER_CHALLENGE},
            ),
        },
        description="For holders of the configured `[metrics] token`.",
        security=[{"metricsToken": []}],
    )


def root(demo: bool) -> Operation:
    """``GET /`` (and HEAD) as this configuration serves it (api/root.py)."""
    if demo:
        location = header({"const": "/demo/"}, "The demo's login page.")
        responses: JsonObject = {
            "302": {
                "description": "The demo is on: its login page.",
                "headers": {"Location": location, "Cache-Control": NO_STORE},
            }
        }
    else:
        responses = {"200": reply(metadata_bodies.Pointer, "Where to go from here.")}
    return get(
        "/",
        "root",
        "metadata",
        "Where to go from the operator's address",
        responses,
        description="Also answers HEAD.",
    )
