"""The answers of the OpenID Connect and CIBA endpoints, declared once (docs/oidc.md): the
hosted page's session and redirect, the token response (RFC 6749 §5.1, OpenID Connect Core
§3.1.3.3), the backchannel request's acknowledgement (CIBA Core §7.3) and the userinfo claims.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from idtoken.api.bodies import COMPACT_JWS, IsoTime, NewSessionId, Uri, WsToken
from idtoken.settings import OtpMode
from idtoken.wire.declare import STRICT
from idtoken.wire.kinds import Otp

OPEN = ConfigDict(extra="allow")


@with_config(STRICT)
class AuthorizeSessionResponse(TypedDict):
    sessionId: NewSessionId
    wsToken: WsToken
    autoPassword: Annotated[Otp, Field(description="The code the page shows.")]
    expiresAt: Annotated[IsoTime, Field(description="When the session (and its code) expires.")]
    otpMode: Annotated[OtpMode, Field(description="`typed`: the user types the code on the phone.")]


@with_config(STRICT)
class AuthorizeCompleteResponse(TypedDict):
    redirect: Annotated[
        Uri,
        Field(
            description=(
                "The client's redirect URI with `code`, `state` and `iss`, or with `error` "
                "(`access_denied`, `unmet_authentication_requirements`) and `error_description`."
            )
        ),
    ]


@with_config(STRICT)
class TokenResponse(TypedDict):
    """RFC 6749 §5.1 and OpenID Connect Core §3.1.3.3."""

    access_token: Annotated[
        str, Field(min_length=1, description="Opaque; good for `/userinfo` alone.")
    ]
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, Field(ge=0, description="Seconds the access token has left.")]
    id_token: Annotated[str, Field(pattern=COMPACT_JWS, description="ES256, `typ: JWT`.")]
    scope: Annotated[str, Field(description="`openid` and the identity scopes granted.")]


@with_config(STRICT)
class BackchannelAuthenticationResponse(TypedDict):
    auth_req_id: Annotated[str, Field(min_length=1)]
    expires_in: Annotated[int, Field(ge=1, description="Seconds until the request expires.")]
    interval: Annotated[int, Field(ge=1, description="Seconds to wait between polls.")]


@with_config(OPEN)
class UserinfoResponse(TypedDict):
    """`sub` and the consented claims, those of the ID token (standard claims and `idtoken`)."""

    sub: Annotated[str, Field(min_length=1)]


RESPONSES = (
    AuthorizeSessionResponse,
    AuthorizeCompleteResponse,
    TokenResponse,
    BackchannelAuthenticationResponse,
    UserinfoResponse,
)
