"""Every HTTP operation of the API as the OpenAPI document states it: the request body each
endpoint reads (the same :class:`~idtoken.wire.declare.Body` object the endpoint validates
with), its success body and the error codes each status can carry (docs/errors.md).

The IDToken protocol's POST operations are here, the GET ones in
:mod:`idtoken.api.get_operations` (what those answer may depend on the configuration:
``/metrics``, ``/``), the OpenID Connect and CIBA ones in :mod:`idtoken.api.oidc_operations`;
:func:`idtoken.api.openapi.operations` lists them all.
"""

from __future__ import annotations

from typing import Any

from idtoken.api import bodies
from idtoken.api.body import MAX_BODY
from idtoken.api.get_operations import BEARER_CHALLENGE
from idtoken.wire.declare import Body
from idtoken.wire.operation import RETRY_AFTER, Operation, refused, reply, shared
from idtoken.wire.schema import JsonObject

RESPONSES: JsonObject = {
    "RequestTooLarge": refused(
        f"The body is over {MAX_BODY // 1024} KiB (refused while it streams in).",
        "request_too_large",
    ),
    "UnsupportedMediaType": refused(
        "The body is not `application/json` (UTF-8).", "unsupported_media_type"
    ),
    "UnsupportedFormMediaType": refused(
        "The body is not `application/x-www-form-urlencoded`.", "unsupported_media_type"
    ),
    "TooManyRequests": refused(
        "A limit was hit (see the operation); `Retry-After` says when to try again.",
        "too_many_requests",
        **{"Retry-After": RETRY_AFTER},
    ),
    "TemporarilyUnavailable": refused(
        "The store is unreachable. Nothing was written and no push sent.",
        "temporarily_unavailable",
        **{"Retry-After": RETRY_AFTER},
    ),
}
"""Responses that several operations share (``components.responses``)."""

_BAD_REQUEST = (
    "Malformed body: not JSON, not an object, an unknown or missing member, a wrong type or a "
    "value outside its format; also a rule its schema states in a description."
)
_SIGNATURE = (
    "The device signature does not verify, the timestamp is outside the allowed skew, or the "
    "device key has been replaced."
)
# What /auth/pending and /device/subscription, signed for a token, answer when refused.
_TOKEN_SIGNED: JsonObject = {
    "400": refused(_BAD_REQUEST, "invalid_request"),
    "401": refused(_SIGNATURE + " Also an unknown token.", "invalid_signature"),
    "403": refused("The token was revoked by the operator.", "token_revoked"),
}
# What /auth/verify and /auth/reject answer for a session that is unknown or no longer pending.
_SESSION_OVER: JsonObject = {
    "404": refused("No such session.", "unknown_session"),
    "409": refused("The session was already decided.", "session_not_pending"),
    "410": refused("The session has expired.", "session_expired"),
}


def post(
    path: str,
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    request: Body[Any],
    success: tuple[str, type, str],
    errors: JsonObject,
    *,
    limited: bool = False,
    security: list[JsonObject] | None = None,
    success_headers: JsonObject | None = None,
    unavailable: JsonObject | None = None,
) -> Operation:
    """A POST with a body: 413, 415 (for the body's media type) and 503 always, 429 when
    ``limited``."""
    status, body, success_description = success
    responses = {status: reply(body, success_description, **(success_headers or {})), **errors}
    responses["413"] = shared("RequestTooLarge")
    json_body = request.media_type == "application/json"
    responses["415"] = shared("UnsupportedMediaType" if json_body else "UnsupportedFormMediaType")
    if limited:
        responses["429"] = shared("TooManyRequests")
    responses["503"] = unavailable or shared("TemporarilyUnavailable")
    return Operation(
        "post",
        path,
        operation_id,
        tag,
        summary,
        responses,
        description=description,
        request=request,
        security=security,
    )


