"""The wire contract as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

The document is a plain dict built from the settings (its ``servers`` entry is the issuer) and
serialised once per application; requests get the precomputed bytes. Request schemas carry the
exact rules of :mod:`idtoken.api.body` (patterns, lengths, ``additionalProperties: false``), so
data a generator believes valid passes the operator's own validation. Error responses name the
codes each endpoint can return for each status (docs/errors.md). The WebSocket, which OpenAPI
cannot model, is described in the document's ``info.description``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

import idtoken
from idtoken.api.body import MAX_BODY
from idtoken.api.runtime import runtime
from idtoken.push.base import MAX_ENDPOINT_LENGTH
from idtoken.settings import Settings

JsonObject = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
_MAX_TIMESTAMP = 2**53 - 1  # api/body.py accepts 0 < timestamp < 2**53


def _ref(kind: str, name: str) -> JsonObject:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> JsonObject:
    return _ref("schemas", name)


# --------------------------------------------------------------------------------- schemas
_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": r"^[A-Za-z0-9._:@-]{1,128}$",
    "description": "sessionId, tokenId, deviceId or serviceId: never contains `|`.",
}
_SCOPE = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "pattern": r"^[a-z0-9_:]{1,64}$",
    "description": "A scope name such as `identity:name` (see the scope table of the contract).",
    "examples": ["identity:name"],
}
_B64URL = r"^[A-Za-z0-9_-]+$"
_DATE_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
_COMPACT_JWS = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
_NO_CONTROL = r"^[^\x00-\x1F\x7F]+$"

SCHEMAS: JsonObject = {
    "Error": {
        "type": "object",
        "description": "Every error body. Clients branch on `error` and the status code.",
        "properties": {
            "error": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "error_description": {"type": "string"},
        },
        "required": ["error", "error_description"],
        "additionalProperties": False,
    },
    "Id": _ID,
    "Scope": _SCOPE,
    "ScopeList": {
        "type": "array",
        "items": _schema("Scope"),
        "maxItems": 32,
    },
    "Timestamp": {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": _MAX_TIMESTAMP,
        "description": (
            "Unix epoch milliseconds of the device's clock, written as a JSON integer (no "
            "fraction or exponent: it enters the signed message as written, so `1.0` is refused "
            "with 400). It must be within the allowed skew (default 30 s) of the operator's "
            "clock, otherwise 401 `invalid_signature`."
        ),
    },
    "Signature": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": _B64URL,
        "description": (
            "ES256 by the device key over the UTF-8 message given for each endpoint: base64url "
            "without padding of the raw 64-byte `r || s` (86 characters). DER, 63/65 bytes or "
            "padding are refused."
        ),
    },
    "Otp": {"type": "string", "pattern": "^[0-9]{6}$", "minLength": 6, "maxLength": 6},
    "CompactJws": {
        "type": "string",
        "minLength": 1,
        "description": "A compact JWS (`header.payload.signature`).",
    },
    "IsoTime": {
        "type": "string",
        "format": "date-time",
        "pattern": _DATE_TIME,
        "description": "ISO 8601 UTC with a `Z`, whole seconds.",
    },
    "PushSubscription": {
        "type": "object",
        "description": (
            "A Web Push subscription as `PushSubscription.toJSON()` gives it. `endpoint` is an "
            "https URL (http only for loopback hosts) without credentials or fragment, on a "
            "public address unless the operator's `push.allow_private_networks` lists it; "
            "`p256dh` is an uncompressed P-256 point (65 bytes) and `auth` 16 bytes, both "
            "canonical base64url without padding. `expirationTime` is accepted and ignored."
        ),
        "properties": {
            "endpoint": {
                "type": "string",
                "format": "uri",
                "minLength": 1,
                "maxLength": MAX_ENDPOINT_LENGTH,
                "pattern": r"^https?://[\x21-\x7E]+$",
            },
            "keys": {
                "type": "object",
                "properties": {
                    "p256dh": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{87}$"},
                    "auth": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{22}$"},
                },
                "required": ["p256dh", "auth"],
                "additionalProperties": False,
            },
            "expirationTime": {"type": ["number", "null"]},
        },
        "required": ["endpoint", "keys"],
        "additionalProperties": False,
    },
    # ---- requests
    "InitiateRequest": {
        "type": "object",
        "properties": {
            "tokenId": _schema("Id"),
            "serviceId": _schema("Id"),
            "scopes": {
                **_schema("ScopeList"),
                "description": "Omitted or empty: the service's `default_scopes`.",
            },
            "nonce": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "pattern": _NO_CONTROL,
                "description": "Copied into the issued JWT.",
            },
        },
        "required": ["tokenId", "serviceId"],
        "additionalProperties": False,
    },
    "EnrollRequest": {
        "type": "object",
        "properties": {
            "enrollmentToken": {
                **_schema("CompactJws"),
                "description": (
                    "An integration server's JWT (RS256 or ES256) or a KYC provider's JWS."
                ),
            },
            "publicKeyPem": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": r"^[\x20-\x7F\r\n]+$",
                "description": "The device's P-256 public key, SPKI PEM.",
            },
            "deviceId": _schema("Id"),
            "pushSubscription": _schema("PushSubscription"),
            "timestamp": _schema("Timestamp"),
            "signature": {
                **_schema("Signature"),
                "description": (
                    'sig("enroll|" + deviceId + "|" + timestamp + "|" + '
                    "lowerhex(sha256(enrollmentToken)))"
                ),
            },
        },
        "required": ["enrollmentToken", "publicKeyPem", "deviceId", "timestamp", "signature"],
        "additionalProperties": False,
    },
    "VerifyRequest": {
        "type": "object",
        "properties": {
            "sessionId": _schema("Id"),
            "tokenId": _schema("Id"),
            "otp": _schema("Otp"),
            "grantedScopes": {
                **_schema("ScopeList"),
                "description": "A subset of the requested scopes; an empty list grants none.",
            },
            "timestamp": _schema("Timestamp"),
            "credential": {
                **_schema("CompactJws"),
                "description": "The credential returned by `/enroll`.",
            },
            "signature": {
                **_schema("Signature"),
                "description": (
                    'sig(sessionId + "|" + otp + "|" + timestamp + "|" + " ".join(grantedScopes))'
                ),
            },
        },
        "required": [
            "sessionId",
            "tokenId",
            "otp",
            "grantedScopes",
            "timestamp",
            "credential",
            "signature",
        ],
        "additionalProperties": False,
    },
    "RejectRequest": {
        "type": "object",
        "properties": {
            "sessionId": _schema("Id"),
            "tokenId": _schema("Id"),
            "timestamp": _schema("Timestamp"),
            "reason": {
                "type": "string",
                "enum": ["user_rejected", "not_me"],
                "description": (
                    "`not_me` is a fraud report: every pending session of the token ends and new "
                    "ones are refused (429) for `not_me_pause` seconds."
                ),
            },
            "signature": {
                **_schema("Signature"),
                "description": 'sig(sessionId + "|reject|" + timestamp)',
            },
        },
        "required": ["sessionId", "tokenId", "timestamp", "reason", "signature"],
        "additionalProperties": False,
    },
    "PendingRequest": {
        "type": "object",
        "properties": {
            "tokenId": _schema("Id"),
            "timestamp": _schema("Timestamp"),
            "signature": {
                **_schema("Signature"),
                "description": 'sig(tokenId + "|pending|" + timestamp)',
            },
        },
        "required": ["tokenId", "timestamp", "signature"],
        "additionalProperties": False,
    },
    "SubscriptionRequest": {
        "type": "object",
        "properties": {
            "tokenId": _schema("Id"),
            "subscription": _schema("PushSubscription"),
            "timestamp": _schema("Timestamp"),
            "signature": {
                **_schema("Signature"),
                "description": (
                    'sig(tokenId + "|subscription|" + timestamp + "|" + '
                    "lowerhex(sha256(subscription.endpoint)))"
                ),
            },
        },
        "required": ["tokenId", "subscription", "timestamp", "signature"],
        "additionalProperties": False,
    },
    # ---- responses
    "InitiateResponse": {
        "type": "object",
        "properties": {
            "sessionId": {"type": "string", "pattern": r"^sess_[A-Za-z0-9_-]{22,123}$"},
            "autoPassword": {
                **_schema("Otp"),
                "description": "The code the browser shows.",
            },
            "wsToken": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_-]{22,}$",
                "description": "The secret for the session's WebSocket (`?token=`).",
            },
            "expiresAt": {
                **_schema("IsoTime"),
                "description": "When the session (and its code) expires.",
            },
            "random": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        },
        "required": ["sessionId", "autoPassword", "wsToken", "expiresAt", "random"],
        "additionalProperties": False,
    },
    "EnrollResponse": {
        "type": "object",
        "properties": {
            "enrolled": {"const": True},
            "tokenId": _schema("Id"),
            "deviceId": _schema("Id"),
            "expiresAt": {**_schema("IsoTime"), "description": "When the credential expires."},
            "credential": {
                "type": "string",
                "pattern": _COMPACT_JWS,
                "description": (
                    "A JWS signed by the operator (`typ: idtoken-credential+jwt`); the app sends "
                    "it with every approval."
                ),
            },
        },
        "required": ["enrolled", "tokenId", "deviceId", "expiresAt", "credential"],
        "additionalProperties": False,
    },
    "PendingSession": {
        "type": "object",
        "properties": {
            "sessionId": _schema("Id"),
            "serviceId": _schema("Id"),
            "serviceName": {"type": "string"},
            "scopes": {"type": "array", "items": _schema("Scope")},
            "expiresAt": _schema("IsoTime"),
            "autoPassword": {
                **_schema("Otp"),
                "description": "Present only when the service's `otp_mode` is `display`.",
            },
        },
        "required": ["sessionId", "serviceId", "serviceName", "scopes", "expiresAt"],
        "additionalProperties": False,
    },
    "PendingResponse": {
        "type": "object",
        "properties": {
            "sessions": {"type": "array", "items": _schema("PendingSession")},
            "push": {
                "type": "string",
                "enum": ["active", "dead", "none"],
                "description": (
                    "The state of the device's push subscription: `dead` after a 404/410 from "
                    "the push service (send a new one to `/device/subscription`)."
                ),
            },
        },
        "required": ["sessions", "push"],
        "additionalProperties": False,
    },
    "Jwk": {
        "type": "object",
        "properties": {
            "kty": {"const": "EC"},
            "crv": {"const": "P-256"},
            "x": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{43}$"},
            "y": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{43}$"},
            "kid": {"type": "string", "minLength": 1},
            "use": {"const": "sig"},
            "alg": {"const": "ES256"},
        },
        "required": ["kty", "crv", "x", "y", "kid", "use", "alg"],
        "additionalProperties": False,
    },
    "Jwks": {
        "type": "object",
        "properties": {"keys": {"type": "array", "items": _schema("Jwk")}},
        "required": ["keys"],
        "additionalProperties": False,
    },
    "Discovery": {
        "type": "object",
        "description": "OpenID Provider metadata plus the operator's own endpoints.",
        "properties": {
            "issuer": {"type": "string", "format": "uri"},
            "jwks_uri": {"type": "string", "format": "uri"},
            "scopes_supported": {"type": "array", "items": _schema("Scope")},
            "claims_supported": {"type": "array", "items": {"type": "string"}},
            "id_token_signing_alg_values_supported": {
                "type": "array",
                "items": {"const": "ES256"},
            },
            "subject_types_supported": {"type": "array", "items": {"type": "string"}},
            "auth_initiate_endpoint": {"type": "string", "format": "uri"},
            "auth_verify_endpoint": {"type": "string", "format": "uri"},
            "auth_reject_endpoint": {"type": "string", "format": "uri"},
            "auth_pending_endpoint": {"type": "string", "format": "uri"},
            "enrollment_endpoint": {"type": "string", "format": "uri"},
            "session_websocket_endpoint": {
                "type": "string",
                "description": "`ws(s)://…/ws/session/{sessionId}`",
            },
            "push_vapid_public_key": {
                "type": "string",
                "pattern": _B64URL,
                "description": "The VAPID `applicationServerKey` (base64url).",
            },
            "device_signing_alg_values_supported": {
                "type": "array",
                "items": {"const": "ES256"},
            },
            "otp_modes_supported": {
                "type": "array",
                "items": {"enum": ["display", "typed"]},
            },
        },
        "required": [
            "issuer",
            "jwks_uri",
            "scopes_supported",
            "claims_supported",
            "id_token_signing_alg_values_supported",
            "auth_initiate_endpoint",
            "auth_verify_endpoint",
            "auth_reject_endpoint",
            "auth_pending_endpoint",
            "enrollment_endpoint",
            "session_websocket_endpoint",
            "push_vapid_public_key",
        ],
    },
}


def _status(value: str) -> JsonObject:
    return {
        "type": "object",
        "properties": {"status": {"const": value}},
        "required": ["status"],
        "additionalProperties": False,
    }


SCHEMAS.update(
    {
        "ApprovedResponse": _status("approved"),
        "RejectedResponse": _status("rejected"),
        "UpdatedResponse": _status("updated"),
    }
)

# --------------------------------------------------------------------------------- responses
_NO_STORE = {
    "description": "Responses carrying session data or errors are never cached.",
    "required": True,
    "schema": {"const": "no-store"},
}
_BEARER_CHALLENGE = {
    "description": "The Bearer challenge (RFC 6750).",
    "required": True,
    "schema": {"type": "string", "pattern": "^Bearer "},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def _json(schema: JsonObject, description: str, **headers: JsonObject) -> JsonObject:
    return {
        "description": description,
        "headers": {"Cache-Control": _NO_STORE, **headers},
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str, *codes: str, headers: JsonObject | None = None) -> JsonObject:
    """An error response whose ``error`` is one of ``codes`` (docs/errors.md)."""
    schema = {
        "allOf": [
            _schema("Error"),
            {"properties": {"error": {"enum": list(codes)}}},
        ]
    }
    return _json(schema, description, **(headers or {}))


# What /auth/verify and /auth/reject answer for a session that is unknown or no longer pending.
_SESSION_OVER: JsonObject = {
    "404": _error("No such session.", "unknown_session"),
    "409": _error("The session was already decided.", "session_not_pending"),
    "410": _error("The session has expired.", "session_expired"),
}


RESPONSES: JsonObject = {
    "RequestTooLarge": _error(
        f"The body is over {MAX_BODY // 1024} KiB (refused while it streams in).",
        "request_too_large",
    ),
    "UnsupportedMediaType": _error(
        "The body is not `application/json` (UTF-8).", "unsupported_media_type"
    ),
    "TooManyRequests": _error(
        "A limit was hit (see the operation); `Retry-After` says when to try again.",
        "too_many_requests",
        headers={"Retry-After": _RETRY_AFTER},
    ),
    "TemporarilyUnavailable": _error(
        "The store is unreachable. Nothing was written and no push sent.",
        "temporarily_unavailable",
        headers={"Retry-After": _RETRY_AFTER},
    ),
}

_BAD_REQUEST = (
    "Malformed body: not JSON, not an object, an unknown or missing member, a wrong type or a "
    "value outside its format."
)
_SIGNATURE = (
    "The device signature does not verify, the timestamp is outside the allowed skew, or the "
    "device key has been replaced."
)


def _post(
    *,
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    request: str,
    success: tuple[str, str, str],
    errors: JsonObject,
    limited: bool = False,
    security: list[JsonObject] | None = None,
) -> JsonObject:
    status, schema, success_description = success
    responses: JsonObject = {status: _json(_schema(schema), success_description)}
    responses.update(errors)
    responses["413"] = _ref("responses", "RequestTooLarge")
    responses["415"] = _ref("responses", "UnsupportedMediaType")
    if limited:
        responses["429"] = _ref("responses", "TooManyRequests")
    responses["503"] = _ref("responses", "TemporarilyUnavailable")
    op: JsonObject = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema(request)}},
        },
        "responses": dict(sorted(responses.items())),
    }
    if security is not None:
        op["security"] = security
    return {"post": op}


def _paths() -> JsonObject:
    public_cache = {
        "description": "Cacheable by anyone for an hour.",
        "required": True,
        "schema": {"const": "public, max-age=3600"},
    }
    etag = {
        "description": "Strong validator of the key set.",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[^"]+"$'},
    }
    return {
        "/auth/initiate": _post(
            operation_id="initiateLogin",
            tag="relying party",
            summary="Start a login for a token",
            description=(
                "Creates a pending session and sends a push to the token's device (without "
                "waiting for the push service). The browser then opens the session's "
                "WebSocket with `wsToken`. A service configured with `client_secret_sha256` "
                "must authenticate with `Authorization: Bearer <secret>`; a public service "
                "needs no header."
            ),
            request="InitiateRequest",
            success=("201", "InitiateResponse", "The session was created."),
            errors={
                "400": _error(
                    _BAD_REQUEST + " `invalid_scope`: a scope is unknown or not allowed.",
                    "invalid_request",
                    "invalid_scope",
                ),
                "401": _error(
                    "Missing or wrong client secret for a confidential service.",
                    "invalid_client",
                    headers={"WWW-Authenticate": _BEARER_CHALLENGE},
                ),
                "403": _error("The token was revoked by the operator.", "token_revoked"),
                "404": _error(
                    "No such service, or no device is enrolled for the token.",
                    "unknown_service",
                    "unknown_token",
                ),
            },
            limited=True,
            security=[{}, {"clientSecret": []}],
        ),
        "/enroll": _post(
            operation_id="enrollDevice",
            tag="mobile app",
            summary="Enroll a device for a token",
            description=(
                "Binds the device key to the token named by the enrollment token's `sub` and "
                "returns the credential the app sends with every approval. Enrolling again "
                "for the same token from the same issuer replaces the device. At most "
                "`enroll_per_ip_per_hour` (default 5) well-formed requests per client address "
                "and hour; more get 429. 503 also when a KYC provider's JWKS cannot be fetched."
            ),
            request="EnrollRequest",
            success=("201", "EnrollResponse", "The device is enrolled."),
            errors={
                "400": _error(_BAD_REQUEST, "invalid_request"),
                "401": _error(
                    "The enrollment token failed a check, or " + _SIGNATURE,
                    "invalid_enrollment_token",
                    "invalid_signature",
                ),
                "409": _error(
                    "The enrollment token was already used, the token is enrolled through "
                    "another issuer, or it was revoked.",
                    "token_replayed",
                    "token_conflict",
                    "token_revoked",
                ),
            },
            limited=True,
        ),
        "/auth/verify": _post(
            operation_id="approveLogin",
            tag="mobile app",
            summary="Approve a pending session",
            description=(
                "Approves the session and issues the JWT to the browser. Every failure on a "
                'pending session counts; the third ends it (`rejected`, "Too many attempts") '
                "and later calls get 429. A correctly signed wrong code in `display` mode ends "
                "the session at once."
            ),
            request="VerifyRequest",
            success=("200", "ApprovedResponse", "The session is approved."),
            errors={
                "400": _error(
                    _BAD_REQUEST + " Also `grantedScopes` that were not requested; "
                    "`invalid_otp`: the code does not match.",
                    "invalid_request",
                    "invalid_otp",
                ),
                "401": _error(
                    _SIGNATURE + " Also a credential that is not valid or not current.",
                    "invalid_signature",
                ),
                "403": _error(
                    "The session or the credential belongs to another token, or the token was "
                    "revoked.",
                    "device_mismatch",
                    "token_revoked",
                ),
                **_SESSION_OVER,
            },
            limited=True,
        ),
        "/auth/reject": _post(
            operation_id="rejectLogin",
            tag="mobile app",
            summary="Reject a pending session",
            description=(
                'The browser receives `rejected` with "User rejected" or "Not me". '
                "429 when the session already ended after too many failed attempts."
            ),
            request="RejectRequest",
            success=("200", "RejectedResponse", "The session is rejected."),
            errors={
                "400": _error(_BAD_REQUEST, "invalid_request"),
                "401": _error(_SIGNATURE, "invalid_signature"),
                "403": _error(
                    "The session belongs to another token, or the token was revoked.",
                    "device_mismatch",
                    "token_revoked",
                ),
                **_SESSION_OVER,
            },
            limited=True,
        ),
        "/auth/pending": _post(
            operation_id="listPendingSessions",
            tag="mobile app",
            summary="The token's pending sessions",
            description=(
                "The app's fallback when a push is lost. An unknown token gets the same 401 "
                "as a bad signature."
            ),
            request="PendingRequest",
            success=("200", "PendingResponse", "The pending sessions."),
            errors={
                "400": _error(_BAD_REQUEST, "invalid_request"),
                "401": _error(_SIGNATURE + " Also an unknown token.", "invalid_signature"),
                "403": _error("The token was revoked by the operator.", "token_revoked"),
            },
        ),
        "/device/subscription": _post(
            operation_id="replacePushSubscription",
            tag="mobile app",
            summary="Replace the device's Web Push subscription",
            description="Signed with the device key; clears the subscription's dead flag.",
            request="SubscriptionRequest",
            success=("200", "UpdatedResponse", "The subscription was replaced."),
            errors={
                "400": _error(_BAD_REQUEST, "invalid_request"),
                "401": _error(_SIGNATURE + " Also an unknown token.", "invalid_signature"),
                "403": _error("The token was revoked by the operator.", "token_revoked"),
            },
        ),
        "/.well-known/jwks.json": {
            "get": {
                "operationId": "getJwks",
                "tags": ["metadata"],
                "summary": "The operator's public signing keys",
                "description": (
                    "Every key that may have signed an unexpired token. Conditional requests "
                    "with `If-None-Match` get 304 while the key set is unchanged."
                ),
                "parameters": [
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The JWKS.",
                        "headers": {"Cache-Control": public_cache, "ETag": etag},
                        "content": {"application/json": {"schema": _schema("Jwks")}},
                    },
                    "304": {
                        "description": "The key set has not changed.",
                        "headers": {"Cache-Control": public_cache, "ETag": etag},
                    },
                },
            }
        },
        "/.well-known/openid-configuration": {
            "get": {
                "operationId": "getOpenidConfiguration",
                "tags": ["metadata"],
                "summary": "Discovery document",
                "responses": {
                    "200": {
                        "description": "The discovery document.",
                        "headers": {"Cache-Control": public_cache},
                        "content": {"application/json": {"schema": _schema("Discovery")}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenapi",
                "tags": ["metadata"],
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"openapi": {"type": "string"}},
                                    "required": ["openapi", "info", "paths"],
                                }
                            }
                        },
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Liveness: the process answers",
                "responses": {"200": _json(_status("ok"), "The process is alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Readiness: the store answers and signing keys are loaded",
                "responses": {
                    "200": _json(_status("ready"), "Ready to serve."),
                    "503": _json(
                        {
                            "type": "object",
                            "properties": {
                                "status": {"const": "unavailable"},
                                "store": {"const": "unreachable"},
                                "keys": {"const": "none"},
                            },
                            "required": ["status"],
                            "additionalProperties": False,
                        },
                        "Not ready: the store is unreachable or no signing key is loaded.",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": (
                    "For holders of the configured `[metrics] token`. Without that setting the "
                    "endpoint does not exist (404)."
                ),
                "security": [{"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error(
                        "Missing or wrong metrics token.",
                        "unauthorized",
                        headers={"WWW-Authenticate": _BEARER_CHALLENGE},
                    ),
                    "404": _error("Metrics are not enabled.", "not_found"),
                },
            }
        },
    }


_DESCRIPTION = """\
Passwordless out-of-band login (ITU-T X.1280 style): a relying party starts a login with
`POST /auth/initiate`, the user's phone approves it with a device-key signature, and the
browser receives an ES256 ID token with the consented claims over a WebSocket.

