"""The authorization request (OpenID Connect Core §3.1.2, RFC 6749 §4.1.1, RFC 7636, RFC 9700),
checked before any work is done. Framework-free: it reads a list of query parameters.

Two kinds of failure, as RFC 6749 §4.1.2.1 requires: when the client or its redirect URI
cannot be trusted, the user sees an error page and is **never** redirected
(:class:`UntrustedRedirect`); every other error goes back to the client's redirect URI with
``error``, ``error_description``, ``state`` and ``iss`` (:class:`RedirectableError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from idtoken.ids import ID_PATTERN
from idtoken.oidc.claims import ScopeRequestError, identity_scopes, min_trust_level
from idtoken.settings import ServiceSettings

# The parameters' syntax: the OpenAPI document spells it from these (api/oidc_bodies.py).
MAX_QUERY = 8192
MAX_STATE = 1024
MAX_NONCE = 255
RESPONSE_TYPE = "code"
RESPONSE_MODE = "query"
PKCE_METHOD = "S256"
PKCE_S256 = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
PRINTABLE = re.compile(r"\A[\x20-\x7e]*\Z")
MAX_AGE = re.compile(r"\A[0-9]{1,10}\Z")
PROMPTS = frozenset({"none", "login", "consent", "select_account"})


class UntrustedRedirect(Exception):
    """Unknown client, or a redirect URI that is missing or not registered: an error page."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class RedirectableError(Exception):
    """An error the client learns at its redirect URI."""

    def __init__(self, code: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request: what the session and the code are bound to."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]  # identity scopes, after mapping the standard ones
    state: str | None
    nonce: str | None
    code_challenge: str | None  # S256 only
    min_trust_level: int
    login_hint: str | None
    max_age: int | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AuthorizationRequest:
        data = json.loads(text)
        data["scopes"] = tuple(data["scopes"])
        return cls(**data)


def parse_authorization_request(
    pairs: Sequence[tuple[str, str]], services: Mapping[str, ServiceSettings]
) -> tuple[AuthorizationRequest, ServiceSettings]:
    """Check an authorization request; raises :class:`UntrustedRedirect` or
    :class:`RedirectableError`."""
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name in params:
            repeated.add(name)
        params[name] = value
    # Who to talk to first: nothing may go to a redirect URI before it is known to be the
    # client's own.
    if "client_id" in repeated or "redirect_uri" in repeated:
        raise UntrustedRedirect("client_id and redirect_uri must each be given once")
    client_id = params.get("client_id", "")
    service = services.get(client_id) if ID_PATTERN.match(client_id) else None
    if service is None:
        raise UntrustedRedirect("unknown client_id")
    if not service.redirect_uris:
        raise UntrustedRedirect("this client is not registered for the authorization code flow")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None or redirect_uri not in service.redirect_uris:
        raise UntrustedRedirect("redirect_uri is missing or not registered for this client")

    state = params.get("state")
    # RFC 6749 Appendix A.5: state = 1*VSCHAR.
    state_ok = "state" not in repeated and (
        state is None or (len(state) <= MAX_STATE and PRINTABLE.match(state) is not None)
    )

    def fail(code: str, description: str) -> RedirectableError:
        return RedirectableError(code, description, redirect_uri, state if state_ok else None)

    if not state_ok:
        raise fail(
            "invalid_request",
            f"state must be given once, at most {MAX_STATE} printable ASCII characters",
        )
    if repeated:
        raise fail(
            "invalid_request", f"parameters given more than once: {', '.join(sorted(repeated))}"
        )
    if "request" in params:
        raise fail("request_not_supported", "request objects are not supported")
    if "request_uri" in params:
        raise fail("request_uri_not_supported", "request_uri is not supported")
    if "registration" in params:
        raise fail("registration_not_supported", "the registration parameter is not supported")
    response_type = params.get("response_type")
    if not response_type:
        raise fail("invalid_request", "response_type is required")
    if response_type != RESPONSE_TYPE:
        raise fail("unsupported_response_type", "only response_type=code is supported")
    if params.get("response_mode", RESPONSE_MODE) != RESPONSE_MODE:
        raise fail("invalid_request", "only response_mode=query is supported")
    try:
        scopes = identity_scopes(params.get("scope", ""), service.allowed_scopes)
    except ScopeRequestError as exc:
        raise fail("invalid_scope", str(exc)) from None

    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            raise fail("invalid_request", "code_challenge_method without code_challenge")
        if service.token_endpoint_auth_method == "none":  # noqa: S105 - a method's name
            raise fail("invalid_request", "a public client must use PKCE (code_challenge, S256)")
    else:
        if method != PKCE_METHOD:
            raise fail("invalid_request", "code_challenge_method must be S256")
        if not PKCE_S256.match(challenge):
            raise fail("invalid_request", "code_challenge must be 43 base64url characters")

    nonce = params.get("nonce")
    if nonce is not None and not (0 < len(nonce) <= MAX_NONCE and PRINTABLE.match(nonce)):
        raise fail("invalid_request", f"nonce must be 1 to {MAX_NONCE} printable characters")

    prompts = set(params.get("prompt", "").split())
    if "none" in prompts and len(prompts) > 1:
        raise fail("invalid_request", "prompt=none cannot be combined with other values")
    if "none" in prompts:
        # There is no login session at the operator: every login is a new phone approval.
        raise fail("login_required", "the user must approve on their phone")

    max_age = None
    if "max_age" in params:
        text = params["max_age"]
        if not MAX_AGE.match(text):
            raise fail("invalid_request", "max_age must be a non-negative integer")
        max_age = int(text)

    hint = params.get("login_hint")
    return (
        AuthorizationRequest(
            client_id=service.id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            min_trust_level=min_trust_level(params.get("acr_values", "")),
            # A hint that cannot be a tokenId is ignored: the page asks for one.
            login_hint=hint if hint is not None and ID_PATTERN.match(hint) else None,
            max_age=max_age,
        ),
        service,
    )


def redirect_to(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """``redirect_uri`` with ``params`` added to its query (the registered query kept, as
    RFC 6749 §3.1.2 requires); ``None`` values are left out."""
    parts = urlsplit(redirect_uri)
    added = urlencode([(k, v) for k, v in params.items() if v is not None])
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit(parts._replace(query=query))
