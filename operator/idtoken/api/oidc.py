"""OpenID Connect endpoints: ``/authorize`` and its hosted page, ``/token``, ``/userinfo``.

The domain lives in :mod:`idtoken.oidc`; this module reads requests and shapes answers. Errors
are the contract's JSON bodies, which are also RFC 6749 §5.2's (``error``,
``error_description``), except where OpenID Connect says otherwise: an authorization request
from an unknown client or to an unregistered redirect URI gets an error *page*, other
authorization errors go back to the client's redirect URI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from idtoken.api.body import read_body
from idtoken.api.form import parse_pairs, read_form, read_form_pairs
from idtoken.api.oidc_bodies import AUTHORIZE_COMPLETE, AUTHORIZE_SESSION, TOKEN, USERINFO
from idtoken.api.oidc_responses import AuthorizeCompleteResponse, AuthorizeSessionResponse
from idtoken.api.responses import error_response, json_response
from idtoken.api.runtime import Runtime, runtime
from idtoken.errors import (
    InvalidRequest,
    InvalidToken,
    NotFound,
    OperatorError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from idtoken.ids import iso_z
from idtoken.oidc.authorize import (
    MAX_QUERY,
    RedirectableError,
    UntrustedRedirect,
    parse_authorization_request,
    redirect_to,
)
from idtoken.oidc.clients import presented_client
from idtoken.oidc.exchange import AUTHORIZATION_CODE, CIBA_GRANT
from idtoken.oidc.page import STATIC_TYPES, error_page, login_page, security_headers, static_asset
from idtoken.oidc.runtime import OidcRuntime

_TOKEN_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CORS = {"Access-Control-Allow-Origin": "*"}
_PREFLIGHT = {
    **_CORS,
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def oidc_runtime(rt: Runtime) -> OidcRuntime:
    if rt.oidc is None:  # pragma: no cover - create_app always builds it
        raise NotFound("no such endpoint")
    rt.oidc.require_secret()
    return rt.oidc


def _ws_origin(request: Request) -> str:
    return f"{'wss' if request.url.scheme == 'https' else 'ws'}://{request.url.netloc}"


def _page(
    request: Request, html: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    headers = {**security_headers(_ws_origin(request)), **(headers or {})}
    return HTMLResponse(html, status_code=status, headers=headers)


# ------------------------------------------------------------------------- /authorize
async def authorize(request: Request) -> Response:
    rt = runtime(request)
    try:
        oidc = oidc_runtime(rt)
    except TemporarilyUnavailable as exc:
        return _page(request, error_page(exc.description), 503, exc.headers)
    if request.method == "POST":
        # As for a query: the page, never JSON, and repeats left to the request's checks.
        try:
            pairs = await read_form_pairs(request)
        except OperatorError as exc:
            return _page(request, error_page(exc.description), exc.status)
    else:
        raw = request.scope.get("query_string", b"")
        if len(raw) > MAX_QUERY:
            return _page(request, error_page("the login request is too large"), 400)
        try:
            pairs = parse_pairs(raw.decode("utf-8"))
        except (UnicodeDecodeError, InvalidRequest):
            return _page(request, error_page("the login request is not valid"), 400)
    try:
        checked, service = parse_authorization_request(pairs, rt.settings.services)
    except UntrustedRedirect as exc:
        return _page(request, error_page(exc.description), 400)
    except RedirectableError as exc:
        target = redirect_to(
            exc.redirect_uri,
            {
                "error": exc.code,
                "error_description": exc.description,
                "state": exc.state,
                "iss": rt.settings.issuer,
            },
        )
        return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    html = login_page(
        client_name=service.name,
        scopes=checked.scopes,
        handle=oidc.hosted.handle(checked),
        otp_mode=service.otp_mode,
        login_hint=checked.login_hint,
    )
    return _page(request, html)


async def authorize_static(request: Request) -> Response:
    name = request.path_params["name"]
    data = static_asset(name)
    if data is None:
        raise NotFound("no such file")
    return Response(
        data,
        media_type=STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


async def authorize_session(request: Request) -> Response:
    """The hosted page starts the login for a tokenId."""
    oidc = oidc_runtime(runtime(request))
    body = await read_body(request, AUTHORIZE_SESSION)
    started = await oidc.hosted.start(body["handle"], body["tokenId"])
    s = started.initiated
    created: AuthorizeSessionResponse = {
        "sessionId": s.session_id,
        "wsToken": s.ws_token,
        "autoPassword": s.auto_password,
        "expiresAt": iso_z(s.expires_at),
        "otpMode": started.service.otp_mode,
    }
    return json_response(created, status=201)


async def authorize_complete(request: Request) -> Response:
    """Where the hosted page sends the browser once the socket reported the outcome."""
    oidc = oidc_runtime(runtime(request))
    body = await read_body(request, AUTHORIZE_COMPLETE)
    outcome: AuthorizeCompleteResponse = {
        "redirect": await oidc.hosted.complete(body["sessionId"], body["wsToken"])
    }
    return json_response(outcome)


# ------------------------------------------------------------------------- /token
async def token(request: Request) -> Response:
    rt = runtime(request)
    oidc = oidc_runtime(rt)
    form = TOKEN.decode(await read_form(request))
    presented = presented_client(
        request.headers.get("authorization"), form.get("client_id"), form.get("client_secret")
    )
    address = request.client.host if request.client else "unknown"
    client = await oidc.clients.authenticate(presented, address)
    grant_type = form["grant_type"]
    if grant_type == AUTHORIZATION_CODE:
        body = await oidc.exchange.authorization_code(
            client, form.get("code"), form.get("redirect_uri"), form.get("code_verifier")
        )
    elif grant_type == CIBA_GRANT and rt.ciba is not None:
        body = await rt.ciba.poll(client, form.get("auth_req_id"))
    else:
        raise UnsupportedGrantType("this grant type is not supported")
    return json_response(body, headers={**_TOKEN_HEADERS, **_CORS})


# ------------------------------------------------------------------------- /userinfo
async def userinfo(request: Request) -> Response:
    oidc = oidc_runtime(runtime(request))
    scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
    access_token = value.strip() if scheme.lower() == "bearer" else ""
    if not access_token and request.method == "POST" and "content-type" in request.headers:
        form = USERINFO.decode(await read_form(request))  # RFC 6750 §2.2
        access_token = form.get("access_token", "")
    if not access_token:
        return error_response(_challenge(MissingToken("a Bearer access token is required")))
    try:
        claims = await oidc.exchange.userinfo(access_token)
    except InvalidToken as exc:
        raise _challenge(exc) from None
    return json_response(claims, headers=_CORS)


class MissingToken(OperatorError):
    code, status = "invalid_request", 401


def _challenge(error: OperatorError) -> OperatorError:
    """RFC 6750 §3: the Bearer challenge, with the error code once a token was presented."""
    challenge = 'Bearer realm="idtoken"'
    if isinstance(error, InvalidToken):
        challenge += ', error="invalid_token"'
    error.headers.update({"WWW-Authenticate": challenge, **_CORS})
    return error


Endpoint = Callable[[Request], Awaitable[Response]]


def with_cors(endpoint: Endpoint) -> Endpoint:
    """Errors of an endpoint that browsers call cross-origin (public clients) carry the CORS
    header too, so that the page can read them."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except OperatorError as exc:
            exc.headers.update(_CORS)
            raise

    wrapped.__name__ = endpoint.__name__
    wrapped.__doc__ = endpoint.__doc__
    return wrapped


async def preflight(request: Request) -> Response:
    return Response(status_code=204, headers=_PREFLIGHT)