## General rules
- Request bodies are UTF-8 JSON (`Content-Type: application/json`, otherwise 415). Unknown
  members are refused with 400; bodies over 64 KiB get 413 before they are parsed.
- Every error is `{"error": "<snake_case code>", "error_description": "<text>"}` with
  `Cache-Control: no-store`. Clients branch on `error` and the status. An unknown path gets 404
  `not_found`, a wrong method 405 `method_not_allowed` (with `Allow`), and a bug 500
  `server_error`.
- Times in bodies are ISO 8601 UTC with a `Z`; signed `timestamp` members are Unix epoch
  milliseconds.
- Device signatures are ES256 over the UTF-8 message given for each endpoint, sent as
  base64url (no padding) of the raw 64-byte `r || s`.
- Every `GET` endpoint also answers `HEAD`.

## WebSocket `/ws/session/{sessionId}?token={wsToken}`
OpenAPI cannot describe it, so here it is. The browser connects (`ws://` or `wss://` on the
issuer's host; also published as `session_websocket_endpoint` in the discovery document) with
the `sessionId` and `wsToken` from `/auth/initiate`. If the service lists `allowed_origins`, a
handshake whose `Origin` is not one of them is refused with HTTP 403.

Server → client JSON text messages:
- `{"type": "otp_ready", "sessionId", "autoPassword", "expiresAt"}`: sent on connect while the
  session is pending.
- `{"type": "approved", "jwt", "hash", "random", "expiresAt"}`: `expiresAt` is the JWT's expiry;
  `hash` is lowercase hex HMAC-SHA256(key = wsToken, msg = `sessionId + "|" + random + "|" +
  jwt`).
- `{"type": "rejected", "reason"}`: `reason` is `"User rejected"`, `"Not me"`,
  `"Invalid OTP"` or `"Too many attempts"`.
- `{"type": "expired"}`: the session's lifetime passed with no decision.

After a terminal message (approved, rejected, expired) the server closes with 1000; a socket
opened after the decision gets the terminal message at once (results are kept 5 minutes).
Client → server messages are ignored.

Close codes: 1000 normal close after a terminal message; 1009 the client sent a frame over
4 KiB; 1011 the store was unreachable when the socket opened (reconnect); 4001 wrong `token`;
4004 unknown session; 4009 replaced by a newer socket for the same session (one live socket per
session, on any instance).
"""


def openapi_document(settings: Settings) -> JsonObject:
    """The OpenAPI 3.1 document for an operator with these settings."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "IDToken Operator",
            "version": idtoken.__version__,
            "summary": "Passwordless out-of-band authentication with ES256 ID tokens.",
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": settings.issuer}],
        "tags": [
            {"name": "relying party", "description": "Called by the relying party's backend."},
            {"name": "mobile app", "description": "Called by the phone app, signed by its key."},
            {"name": "metadata", "description": "Public keys and discovery."},
            {"name": "operations", "description": "Probes and metrics."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": copy.deepcopy(RESPONSES),
            "securitySchemes": {
                "clientSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "The client secret of a confidential service (one configured with "
                        "`client_secret_sha256`). Public services send no header."
                    ),
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The `[metrics] token` of the configuration.",
                },
            },
        },
    }


def openapi_body(settings: Settings) -> bytes:
    return json.dumps(openapi_document(settings), separators=(",", ":")).encode("utf-8")


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: the document, serialised on first use and kept per app."""
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_body", None)
    if body is None:
        body = openapi_body(runtime(request).settings)
        state.openapi_body = body
    return Response(
        body,
        media_type="application/json",
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )
