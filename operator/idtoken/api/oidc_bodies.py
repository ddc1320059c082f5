"""The requests of the OpenID Connect and CIBA endpoints, declared once (docs/oidc.md): the
authorization request (a query string or a form), the hosted page's two JSON calls, the token,
backchannel and userinfo requests (forms, RFC 6749 §3.2, CIBA Core §7.1, RFC 6750 §2.2). Their
answers are in :mod:`idtoken.api.oidc_responses`.

OAuth parameters are declared with :data:`~idtoken.wire.declare.PARAMETERS`: each is one
string, one the declaration does not name is ignored (RFC 6749 §3.1) and one given twice is
``invalid_request`` (the form reader). Their syntax is the domain's, spelled here from the
patterns and bounds the domain modules check with (``oidc/authorize.py``, ``oidc/exchange.py``,
``oidc/ciba.py``). What depends on the registration, the store or a sealed value (client
authentication, a code's validity, PKCE, the binding message's characters, scope mapping) is
the domain's alone; the member's description says which status and code answer it.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import Field, with_config
from typing_extensions import TypedDict

from idtoken.api.form import FORM
from idtoken.errors import UnsupportedGrantType
from idtoken.oidc.authorize import (
    MAX_AGE,
    MAX_NONCE,
    MAX_STATE,
    PKCE_METHOD,
    PKCE_S256,
    PRINTABLE,
    PROMPTS,
    RESPONSE_MODE,
    RESPONSE_TYPE,
)
from idtoken.oidc.ciba import (
    B64TOKEN,
    MAX_BINDING_MESSAGE,
    MAX_NOTIFICATION_TOKEN,
    REQUESTED_EXPIRY,
    check_binding_message,
)
from idtoken.oidc.clients import FAILURE_LIMIT, FAILURE_WINDOW
from idtoken.oidc.exchange import AUTHORIZATION_CODE, CIBA_GRANT, CODE_VERIFIER, check_code_verifier
from idtoken.oidc.secret import MAX_SEALED_LENGTH
from idtoken.wire.declare import PARAMETERS, STRICT, Body, Kind, refuse_by, refuse_with
from idtoken.wire.kinds import Id, choice, json_pattern

PAGE_NOT_VALID = "this login page is not valid; start again from the site"


def _param(description: str) -> Any:
    """A parameter that is any one string (a form's empty value is an omitted one)."""
    return Field(min_length=1, description=description)


def _printable(max_length: int, description: str) -> Any:
    """1 to ``max_length`` printable ASCII characters (RFC 6749 Appendix A: VSCHAR)."""
    return Field(
        min_length=1,
        max_length=max_length,
        pattern=json_pattern(PRINTABLE),
        description=description,
    )


def _unsupported(answer: str) -> Any:
    return _param(f"Not supported: {answer}.")


_CLIENT_ID = _param(
    "The client's id for `client_secret_post` and `none` (with `client_secret_basic`, the same "
    "id as the Basic user, or left out). Client authentication is checked against the "
    "registration: an unknown client, a wrong secret or another method than the registered one "
    f"is 401 `invalid_client` (`WWW-Authenticate: Basic`); past {FAILURE_LIMIT} failures in "
    f"{FAILURE_WINDOW} s from one address, 429 `too_many_requests`."
)
_ACR_VALUES = _param(
    "Space-separated; the lowest trust level asked for among ours (`urn:idtoken:trust_level:N`) "
    "is the least the user's credential must have."
)
_CLIENT_SECRET = _param(
    "The client secret for `client_secret_post`, compared as its SHA-256 digest; sent together "
    "with an `Authorization` header it is 400 `invalid_request` (one method per request)."
)


# ------------------------------------------------------------------------------ requests
@with_config(PARAMETERS)
class AuthorizationRequest(TypedDict):
    """An authorization request (OpenID Connect Core §3.1.2.1), as the query of `GET
    /authorize` or the form of `POST /authorize`. An unknown client or a redirect URI that is
    missing or not registered gets the error page (400), never a redirect; every other error
    goes to the redirect URI (303) with `error`, `error_description`, `state` and `iss`. A
    parameter given twice is `invalid_request` (`client_id` or `redirect_uri`: the error
    page)."""

    response_type: Annotated[
        str,
        choice([RESPONSE_TYPE]),
        Field(description="Another value is `unsupported_response_type` at the redirect URI."),
    ]
    client_id: Annotated[
        Id,
        Field(description="A registered client with `redirect_uris`; another is the error page."),
    ]
    redirect_uri: Annotated[
        str, _param("Exactly one of the client's `redirect_uris`; another is the error page.")
    ]
    scope: Annotated[
        str,
        _param(
            "Space-separated; must include `openid`. `profile`, `email` and `phone` stand for "
            "the identity scopes the client is allowed (others ignored); an `identity:*` scope "
            "must be allowed. Otherwise `invalid_scope` at the redirect URI."
        ),
    ]
    state: NotRequired[Annotated[str, _printable(MAX_STATE, "Echoed exactly at the redirect URI.")]]
    nonce: NotRequired[Annotated[str, _printable(MAX_NONCE, "Copied into the ID token.")]]
    code_challenge: NotRequired[
        Annotated[
            str,
            Field(
                pattern=json_pattern(PKCE_S256),
                description=(
                    "PKCE S256 (RFC 7636); required of a public client (`invalid_request` at "
                    "the redirect URI)."
                ),
            ),
        ]
    ]
    code_challenge_method: NotRequired[
        Annotated[
            str,
            choice([PKCE_METHOD]),
            Field(description="Required with `code_challenge` (`plain` is refused)."),
        ]
    ]
    login_hint: NotRequired[
        Annotated[
            str, _param("A token ID, which the page does not ask for then; other text is ignored.")
        ]
    ]
    prompt: NotRequired[
        Annotated[
            str,
            _param(
                f"Space-separated, of {', '.join(sorted(PROMPTS))}: `none` is `login_required` "
                "(every login is a phone approval) and cannot be combined (`invalid_request`)."
            ),
        ]
    ]
    max_age: NotRequired[
        Annotated[
            str,
            Field(
                pattern=json_pattern(MAX_AGE),
                description="Seconds; always satisfied (`auth_time` is the approval).",
            ),
        ]
    ]
    acr_values: NotRequired[Annotated[str, _ACR_VALUES]]
    response_mode: NotRequired[
        Annotated[str, choice([RESPONSE_MODE]), Field(description="Another is `invalid_request`.")]
    ]
    request: NotRequired[Annotated[str, _unsupported("`request_not_supported`")]]
    request_uri: NotRequired[Annotated[str, _unsupported("`request_uri_not_supported`")]]
    registration: NotRequired[Annotated[str, _unsupported("`registration_not_supported`")]]


@with_config(STRICT)
class AuthorizeSessionRequest(TypedDict):
    """The hosted page starts the login for a token ID."""

    handle: Annotated[
        str,
        Kind(
            Field(
                min_length=1,
                max_length=MAX_SEALED_LENGTH,
                description=(
                    "The sealed authorization request of the page (its `login-config` data). "
                    "One this operator did not seal for a page, or one older than `[oidc] "
                    "request_ttl`, is 400 `invalid_request`."
                ),
            ),
            refuse=refuse_with(lambda name: PAGE_NOT_VALID),
        ),
    ]
    tokenId: Id


@with_config(STRICT)
class AuthorizeCompleteRequest(TypedDict):
    """The hosted page asks where to send the browser once the socket reported the outcome."""

    sessionId: Id
    wsToken: Annotated[
        str,
        Kind(
            Field(
                min_length=1,
                max_length=64,
                description="The session's `wsToken`; a wrong one is 404 as an unknown session.",
            ),
            refuse=refuse_with(lambda name: f"{name} is not valid"),
        ),
    ]


@with_config(PARAMETERS)
class TokenRequest(TypedDict):
    """The token request (RFC 6749 §4.1.3, CIBA Core §10.1). The client authenticates with
    HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` (`client_secret_post`)
    or `client_id` alone (`none`, a public client), whichever it is registered with."""

    grant_type: Annotated[
        str,
        choice(
            (AUTHORIZATION_CODE, CIBA_GRANT),
            refuse=refuse_with(
                lambda name: "this grant type is not supported", UnsupportedGrantType
            ),
        ),
        Field(description="Another grant type is 400 `unsupported_grant_type`."),
    ]
    code: NotRequired[
        Annotated[
            str,
            _param(
                "Required for `authorization_code`. A code this operator issued to this client, "
                "unexpired and unused; otherwise 400 `invalid_grant` (a second use also revokes "
                "the access token the first one got)."
            ),
        ]
    ]
    redirect_uri: NotRequired[
        Annotated[
            str,
            _param("The authorization request's; another is 400 `invalid_grant`, the code spent."),
        ]
    ]
    code_verifier: NotRequired[
        Annotated[
            str,
            Kind(
                Field(
                    pattern=json_pattern(CODE_VERIFIER),
                    description=(
                        "The PKCE verifier: required when the request had a `code_challenge`, "
                        "refused when it had none; one whose S256 is not the challenge is 400 "
                        "`invalid_grant` (the code is spent)."
                    ),
                ),
                refuse=refuse_by(check_code_verifier),
            ),
        ]
    ]
    auth_req_id: NotRequired[
        Annotated[
            str,
            _param(
                "Required for the CIBA grant: one `/bc-authorize` gave this client; otherwise 400 "
                "`invalid_grant`. Until the user answers 400 `authorization_pending` (`slow_down` "
                "when polled sooner than the interval), then the tokens once; `access_denied` or "
                "`expired_token` when the request ended without them."
            ),
        ]
    ]
    client_id: NotRequired[Annotated[str, _CLIENT_ID]]
    client_secret: NotRequired[Annotated[str, _CLIENT_SECRET]]


@with_config(PARAMETERS)
class BackchannelAuthenticationRequest(TypedDict):
    """A backchannel authentication request (CIBA Core §7.1) of a confidential client
    registered for CIBA (another is 400 `unauthorized_client`), authenticated as at the token
    endpoint. Exactly one hint, `login_hint` (400 `invalid_request` otherwise). An unknown,
    paused or locked token is answered like any other (the request expires); a revoked one is
    403 `access_denied`."""

    scope: Annotated[
        str,
        _param(
            "Space-separated; must include `openid`; the standard scopes stand for the identity "
            "scopes the client is allowed, an `identity:*` scope must be allowed. Otherwise 400 "
            "`invalid_scope`."
        ),
    ]
    login_hint: NotRequired[Annotated[Id, Field(description="The user's token ID.")]]
    login_hint_token: NotRequired[
        Annotated[str, _unsupported("400 `invalid_request`: name the user by `login_hint`")]
    ]
    id_token_hint: NotRequired[
        Annotated[str, _unsupported("400 `invalid_request`: name the user by `login_hint`")]
    ]
    binding_message: NotRequired[
        Annotated[
            str,
            Kind(
                Field(
                    min_length=1,
                    max_length=MAX_BINDING_MESSAGE,
                    description=(
                        "Shown on the phone and signed with the approval: letters, marks, "
                        "digits, punctuation, symbols and plain spaces, no leading or trailing "
                        "space (no control, formatting or other separator characters); "
                        "otherwise 400 `invalid_binding_message`."
                    ),
                ),
                refuse=refuse_by(check_binding_message),
            ),
        ]
    ]
    user_code: NotRequired[Annotated[str, _unsupported("400 `invalid_request`")]]
    requested_expiry: NotRequired[
        Annotated[
            str,
            Kind(
                Field(
                    pattern=json_pattern(REQUESTED_EXPIRY),
                    description=(
                        "Seconds; kept between 10 and the client's `session_ttl`, its default."
                    ),
                ),
                refuse=refuse_with(lambda name: f"{name} must be a positive integer"),
            ),
        ]
    ]
    acr_values: NotRequired[Annotated[str, _ACR_VALUES]]
    client_notification_token: NotRequired[
        Annotated[
            str,
            Kind(
                Field(
                    max_length=MAX_NOTIFICATION_TOKEN,
                    pattern=json_pattern(B64TOKEN),
                    description=(
                        "The Bearer token of the ping (RFC 6750 b64token); required in ping mode "
                        "(400 `invalid_request`)."
                    ),
                ),
                refuse=refuse_with(
                    lambda name: (
                        f"{name} must be a Bearer token of at most {MAX_NOTIFICATION_TOKEN} "
                        "characters"
                    )
                ),
            ),
        ]
    ]
    request: NotRequired[Annotated[str, _unsupported("400 `invalid_request`")]]
    request_uri: NotRequired[Annotated[str, _unsupported("400 `invalid_request`")]]
    client_id: NotRequired[Annotated[str, _CLIENT_ID]]
    client_secret: NotRequired[Annotated[str, _CLIENT_SECRET]]


@with_config(PARAMETERS)
class UserinfoRequest(TypedDict):
    """The access token in a form body (RFC 6750 §2.2), for a request without the header."""

    access_token: NotRequired[
        Annotated[str, _param("An access token from `/token`; another is 401 `invalid_token`.")]
    ]


AUTHORIZE = Body(AuthorizationRequest, media_type=FORM)
AUTHORIZE_SESSION = Body(AuthorizeSessionRequest)
AUTHORIZE_COMPLETE = Body(AuthorizeCompleteRequest)
TOKEN = Body(TokenRequest, media_type=FORM)
BACKCHANNEL = Body(BackchannelAuthenticationRequest, media_type=FORM)
USERINFO = Body(UserinfoRequest, media_type=FORM)


REQUESTS = (
    AuthorizationRequest,
    AuthorizeSessionRequest,
    AuthorizeCompleteRequest,
    TokenRequest,
    BackchannelAuthenticationRequest,
    UserinfoRequest,
)
