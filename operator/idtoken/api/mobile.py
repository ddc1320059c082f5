"""Mobile-app endpoints: /enroll, /auth/verify, /auth/reject, /auth/pending."""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from idtoken.api.bodies import (
    ENROLL,
    PENDING,
    REJECT,
    SUBSCRIPTION,
    VERIFY,
    ApprovedResponse,
    EnrollResponse,
    PendingResponse,
    RejectedResponse,
    UpdatedResponse,
)
from idtoken.api.body import read_body
from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime
from idtoken.enrollment.service import EnrollRequest
from idtoken.errors import InvalidRequest
from idtoken.ids import iso_z
from idtoken.login import RejectRequest, VerifyRequest
from idtoken.push.base import PushSubscription


async def enroll(request: Request) -> Response:
    rt = runtime(request)
    body = await read_body(request, ENROLL)
    subscription = None
    wire = body.get("pushSubscription")
    if wire is not None:
        try:
            parsed = PushSubscription.from_wire(wire)
            parsed.check_policy(rt.settings.push.endpoint_policy)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        subscription = parsed.to_json()
    req = EnrollRequest(
        enrollment_token=body["enrollmentToken"],
        public_key_pem=body["publicKeyPem"],
        device_id=body["deviceId"],
        push_subscription=subscription,
        timestamp=body["timestamp"],
        signature=body["signature"],
        client_ip=request.client.host if request.client else "unknown",
    )
    done = await rt.enrollment.enroll(req)
    enrolled: EnrollResponse = {
        "enrolled": True,
        "tokenId": done.token_id,
        "deviceId": done.device_id,
        "expiresAt": iso_z(done.expires_at),
        "credential": done.credential,
    }
    return json_response(enrolled, status=201)


async def verify(request: Request) -> Response:
    rt = runtime(request)
    body = await read_body(request, VERIFY)
    req = VerifyRequest(
        session_id=body["sessionId"],
        token_id=body["tokenId"],
        otp=body["otp"],
        granted_scopes=body["grantedScopes"],
        timestamp=body["timestamp"],
        credential=body["credential"],
        signature=body["signature"],
    )
    with rt.metrics.verify_seconds.time():
        await rt.login.verify(req)
    approved: ApprovedResponse = {"status": "approved"}
    return json_response(approved)


async def reject(request: Request) -> Response:
    rt = runtime(request)
    body = await read_body(request, REJECT)
    req = RejectRequest(
        session_id=body["sessionId"],
        token_id=body["tokenId"],
        timestamp=body["timestamp"],
        reason=body["reason"],
        signature=body["signature"],
    )
    await rt.login.reject(req)
    rejected: RejectedResponse = {"status": "rejected"}
    return json_response(rejected)


async def pending(request: Request) -> Response:
    rt = runtime(request)
    body = await read_body(request, PENDING)
    sessions, push = await rt.login.pending(body["tokenId"], body["timestamp"], body["signature"])
    # The session views and the push state come from the login service (LoginService.app_view).
    return json_response(cast(PendingResponse, {"sessions": sessions, "push": push}))


async def device_subscription(request: Request) -> Response:
    rt = runtime(request)
    body = await read_body(request, SUBSCRIPTION)
    try:
        subscription = PushSubscription.from_wire(body["subscription"], name="subscription")
        subscription.check_policy(rt.settings.push.endpoint_policy, name="subscription")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    await rt.login.replace_subscription(
        body["tokenId"], subscription, body["timestamp"], body["signature"]
    )
    updated: UpdatedResponse = {"status": "updated"}
    return json_response(updated)
