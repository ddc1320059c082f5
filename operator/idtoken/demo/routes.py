"""The demo pages: a relying party (``/demo/``) and a phone in the browser (``/demo/phone``).

Mounted only when the configuration says ``[demo] enabled = true`` (``idtoken-operator demo
init`` writes such a configuration; production configurations never do). Everything the pages
need is served from here: plain HTML, CSS and JavaScript, no build step and no CDN.

The backend routes play the two parties that are not the operator:

- the *relying party's backend*: ``POST /demo/api/login`` calls ``/auth/initiate`` over HTTP on
  the operator's own address with the reference :class:`~idtoken.client.RelyingParty`, and
  ``POST /demo/api/verify`` checks the ``approved`` message's ``hash`` and verifies the JWT
  against the JWKS, exactly as an integrator's server would;
- the *integration server*: ``POST /demo/api/enrollment-token`` mints an enrollment token with
  the demo issuer's private key (``[demo] issuer_private_key_file``).

The phone page does its own cryptography with WebCrypto; nothing here signs for it.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, NotRequired
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import with_config
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from typing_extensions import TypedDict

from idtoken import jose
from idtoken.api.body import read_body
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.client.relying_party import Initiation, JwksCache, RelyingParty, ResultError
from idtoken.demo.config import DEMO_ISSUER_SUFFIX
from idtoken.errors import InvalidRequest, NotFound, OperatorError, UnknownService
from idtoken.scopes import COMPOSITES, KNOWN_SCOPES, SCOPE_CLAIMS, SCOPE_LABELS
from idtoken.settings import IssuerSettings, ServiceSettings, Settings
from idtoken.urls import is_loopback_host
from idtoken.wire.declare import STRICT, Body
from idtoken.wire.kinds import Id, ScopeList, text

log = logging.getLogger("idtoken.demo")

ENROLLMENT_TOKEN_LIFETIME = 300
_HTTP_TIMEOUT = 10.0
_MAX_CACHED_ORIGINS = 8
_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_ALPHA3 = re.compile(r"\A[A-Z]{3}\Z")
_EMAIL = re.compile(r"\A[^@\s]{1,64}@[^@\s]{1,190}\Z")
_JWT = re.compile(r"\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_HEX = re.compile(r"\A[0-9a-f]{1,128}\Z")

# The identity the phone page proposes when the user does not type one.
DEFAULT_IDENTITY: dict[str, str] = {
    "givenName": "Marie",
    "familyName": "Dupont",
    "birthdate": "1990-04-12",
    "nationality": "FRA",
    "email": "marie.dupont@example.com",
}


_STATIC_TYPES = {
    "demo.css": "text/css; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "phone.js": "text/javascript; charset=utf-8",
}

# Everything comes from the operator itself: no inline script, no third party.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def demo_routes() -> list[BaseRoute]:
    """The demo's pages and JSON routes. State (the demo issuer's key, JWKS caches) is kept per
    call, i.e. per application."""
    state = _DemoState()

    async def enrollment_token(request: Request) -> Response:
        return await _enrollment_token(request, state)

    async def login(request: Request) -> Response:
        return await _login(request, state)

    async def verify(request: Request) -> Response:
        return await _verify(request, state)

    return [
        Route("/demo", _to_login_page, methods=["GET", "HEAD"]),
        Route("/demo/", _login_page, methods=["GET", "HEAD"]),
        Route("/demo/phone", _phone_page, methods=["GET", "HEAD"]),
        Route("/demo/static/{name}", _static, methods=["GET", "HEAD"]),
        Route("/demo/api/config", _config, methods=["GET"]),
        Route("/demo/api/enrollment-token", enrollment_token, methods=["POST"]),
        Route("/demo/api/login", login, methods=["POST"]),
        Route("/demo/api/verify", verify, methods=["POST"]),
    ]


# ----------------------------------------------------------------------------- state
@dataclass
class _Origin:
    """An HTTP client for one of the operator's own addresses, and the JWKS cached through it.
    Keep-alive is off so that no socket outlives a request: nothing needs closing."""

    http: httpx.AsyncClient
    jwks: JwksCache


@dataclass
class _DemoState:
    issuer_key: ec.EllipticCurvePrivateKey | None = None
    origins: dict[str, _Origin] = field(default_factory=dict)

    def signer(self, settings: Settings) -> jose.ES256Signer:
        if self.issuer_key is None:
            self.issuer_key = _load_issuer_key(settings)
        return jose.ES256Signer(self.issuer_key)

    def origin(self, base_url: str) -> _Origin:
        found = self.origins.get(base_url)
        if found is None:
            if len(self.origins) >= _MAX_CACHED_ORIGINS:
                self.origins.pop(next(iter(self.origins)))
            http = httpx.AsyncClient(
                base_url=base_url,
                timeout=_HTTP_TIMEOUT,
                limits=httpx.Limits(max_keepalive_connections=0),
                follow_redirects=False,
            )
            found = _Origin(http, JwksCache(http, "/.well-known/jwks.json"))
            self.origins[base_url] = found
        return found


def _error(code: str, status: int, description: str) -> OperatorError:
    err = OperatorError(description)
    err.code = code
    err.status = status
    return err


def _load_issuer_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    path = settings.demo.issuer_private_key_file
    if path is None:
        raise _error("demo_misconfigured", 500, "[demo] issuer_private_key_file is not configured")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        log.error("demo issuer key unusable", extra={"detail": str(exc)})
        raise _error(
            "demo_misconfigured", 500, "the demo issuer's private key cannot be read"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise _error("demo_misconfigured", 500, "the demo issuer's key must be EC P-256")
    return key


def demo_issuer(settings: Settings) -> IssuerSettings:
    """The configured enrollment issuer the demo mints for: ``<issuer>/demo/issuer``, or the
    one demo issuer of the file when ``IDTOKEN_ISSUER`` moved the operator's issuer."""
    wanted = settings.issuer + DEMO_ISSUER_SUFFIX
    candidates = [i for i in settings.enrollment_issuers if i.issuer.endswith(DEMO_ISSUER_SUFFIX)]
    for candidate in candidates:
        if candidate.issuer == wanted:
            return candidate
    if candidates:
        return candidates[0]
    raise _error(
        "demo_misconfigured",
        500,
        f"no enrollment issuer ending in {DEMO_ISSUER_SUFFIX} is configured",
    )


