"""Mobile-app endpoints: /enroll, /auth/verify, /auth/reject, /auth/pending."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.body import Fields, read_json
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.enrollment.service import EnrollRequest
from idtoken.errors import InvalidRequest
from idtoken.ids import iso_z
from idtoken.login import REJECT_REASONS, RejectRequest, VerifyRequest
from idtoken.push.base import PushSubscription


async def enroll(request: Request) -> Response:
    rt = runtime(request)
    f = Fields(
        await read_json(request),
        required=("enrollmentToken", "publicKeyPem", "deviceId", "timestamp", "signature"),
        optional=("pushSubscription",),
    )
    subscription = None
    if f.present("pushSubscription"):
        try:
            parsed = PushSubscription.parse(f.body["pushSubscription"])
            parsed.check_policy(rt.settings.push.endpoint_policy)
            subscription = parsed.to_json()
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
    req = EnrollRequest(
        enrollment_token=f.compact_jws("enrollmentToken"),
        public_key_pem=f.text_block("publicKeyPem", max_length=1024),
        device_id=f.ident("deviceId"),
        push_subscription=subscription,
        timestamp=f.timestamp(),
        signature=f.signature(),
        client_ip=request.client.host if request.client else "unknown",
    )
    done = await rt.enrollment.enroll(req)
    return json_response(
        {
            "enrolled": True,
            "tokenId": done.token_id,
            "deviceId": done.device_id,
            "expiresAt": iso_z(done.expires_at),
            "credential": done.credential,
        },
        status=201,
    )


async def verify(request: Request) -> Response:
    rt = runtime(request)
    f = Fields(
        await read_json(request),
        required=(
            "sessionId",
            "tokenId",
            "otp",
            "grantedScopes",
            "timestamp",
            "credential",
            "signature",
        ),
    )
    req = VerifyRequest(
        session_id=f.ident("sessionId"),
        token_id=f.ident("tokenId"),
        otp=f.otp(),
        granted_scopes=f.scope_list("grantedScopes"),
        timestamp=f.timestamp(),
        credential=f.compact_jws("credential"),
        signature=f.signature(),
    )
    with rt.metrics.verify_seconds.time():
        await rt.login.verify(req)
    return json_response({"status": "approved"})


async def reject(request: Request) -> Response:
    rt = runtime(request)
    f = Fields(
        await read_json(request),
        required=("sessionId", "tokenId", "timestamp", "reason", "signature"),
    )
    req = RejectRequest(
        session_id=f.ident("sessionId"),
        token_id=f.ident("tokenId"),
        timestamp=f.timestamp(),
        reason=f.choice("reason", REJECT_REASONS),
        signature=f.signature(),
    )
    await rt.login.reject(req)
    return json_response({"status": "rejected"})


async def pending(request: Request) -> Response:
    rt = runtime(request)
    f = Fields(await read_json(request), required=("tokenId", "timestamp", "signature"))
    sessions, push = await rt.login.pending(f.ident("tokenId"), f.timestamp(), f.signature())
    return json_response({"sessions": sessions, "push": push})


async def device_subscription(request: Request) -> Response:
    rt = runtime(request)
    f = Fields(
        await read_json(request),
        required=("tokenId", "subscription", "timestamp", "signature"),
    )
    token_id = f.ident("tokenId")
    try:
        subscription = PushSubscription.parse(f.body["subscription"], name="subscription")
        subscription.check_policy(rt.settings.push.endpoint_policy, name="subscription")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    await rt.login.replace_subscription(token_id, subscription, f.timestamp(), f.signature())
    return json_response({"status": "updated"})
