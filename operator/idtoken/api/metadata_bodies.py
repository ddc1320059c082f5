"""The documents the operator publishes, declared once: its signing keys (JWKS), the discovery
document, the pointer its bare address answers and the OpenAPI document itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field, with_config
from typing_extensions import TypedDict

from idtoken.api.bodies import OPEN, Uri
from idtoken.wire.declare import STRICT
from idtoken.wire.kinds import B64URL, Scope


@with_config(STRICT)
class Jwk(TypedDict):
    kty: Literal["EC"]
    crv: Literal["P-256"]
    x: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    y: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    kid: Annotated[str, Field(min_length=1)]
    use: Literal["sig"]
    alg: Literal["ES256"]


@with_config(STRICT)
class Jwks(TypedDict):
    keys: list[Jwk]


@with_config(OPEN)
class Discovery(TypedDict):
    """OpenID Provider metadata plus the operator's own endpoints."""

    issuer: Uri
    jwks_uri: Uri
    scopes_supported: list[Scope]
    claims_supported: list[str]
    id_token_signing_alg_values_supported: list[Literal["ES256"]]
    subject_types_supported: NotRequired[list[str]]
    auth_initiate_endpoint: Uri
    auth_verify_endpoint: Uri
    auth_reject_endpoint: Uri
    auth_pending_endpoint: Uri
    enrollment_endpoint: Uri
    device_subscription_endpoint: NotRequired[Uri]
    session_websocket_endpoint: Annotated[
        str, Field(description="`ws(s)://…/ws/session/{sessionId}`")
    ]
    push_vapid_public_key: Annotated[
        str,
        Field(pattern=B64URL, description="The VAPID `applicationServerKey` (base64url)."),
    ]
    device_signing_alg_values_supported: NotRequired[list[Literal["ES256"]]]
    otp_modes_supported: NotRequired[list[Literal["display", "typed"]]]


@with_config(STRICT)
class Pointer(TypedDict):
    """Where to go from the operator's bare address (api/root.py)."""

    service: Literal["IDToken Operator"]
    issuer: Uri
    openid_configuration: Uri
    openapi: Uri
    documentation: str


@with_config(OPEN)
class OpenApiDocument(TypedDict):
    """The OpenAPI 3.1 document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


DOCUMENTS = (Jwks, Discovery, Pointer, OpenApiDocument)