def _operator_base_url(request: Request) -> str:
    """The operator's own address as the browser reached it. Only hosts that are the operator
    (loopback, the configured issuer's host, the listening address) are used, so a forged
    ``Host`` header cannot make the demo call another server."""
    rt = runtime(request)
    host = request.url.hostname or ""
    allowed = {urlsplit(rt.settings.issuer).hostname or ""}
    server = request.scope.get("server")
    if server:
        allowed.add(str(server[0]))
    if not (is_loopback_host(host) or host in allowed):
        raise InvalidRequest("open the demo on the operator's issuer URL or a loopback address")
    return str(request.base_url).rstrip("/")


# ----------------------------------------------------------------------------- pages
@functools.cache
def _static_file(name: str) -> bytes:
    return resources.files("idtoken.demo").joinpath("static", name).read_bytes()


def _page(name: str) -> Response:
    return Response(
        _static_file(name), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )


async def _to_login_page(request: Request) -> Response:
    return RedirectResponse("/demo/", status_code=308)


async def _login_page(request: Request) -> Response:
    return _page("login.html")


async def _phone_page(request: Request) -> Response:
    return _page("phone.html")


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = _STATIC_TYPES.get(name)
    if media_type is None:
        raise NotFound("no such endpoint")
    return Response(_static_file(name), media_type=media_type, headers=_PAGE_HEADERS)


# ----------------------------------------------------------------------------- JSON routes
def _public_services(settings: Settings) -> list[ServiceSettings]:
    # A confidential service needs its client secret, which the demo does not have.
    return [s for s in settings.services.values() if s.is_public]


