"""The request and response bodies of the IDToken protocol, declared once (wire contract §1 and
§2); the published documents' are in :mod:`idtoken.api.metadata_bodies`, OpenID Connect's and
CIBA's in :mod:`idtoken.api.oidc_bodies` and :mod:`idtoken.api.oidc_responses`.

The endpoints validate requests with these declarations (:class:`~idtoken.wire.declare.Body`)
and build responses typed by them; the OpenAPI document's ``components.schemas`` are generated
from them (api/openapi.py). A rule that JSON Schema cannot express (a PEM that must hold a
P-256 key, a push endpoint's address policy, signatures, timestamp skew) is stated in the
member's description, with the status and code that enforce it.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypeAliasType, TypedDict

from idtoken.errors import InvalidScope
from idtoken.login import REJECT_REASONS
from idtoken.push.base import PushSubscriptionMember
from idtoken.wire.declare import STRICT, Body, Kind
from idtoken.wire.kinds import (
    CompactJws,
    Id,
    Otp,
    Scope,
    ScopeList,
    Signature,
    Timestamp,
    choice,
    scope_list_refusal,
    text,
    text_block,
)

OPEN = ConfigDict(extra="allow")
"""Response bodies that may grow members (metadata documents)."""

IsoTime = TypeAliasType(
    "IsoTime",
    Annotated[
        str,
        Field(
            pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
            json_schema_extra={"format": "date-time"},
            description="ISO 8601 UTC with a `Z`, whole seconds.",
        ),
    ],
)
Uri = Annotated[str, Field(json_schema_extra={"format": "uri"})]
COMPACT_JWS = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
NewSessionId = Annotated[str, Field(pattern=r"^sess_[A-Za-z0-9_-]{22,123}$")]
WsToken = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{22,}$",
        description="The secret for the session's WebSocket (`?token=`).",
    ),
]


# ------------------------------------------------------------------------------ requests
@with_config(STRICT)
class InitiateRequest(TypedDict):
    """A relying party starts a login for a token."""

    tokenId: Id
    serviceId: Id
    scopes: NotRequired[
        Annotated[
            ScopeList,
            Field(
                description=(
                    "Omitted, null or empty: the service's `default_scopes`. Each scope must be "
                    "known and in the service's `allowed_scopes` (400 `invalid_scope`)."
                )
            ),
            Kind(refuse=scope_list_refusal(InvalidScope)),
        ]
        | None
    ]
    nonce: NotRequired[
        Annotated[str, text(128), Field(description="Copied into the issued JWT.")] | None
    ]


@with_config(STRICT)
class EnrollRequest(TypedDict):
    """A device enrolls for the token named by its enrollment token."""

    enrollmentToken: Annotated[
        CompactJws,
        Field(description="An integration server's JWT (RS256 or ES256) or a KYC provider's JWS."),
    ]
    publicKeyPem: Annotated[
        str,
        text_block(1024),
        Field(
            description=(
                "The device's P-256 public key, SPKI PEM. Text that is not such a key (which "
                "JSON Schema cannot tell) is refused with 400 `invalid_request`."
            )
        ),
    ]
    deviceId: Id
    pushSubscription: NotRequired[PushSubscriptionMember | None]
    timestamp: Timestamp
    signature: Annotated[
        Signature,
        Field(
            description=(
                'sig("enroll|" + deviceId + "|" + timestamp + "|" + '
                "lowerhex(sha256(enrollmentToken)))"
            )
        ),
    ]


@with_config(STRICT)
class VerifyRequest(TypedDict):
    """The phone approves a pending session."""

    sessionId: Id
    tokenId: Id
    otp: Otp
    grantedScopes: Annotated[
        ScopeList,
        Field(
            description=(
                "A subset of the requested scopes (others: 400 `invalid_request`); an empty "
                "list grants none. The order is the signed message's."
            )
        ),
    ]
    timestamp: Timestamp
    credential: Annotated[CompactJws, Field(description="The credential returned by `/enroll`.")]
    signature: Annotated[
        Signature,
        Field(
            description=(
                'sig(sessionId + "|" + otp + "|" + timestamp + "|" + " ".join(grantedScopes))'
            )
        ),
    ]


@with_config(STRICT)
class RejectRequest(TypedDict):
    """The phone rejects a pending session."""

    sessionId: Id
    tokenId: Id
    timestamp: Timestamp
    reason: Annotated[
        str,
        choice(REJECT_REASONS),
        Field(
            description=(
                "`not_me` is a fraud report: every pending session of the token ends and new "
                "ones are refused (429) for `not_me_pause` seconds."
            )
        ),
    ]
    signature: Annotated[Signature, Field(description='sig(sessionId + "|reject|" + timestamp)')]


@with_config(STRICT)
class PendingRequest(TypedDict):
    """The phone asks for its token's pending sessions."""

    tokenId: Id
    timestamp: Timestamp
    signature: Annotated[Signature, Field(description='sig(tokenId + "|pending|" + timestamp)')]


