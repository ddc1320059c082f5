"""The OpenID Connect and CIBA operations as the OpenAPI document states them (docs/oidc.md,
docs/errors.md): the authorization endpoint and its hosted page, the token endpoint, userinfo
and the backchannel authentication endpoint. Each names the declaration its endpoint reads
(:mod:`idtoken.api.oidc_bodies`); ``GET /authorize``'s query parameters are generated from the
same declaration as ``POST /authorize``'s form.
"""

from __future__ import annotations

from typing import Any

from idtoken.api import oidc_bodies as bodies
from idtoken.api import oidc_responses as answers
from idtoken.api.body import MAX_BODY
from idtoken.api.get_operations import BEARER_CHALLENGE
from idtoken.api.operations import post
from idtoken.oidc.authorize import MAX_QUERY
from idtoken.oidc.page import STATIC_TYPES
from idtoken.wire.declare import Body
from idtoken.wire.operation import (
    NO_STORE,
    RETRY_AFTER,
    Operation,
    header,
    page,
    refused,
    reply,
    shared,
)
from idtoken.wire.schema import JsonObject

OIDC = "openid connect"
CIBA = "ciba"
TAGS = [
    {
        "name": OIDC,
        "description": "The OpenID Provider: the code flow with its hosted login page, the "
        "token endpoint and userinfo (docs/oidc.md).",
    },
    {"name": CIBA, "description": "Client-Initiated Backchannel Authentication (poll and ping)."},
]

_BASIC_CHALLENGE = header(
    {"type": "string", "pattern": "^Basic "},
    'The Basic challenge (RFC 7617): `Basic realm="idtoken"`.',
)
_ANY_ORIGIN = header(
    {"const": "*"}, "Readable cross-origin (browser-based public clients), without credentials."
)
_PAGE_POLICY = header(
    {"type": "string", "pattern": "frame-ancestors 'none'"},
    "The page's own script, style and socket only; never in a frame.",
)
_UNAVAILABLE = refused(
    "The store is unreachable, or this instance's operator secret differs from the other "
    "instances' (docs/oidc.md, the operator secret).",
    "temporarily_unavailable",
    **{"Retry-After": RETRY_AFTER},
)
_INVALID_CLIENT = refused(
    "Client authentication failed: no credentials, an unknown client, a wrong secret, or "
    "another method than the registered one.",
    "invalid_client",
    **{"WWW-Authenticate": _BASIC_CHALLENGE},
)
_AUTHENTICATED: list[JsonObject] = [{"clientBasic": []}, {}]  # or client_id in the form


def _authorize(method: str, request: Body[Any] | None) -> Operation:
    """``/authorize`` by GET (a query) or POST (a form): the page, or where the client learns
    of an error."""
    how = "query" if request is None else "form"
    invalid = "not UTF-8, " + (
        f"over {MAX_QUERY} bytes" if request is None else "with control characters"
    )
    responses: JsonObject = {
        "200": page(
            "The hosted login page: it asks for the token ID (unless `login_hint` gives it), "
            "lists what the client asks for, starts the login and waits for the phone.",
            **{"Content-Security-Policy": _PAGE_POLICY},
        ),
        "303": {
            "description": "An error the client learns at its redirect URI (RFC 6749 "
            "§4.1.2.1): `error`, `error_description`, `state` and `iss`.",
            "headers": {
                "Location": header(
                    {"type": "string", "format": "uri"},
                    "The client's registered redirect URI, with the error.",
                ),
                "Cache-Control": NO_STORE,
            },
        },
        "400": page(
            "The error page, never a redirect: an unknown client, a redirect URI that is "
            f"missing or not registered, or a {how} that is not valid (a `client_id` or "
            f"`redirect_uri` given twice, {invalid}).",
            **{"Content-Security-Policy": _PAGE_POLICY},
        ),
        "503": page(
            "This instance's operator secret differs from the other instances'.",
            **{"Retry-After": RETRY_AFTER},
        ),
    }
    if request is not None:
        responses["413"] = page(f"The form is over {MAX_BODY // 1024} KiB.")
        responses["415"] = page("The body is not `application/x-www-form-urlencoded`.")
    return Operation(
        method,
        "/authorize",
        f"authorize{method.capitalize()}",
        OIDC,
        f"The authorization endpoint ({how})",
        responses,
        description="OpenID Connect Core §3.1.2: `response_type=code` with PKCE. Every answer "
        "is a page or a redirect, never JSON.",
        request=request,
        query=bodies.AUTHORIZE if request is None else None,
    )