async def _config(request: Request) -> Response:
    """What the pages need: the public services, scope labels and the default identity."""
    settings = runtime(request).settings
    return json_response(
        {
            "issuer": settings.issuer,
            "services": [
                {
                    "id": s.id,
                    "name": s.name,
                    "otpMode": s.otp_mode,
                    "allowedScopes": list(s.allowed_scopes),
                    "defaultScopes": list(s.default_scopes),
                    "sessionTtl": s.session_ttl,
                }
                for s in _public_services(settings)
            ],
            "scopes": {
                scope: {
                    "label": SCOPE_LABELS.get(scope, scope),
                    "claims": list(SCOPE_CLAIMS.get(scope, ())),
                    "includes": list(COMPOSITES.get(scope, ())),
                }
                for scope in sorted(KNOWN_SCOPES)
            },
            "defaultIdentity": DEFAULT_IDENTITY,
        }
    )


# ----------------------------------------------------------------------------- bodies
@with_config(STRICT)
class _EnrollmentTokenRequest(TypedDict):
    tokenId: NotRequired[Id | None]
    givenName: NotRequired[Annotated[str, text(64)] | None]
    familyName: NotRequired[Annotated[str, text(64)] | None]
    birthdate: NotRequired[Annotated[str, text(10)] | None]
    nationality: NotRequired[Annotated[str, text(3)] | None]
    email: NotRequired[Annotated[str, text(254)] | None]


@with_config(STRICT)
class _LoginRequest(TypedDict):
    tokenId: Id
    serviceId: Id
    scopes: NotRequired[ScopeList | None]


@with_config(STRICT)
class _VerifyRequest(TypedDict):
    serviceId: Id
    sessionId: Id
    wsToken: Annotated[str, text(256)]
    jwt: Annotated[str, text(16384)]
    hash: Annotated[str, text(128)]
    random: Annotated[str, text(128)]


_ENROLLMENT_TOKEN = Body(_EnrollmentTokenRequest)
_LOGIN = Body(_LoginRequest)
_VERIFY = Body(_VerifyRequest)


async def _enrollment_token(request: Request, state: _DemoState) -> Response:
    """Mint an enrollment token as an integration server would (seed 000, ES256)."""
    rt = runtime(request)
    body = await read_body(request, _ENROLLMENT_TOKEN)
    token_id = body.get("tokenId") or "demo-" + secrets.token_hex(5)
    identity: dict[str, str] = {}
    for name, claim in (("givenName", "given_name"), ("familyName", "family_name")):
        given = body.get(name)
        if isinstance(given, str):
            identity[claim] = given.strip()
    birthdate = body.get("birthdate")
    if birthdate is not None:
        if not _DATE.match(birthdate):
            raise InvalidRequest("birthdate must be YYYY-MM-DD")
        identity["birthdate"] = birthdate
    nationality = body.get("nationality")
    if nationality is not None:
        nationality = nationality.upper()
        if not _ALPHA3.match(nationality):
            raise InvalidRequest("nationality must be an ISO 3166-1 alpha-3 code (FRA, DEU…)")
        identity["nationality"] = nationality
    email = body.get("email")
    if email is not None:
        if not _EMAIL.match(email):
            raise InvalidRequest("email is not an email address")
        identity["email"] = email
    identity = {k: v for k, v in identity.items() if v}

    issuer = demo_issuer(rt.settings)
    now = int(rt.clock.now())
    payload: dict[str, Any] = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": token_id,
        "iat": now,
        "exp": now + ENROLLMENT_TOKEN_LIFETIME,
        "jti": secrets.token_urlsafe(16),
        **identity,
    }
    token = jose.sign_compact({"typ": "JWT"}, payload, state.signer(rt.settings))
    return json_response(
        {"enrollmentToken": token, "tokenId": token_id, "issuer": issuer.issuer, "claims": payload},
        status=201,
    )


def _service(settings: Settings, service_id: str) -> ServiceSettings:
    service = settings.services.get(service_id)
    if service is None:
        raise UnknownService("unknown serviceId")
    if not service.is_public:
        raise InvalidRequest("the demo can only log in to public services (no client secret)")
    return service