@with_config(STRICT)
class SubscriptionRequest(TypedDict):
    """The phone replaces its Web Push subscription."""

    tokenId: Id
    subscription: PushSubscriptionMember
    timestamp: Timestamp
    signature: Annotated[
        Signature,
        Field(
            description=(
                'sig(tokenId + "|subscription|" + timestamp + "|" + '
                "lowerhex(sha256(subscription.endpoint)))"
            )
        ),
    ]


INITIATE = Body(InitiateRequest)
ENROLL = Body(EnrollRequest)
VERIFY = Body(VerifyRequest)
REJECT = Body(RejectRequest)
PENDING = Body(PendingRequest)
SUBSCRIPTION = Body(SubscriptionRequest)


# ------------------------------------------------------------------------------ responses
@with_config(STRICT)
class Error(TypedDict):
    """Every error body. Clients branch on `error` and the status code."""

    error: Annotated[str, Field(pattern="^[a-z][a-z0-9_]*$")]
    error_description: str


@with_config(STRICT)
class InitiateResponse(TypedDict):
    sessionId: NewSessionId
    autoPassword: Annotated[Otp, Field(description="The code the browser shows.")]
    wsToken: WsToken
    expiresAt: Annotated[IsoTime, Field(description="When the session (and its code) expires.")]
    random: Annotated[str, Field(pattern="^[0-9a-f]{16}$")]


@with_config(STRICT)
class EnrollResponse(TypedDict):
    enrolled: Literal[True]
    tokenId: Id
    deviceId: Id
    expiresAt: Annotated[IsoTime, Field(description="When the credential expires.")]
    credential: Annotated[
        str,
        Field(
            pattern=COMPACT_JWS,
            description=(
                "A JWS signed by the operator (`typ: idtoken-credential+jwt`); the app sends it "
                "with every approval."
            ),
        ),
    ]


@with_config(STRICT)
class PendingSession(TypedDict):
    sessionId: Id
    serviceId: Id
    serviceName: str
    scopes: list[Scope]
    expiresAt: IsoTime
    autoPassword: NotRequired[
        Annotated[
            Otp,
            Field(
                description=(
                    "Present when the service's `otp_mode` is `display`, and for a backchannel "
                    "request (the phone signs with it; no browser shows it)."
                )
            ),
        ]
    ]
    backchannel: NotRequired[
        Annotated[
            Literal[True],
            Field(description="A CIBA request: no browser is involved (docs/mobile-app.md)."),
        ]
    ]
    bindingMessage: NotRequired[
        Annotated[
            str,
            Field(
                description=(
                    "A CIBA request's binding message, shown instead of a code to compare and "
                    "signed with the approval."
                )
            ),
        ]
    ]
    minTrustLevel: NotRequired[
        Annotated[
            int,
            Field(
                ge=1,
                description=(
                    "The lowest trust level the request accepts (`acr_values`); a credential "
                    "below it is 403 `insufficient_trust_level`."
                ),
            ),
        ]
    ]


@with_config(STRICT)
class PendingResponse(TypedDict):
    sessions: list[PendingSession]
    push: Annotated[
        Literal["active", "dead", "none"],
        Field(
            description=(
                "The state of the device's push subscription: `dead` after a 404/410 from the "
                "push service (send a new one to `/device/subscription`)."
            )
        ),
    ]


@with_config(STRICT)
class ApprovedResponse(TypedDict):
    status: Literal["approved"]


@with_config(STRICT)
class RejectedResponse(TypedDict):
    status: Literal["rejected"]


@with_config(STRICT)
class UpdatedResponse(TypedDict):
    status: Literal["updated"]


@with_config(STRICT)
class Alive(TypedDict):
    status: Literal["ok"]


@with_config(STRICT)
class Ready(TypedDict):
    status: Literal["ready"]


@with_config(STRICT)
class NotReady(TypedDict):
    """Not ready: the store is unreachable or no signing key is loaded."""

    status: Literal["unavailable"]
    store: NotRequired[Literal["unreachable"]]
    keys: NotRequired[Literal["none"]]


REQUESTS = (
    InitiateRequest,
    EnrollRequest,
    VerifyRequest,
    RejectRequest,
    PendingRequest,
    SubscriptionRequest,
)
RESPONSES = (
    Error,
    InitiateResponse,
    EnrollResponse,
    PendingResponse,
    ApprovedResponse,
    RejectedResponse,
    UpdatedResponse,
    Alive,
    Ready,
    NotReady,
)