AUTHORIZE_GET = _authorize("get", None)
AUTHORIZE_POST = _authorize("post", bodies.AUTHORIZE)


_PAGE_CALL = "Called by the hosted page's own script; clients never call it."
AUTHORIZE_SESSION = post(
    "/authorize/session",
    "startHostedLogin",
    OIDC,
    "The hosted page starts the login",
    _PAGE_CALL,
    bodies.AUTHORIZE_SESSION,
    ("201", answers.AuthorizeSessionResponse, "The session was created; the page shows its code."),
    {
        "400": refused(
            "Malformed body, or a handle that is not valid or has expired; `invalid_scope`: "
            "the client may no longer have a scope it asked for.",
            "invalid_request",
            "invalid_scope",
        ),
        "403": refused("The token was revoked by the operator.", "token_revoked"),
        "404": refused(
            "No device is enrolled for the token, or the client is no longer registered.",
            "unknown_token",
            "unknown_service",
        ),
    },
    limited=True,
    unavailable=_UNAVAILABLE,
)
AUTHORIZE_COMPLETE = post(
    "/authorize/complete",
    "completeHostedLogin",
    OIDC,
    "Where the hosted page sends the browser",
    _PAGE_CALL,
    bodies.AUTHORIZE_COMPLETE,
    ("200", answers.AuthorizeCompleteResponse, "The redirect, with the code or the error."),
    {
        "400": refused("Malformed body.", "invalid_request"),
        "404": refused(
            "No such login of the hosted page, or a wrong `wsToken`.", "invalid_request"
        ),
        "409": refused("The login is still waiting for the phone.", "authorization_pending"),
    },
    unavailable=_UNAVAILABLE,
)
AUTHORIZE_STATIC = Operation(
    "get",
    "/authorize/static/{name}",
    "getHostedPageAsset",
    OIDC,
    "The hosted page's script, style and icon",
    {
        "200": {
            "description": "The file.",
            "headers": {
                "Cache-Control": header(
                    {"const": "public, max-age=300"}, "Cacheable for five minutes."
                )
            },
            "content": {
                media.partition(";")[0]: {"schema": {"type": "string"}}
                for media in sorted(set(STATIC_TYPES.values()))
            },
        },
        "404": refused("No such file.", "not_found"),
    },
    parameters=(
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"enum": sorted(STATIC_TYPES)},
        },
    ),
)