INITIATE = post(
    "/auth/initiate",
    "initiateLogin",
    "relying party",
    "Start a login for a token",
    "Creates a pending session and sends a push to the token's device (without waiting for "
    "the push service). The browser then opens the session's WebSocket with `wsToken`. A "
    "service configured with `client_secret_sha256` must authenticate with `Authorization: "
    "Bearer <secret>`; a public service needs no header.",
    bodies.INITIATE,
    ("201", bodies.InitiateResponse, "The session was created."),
    {
        "400": refused(
            _BAD_REQUEST + " `invalid_scope`: a scope is unknown or not allowed.",
            "invalid_request",
            "invalid_scope",
        ),
        "401": refused(
            "Missing or wrong client secret for a confidential service.",
            "invalid_client",
            **{"WWW-Authenticate": BEARER_CHALLENGE},
        ),
        "403": refused("The token was revoked by the operator.", "token_revoked"),
        "404": refused(
            "No such service, or no device is enrolled for the token.",
            "unknown_service",
            "unknown_token",
        ),
    },
    limited=True,
    security=[{}, {"clientSecret": []}],
)
ENROLL = post(
    "/enroll",
    "enrollDevice",
    "mobile app",
    "Enroll a device for a token",
    "Binds the device key to the token named by the enrollment token's `sub` and returns the "
    "credential the app sends with every approval. Enrolling again for the same token from "
    "the same issuer replaces the device. At most `enroll_per_ip_per_hour` (default 5) "
    "well-formed requests per client address and hour; more get 429. 503 also when a KYC "
    "provider's JWKS cannot be fetched.",
    bodies.ENROLL,
    ("201", bodies.EnrollResponse, "The device is enrolled."),
    {
        "400": refused(_BAD_REQUEST, "invalid_request"),
        "401": refused(
            "The enrollment token failed a check, or " + _SIGNATURE,
            "invalid_enrollment_token",
            "invalid_signature",
        ),
        "409": refused(
            "The enrollment token was already used, the token is enrolled through another "
            "issuer, or it was revoked.",
            "token_replayed",
            "token_conflict",
            "token_revoked",
        ),
    },
    limited=True,
)
VERIFY = post(
    "/auth/verify",
    "approveLogin",
    "mobile app",
    "Approve a pending session",
    "Approves the session and issues the JWT to the browser. Every failure on a pending "
    'session counts; the third ends it (`rejected`, "Too many attempts") and later calls get '
    "429. A correctly signed wrong code in `display` mode ends the session at once.",
    bodies.VERIFY,
    ("200", bodies.ApprovedResponse, "The session is approved."),
    {
        "400": refused(
            _BAD_REQUEST + " Also `grantedScopes` that were not requested; `invalid_otp`: the "
            "code does not match.",
            "invalid_request",
            "invalid_otp",
        ),
        "401": refused(
            _SIGNATURE + " Also a credential that is not valid or not current.",
            "invalid_signature",
        ),
        "403": refused(
            "The session or the credential belongs to another token, the token was revoked, "
            "or the credential's trust level is below what the session asked for.",
            "device_mismatch",
            "token_revoked",
            "insufficient_trust_level",
        ),
        **_SESSION_OVER,
    },
    limited=True,
)
REJECT = post(
    "/auth/reject",
    "rejectLogin",
    "mobile app",
    "Reject a pending session",
    'The browser receives `rejected` with "User rejected" or "Not me". 429 when the session '
    "already ended after too many failed attempts.",
    bodies.REJECT,
    ("200", bodies.RejectedResponse, "The session is rejected."),
    {
        "400": refused(_BAD_REQUEST, "invalid_request"),
        "401": refused(_SIGNATURE, "invalid_signature"),
        "403": refused(
            "The session belongs to another token, or the token was revoked.",
            "device_mismatch",
            "token_revoked",
        ),
        **_SESSION_OVER,
    },
    limited=True,
)
PENDING = post(
    "/auth/pending",
    "listPendingSessions",
    "mobile app",
    "The token's pending sessions",
    "The app's fallback when a push is lost. An unknown token gets the same 401 as a bad "
    "signature.",
    bodies.PENDING,
    ("200", bodies.PendingResponse, "The pending sessions."),
    _TOKEN_SIGNED,
)
SUBSCRIPTION = post(
    "/device/subscription",
    "replacePushSubscription",
    "mobile app",
    "Replace the device's Web Push subscription",
    "Signed with the device key; clears the subscription's dead flag.",
    bodies.SUBSCRIPTION,
    ("200", bodies.UpdatedResponse, "The subscription was replaced."),
    _TOKEN_SIGNED,
)

WITH_BODIES = (INITIATE, ENROLL, VERIFY, REJECT, PENDING, SUBSCRIPTION)
"""The IDToken protocol's operations that take a request body."""
