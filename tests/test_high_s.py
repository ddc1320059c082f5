"""ECDSA malleability on device signatures, against a real operator on uvicorn and Redis.

An ES256 signature (r, s) has a twin (r, n − s) over the same message and key. WebCrypto and
the Android and iOS keystores return either, about half the time each, so the operator accepts
both (docs/mobile-app.md §7). The twin cannot do more than a replay: every signed message
carries a timestamp, and the session (an approval, a rejection) or the enrollment token's
single use (an enrollment) lets one message through once, in whichever form comes first.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Operator
from idtoken.client import Device
from idtoken.jose import P256_ORDER, b64url_decode, b64url_encode

HALF_ORDER = P256_ORDER // 2


def both_forms(signature: str) -> tuple[str, str]:
    """(low-s, high-s) encodings of one raw ``r || s`` signature."""
    raw = b64url_decode(signature)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    low, high = min(s, P256_ORDER - s), max(s, P256_ORDER - s)
    assert low <= HALF_ORDER < high
    return b64url_encode(r + low.to_bytes(32, "big")), b64url_encode(r + high.to_bytes(32, "big"))


def with_signature(body: dict[str, Any], signature: str) -> dict[str, Any]:
    return {**body, "signature": signature}


@pytest.mark.parametrize("first", ["high", "low"])
async def test_an_approval_verifies_in_either_form_once(operator: Operator, first: str) -> None:
    device = await operator.enrolled("user-hs")
    rp = operator.rp()
    started = await rp.initiate("user-hs", ["identity:name"])
    body = device.verify_body(started.session_id, started.auto_password, ["identity:name"])
    low, high = both_forms(body["signature"])
    order = [high, low] if first == "high" else [low, high]

    resp = await operator.http.post("/auth/verify", json=with_signature(body, order[0]))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "approved"}
    message = await rp.wait_result(started, timeout=5)
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["sub"] == "user-hs"

    # The other encoding of the same signature, and the same one again: the session is used.
    for signature in (order[1], order[0]):
        again = await operator.http.post("/auth/verify", json=with_signature(body, signature))
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "session_not_pending"


async def test_an_enrollment_verifies_in_either_form_once(operator: Operator) -> None:
    device = Device(operator.http, device_id="device-hs")
    body = device.enroll_body(operator.issuer.mint("user-hs-enroll"))
    low, high = both_forms(body["signature"])

    resp = await operator.http.post("/enroll", json=with_signature(body, high))
    assert resp.status_code == 201, resp.text
    for signature in (low, high):
        again = await operator.http.post("/enroll", json=with_signature(body, signature))
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "token_replayed"


async def test_a_rejection_verifies_in_either_form_once(operator: Operator) -> None:
    device = await operator.enrolled("user-hs-reject")
    started = await operator.rp().initiate("user-hs-reject")
    body = device.reject_body(started.session_id)
    low, high = both_forms(body["signature"])

    resp = await operator.http.post("/auth/reject", json=with_signature(body, high))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "rejected"}
    for signature in (low, high):
        again = await operator.http.post("/auth/reject", json=with_signature(body, signature))
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "session_not_pending"