TOKEN = post(
    "/token",
    "token",
    OIDC,
    "The token endpoint",
    "The authorization code grant (with PKCE) and the CIBA grant. The form is read before "
    "the client is authenticated: a malformed one is 400 whoever sends it. 429 past the "
    "failed client authentications the form's `client_id` describes.",
    bodies.TOKEN,
    ("200", answers.TokenResponse, "The tokens, handed out once."),
    {
        "400": refused(
            "Malformed form (a parameter given twice, or outside its format); `invalid_grant`: "
            "the code or `auth_req_id` is not valid, expired, another client's or used, or the "
            "`redirect_uri` or `code_verifier` does not match; `unauthorized_client`: the "
            "client is not registered for CIBA; the CIBA states (`authorization_pending`, "
            "`slow_down`, `access_denied`, `expired_token`).",
            "invalid_request",
            "invalid_grant",
            "unsupported_grant_type",
            "unauthorized_client",
            "authorization_pending",
            "slow_down",
            "access_denied",
            "expired_token",
        ),
        "401": _INVALID_CLIENT,
    },
    limited=True,
    security=_AUTHENTICATED,
    success_headers={
        "Pragma": header({"const": "no-cache"}),
        "Access-Control-Allow-Origin": _ANY_ORIGIN,
    },
    unavailable=_UNAVAILABLE,
)
BC_AUTHORIZE = post(
    "/bc-authorize",
    "backchannelAuthentication",
    CIBA,
    "Ask a user to log in on their phone, with no browser",
    "CIBA Core §7: the push, limits and signed consent of every login; the client polls the "
    "token endpoint (poll mode) or is notified (ping mode). 429 also for the push-fatigue "
    "limits of the user's token.",
    bodies.BACKCHANNEL,
    ("200", answers.BackchannelAuthenticationResponse, "The request was accepted."),
    {
        "400": refused(
            "Malformed form or hints, an unsupported parameter; `invalid_scope`, "
            "`invalid_binding_message`, `unauthorized_client` as the members say.",
            "invalid_request",
            "invalid_scope",
            "invalid_binding_message",
            "unauthorized_client",
        ),
        "401": _INVALID_CLIENT,
        "403": refused("The user's token is revoked.", "access_denied"),
    },
    limited=True,
    security=_AUTHENTICATED,
    unavailable=_UNAVAILABLE,
)


def _userinfo(method: str) -> Operation:
    responses: JsonObject = {
        "200": reply(
            answers.UserinfoResponse,
            "The consented claims.",
            **{"Access-Control-Allow-Origin": _ANY_ORIGIN},
        ),
        "401": refused(
            "`invalid_token`: the access token is not valid, expired or revoked; "
            "`invalid_request`: no access token.",
            "invalid_token",
            "invalid_request",
            **{"WWW-Authenticate": BEARER_CHALLENGE},
        ),
        "503": _UNAVAILABLE,
    }
    request = None
    if method == "post":
        request = bodies.USERINFO
        responses["400"] = refused("Malformed form.", "invalid_request")
        responses["413"] = shared("RequestTooLarge")
        responses["415"] = shared("UnsupportedFormMediaType")
    return Operation(
        method,
        "/userinfo",
        f"userinfo{method.capitalize()}",
        OIDC,
        "The claims of an access token",
        responses,
        description="OpenID Connect Core §5.3, with `Authorization: Bearer` (RFC 6750)"
        + (" or the form's `access_token`." if method == "post" else "."),
        request=request,
        request_required=False,
        security=[{"accessToken": []}, *([{}] if method == "post" else [])],
    )


USERINFO_GET = _userinfo("get")
USERINFO_POST = _userinfo("post")


def _preflight(path: str, operation_id: str) -> Operation:
    def allowed(value: str) -> JsonObject:
        return header({"type": "string", "const": value})

    return Operation(
        "options",
        path,
        operation_id,
        OIDC,
        "CORS preflight",
        {
            "204": {
                "description": "Cross-origin `GET` and `POST` with `Authorization` allowed.",
                "headers": {
                    "Access-Control-Allow-Origin": _ANY_ORIGIN,
                    "Access-Control-Allow-Methods": allowed("GET, POST"),
                    "Access-Control-Allow-Headers": allowed("Authorization, Content-Type"),
                    "Access-Control-Max-Age": allowed("600"),
                },
            }
        },
    )


TOKEN_PREFLIGHT = _preflight("/token", "tokenPreflight")
USERINFO_PREFLIGHT = _preflight("/userinfo", "userinfoPreflight")

OPERATIONS = (
    AUTHORIZE_GET,
    AUTHORIZE_POST,
    AUTHORIZE_SESSION,
    AUTHORIZE_COMPLETE,
    AUTHORIZE_STATIC,
    TOKEN,
    TOKEN_PREFLIGHT,
    USERINFO_GET,
    USERINFO_POST,
    USERINFO_PREFLIGHT,
    BC_AUTHORIZE,
)