def _relying_party(settings: Settings, service: ServiceSettings, origin: _Origin) -> RelyingParty:
    return RelyingParty(
        origin.http,
        service_id=service.id,
        issuer=settings.issuer,
        audience=service.audience,
        jwks=origin.jwks,
    )


async def _login(request: Request, state: _DemoState) -> Response:
    """The relying party's backend starts a login: ``/auth/initiate`` over HTTP."""
    rt = runtime(request)
    body = await read_body(request, _LOGIN)
    token_id = body["tokenId"]
    service = _service(rt.settings, body["serviceId"])
    scopes = body.get("scopes")
    rp = _relying_party(rt.settings, service, state.origin(_operator_base_url(request)))
    try:
        initiation = await rp.initiate(token_id, scopes)
    except ResultError as exc:
        raise _forwarded_error(exc) from exc
    except httpx.HTTPError as exc:
        log.warning("demo: the operator is unreachable", extra={"detail": repr(exc)})
        raise _error("operator_unreachable", 502, "the operator could not be reached") from exc
    return json_response(
        {
            "sessionId": initiation.session_id,
            "autoPassword": initiation.auto_password,
            "wsToken": initiation.ws_token,
            "expiresAt": initiation.expires_at,
            "random": initiation.random,
            "serviceId": service.id,
            "serviceName": service.name,
            "otpMode": service.otp_mode,
            "scopes": list(scopes or service.default_scopes),
        },
        status=201,
    )


def _forwarded_error(exc: ResultError) -> OperatorError:
    """The operator's own error for a refused initiate (its body is contract-shaped)."""
    status_text, _, body = exc.detail.partition(" ")
    try:
        data = json.loads(body)
        status = int(status_text)
        code, description = str(data["error"]), str(data["error_description"])
    except (ValueError, KeyError, TypeError):
        return _error("initiate_failed", 502, "the operator refused the login")
    if not 400 <= status < 600:
        status = 502
    return _error(code, status, description)


async def _verify(request: Request, state: _DemoState) -> Response:
    """The relying party's backend checks an ``approved`` message the page received."""
    rt = runtime(request)
    body = await read_body(request, _VERIFY)
    service = _service(rt.settings, body["serviceId"])
    session_id = body["sessionId"]
    ws_token, jwt, digest, random = body["wsToken"], body["jwt"], body["hash"], body["random"]
    if not _JWT.match(jwt):
        raise InvalidRequest("jwt must be a compact JWS")
    if not (_HEX.match(digest) and _HEX.match(random)):
        raise InvalidRequest("hash and random must be lowercase hex")

    initiation = Initiation(
        session_id=session_id, auto_password="", ws_token=ws_token, expires_at="", random=random
    )
    if not RelyingParty.hash_ok(initiation, {"random": random, "jwt": jwt, "hash": digest}):
        raise _error("bad_hash", 400, "the result's hash does not match: it was not for this page")
    rp = _relying_party(rt.settings, service, state.origin(_operator_base_url(request)))
    try:
        claims = await rp.verify_jwt(jwt, session_id=session_id)
    except ResultError as exc:
        raise _error("invalid_jwt", 401, f"the JWT does not verify ({exc.detail})") from exc
    except httpx.HTTPError as exc:
        log.warning("demo: the JWKS could not be fetched", extra={"detail": repr(exc)})
        raise _error(
            "operator_unreachable", 502, "the operator's JWKS could not be fetched"
        ) from exc
    header = json.loads(_b64url_decode(jwt.split(".", 1)[0]))
    identity = claims.get("idtoken")
    identity = dict(identity) if isinstance(identity, dict) else {}
    return json_response(
        {
            "verified": True,
            "jwksUri": _origin_url(rp) + "/.well-known/jwks.json",
            "header": header,
            "payload": claims,
            "claims": identity,
            "trustLevel": identity.get("trustLevel"),
            "scope": claims.get("scope", ""),
        }
    )


def _origin_url(rp: RelyingParty) -> str:
    return str(rp.http.base_url).rstrip("/")


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
