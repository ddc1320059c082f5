"""POST /auth/verify, /auth/reject and /auth/pending through HTTP on a real uvicorn and Redis.

Covers the approval happy path and the catalogue rows O02, O03, A01, A02, A04, A06, X05, J14,
J16 and R09, the signed timestamp window, the order of grantedScopes, rejection ("User
rejected", "Not me") and the app's pending list.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import Operator, OperatorFactory
from idtoken.client import Device, Initiation, RelyingParty, ResultError
from idtoken.clock import ManualClock
from idtoken.settings import secret_digest
from support import DEFAULT_SERVICE, RedisServer, b64url

TYPED_SERVICE: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "typed-shop",
    "name": "Typed Shop",
    "audience": "typed-audience",
    "otp_mode": "typed",
}
LIMITS = {
    "max_pending_per_token": 50,
    "pushes_per_token_per_10min": 1000,
    "enroll_per_ip_per_hour": 1000,
}
NAME = ["identity:name"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def op(make_operator: OperatorFactory, redis_url: str) -> AsyncIterator[Operator]:
    async with make_operator(
        services=[dict(DEFAULT_SERVICE), dict(TYPED_SERVICE)], limits=LIMITS
    ) as operator:
        yield operator


@pytest.fixture
def clock() -> ManualClock:
    # Whole seconds, so that a millisecond timestamp can sit exactly on the window's edge.
    return ManualClock(float(int(time.time())))


@pytest.fixture
async def clocked(
    make_operator: OperatorFactory, redis_url: str, clock: ManualClock
) -> AsyncIterator[Operator]:
    async with make_operator(
        clock=clock, services=[dict(DEFAULT_SERVICE), dict(TYPED_SERVICE)], limits=LIMITS
    ) as operator:
        yield operator


# --------------------------------------------------------------------------- helpers


def wrong(otp: str) -> str:
    return f"{(int(otp) + 1) % 1_000_000:06d}"


def ms(clock: ManualClock) -> int:
    return int(clock.now() * 1000)


async def verify(op: Operator, body: dict[str, Any]) -> httpx.Response:
    return await op.http.post("/auth/verify", json=body)


async def open_socket(rp: RelyingParty, started: Initiation) -> Any:
    """A browser socket that has received its ``otp_ready``."""
    sock = await websockets.connect(rp.socket_url(started), compression=None)
    first = json.loads(await asyncio.wait_for(sock.recv(), 5))
    assert first["type"] == "otp_ready", first
    return sock


async def assert_silent(sock: Any, wait: float = 0.3) -> None:
    """The socket gets no decision (the session is still pending)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sock.recv(), wait)


async def all_messages(sock: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Everything the server sends until it closes the socket."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        try:
            async for raw in sock:
                out.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
    return out


async def is_listed(device: Device, session_id: str) -> bool:
    return session_id in [s["sessionId"] for s in await device.pending()]


def raw_signature(device: Device, message: str) -> bytes:
    r, s = decode_dss_signature(
        device.private_key.sign(message.encode(), ec.ECDSA(hashes.SHA256()))
    )
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_message(body: dict[str, Any]) -> str:
    return (
        f"{body['sessionId']}|{body['otp']}|{body['timestamp']}|{' '.join(body['grantedScopes'])}"
    )


def session_fails(srv: RedisServer, token_id: str, session_id: str) -> int:
    value = srv.cli("HGET", f"idtoken:{{t:{token_id}}}:sess:{session_id}", "fails")
    return int(value or 0)


# =========================================================================== happy path


async def test_happy_path_approves_and_delivers_one_jwt(op: Operator) -> None:
    device = await op.enrolled("happy-1", given_name="Ada", family_name="Lovelace")
    rp = op.rp()
    started = await rp.initiate("happy-1", NAME, nonce="n-1")
    sock = await open_socket(rp, started)
    resp = await device.approve(started.session_id, started.auto_password, NAME)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "approved"}
    messages = await all_messages(sock)
    assert [m["type"] for m in messages] == ["approved"]
    assert rp.hash_ok(started, messages[0])
    claims = await rp.verify_jwt(messages[0]["jwt"], session_id=started.session_id, nonce="n-1")
    assert claims["idtoken"] == {"tokenId": "happy-1", "givenName": "Ada", "familyName": "Lovelace"}
    assert claims["scope"] == "identity:name"


async def test_unknown_session_is_404(op: Operator) -> None:
    device = await op.enrolled("unknown-sess")
    resp = await verify(op, device.verify_body("sess_doesnotexist0000000000", "123456", NAME))
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"] == "unknown_session"


# =========================================================================== O02


async def test_o02_display_mode_first_wrong_otp_ends_the_session(op: Operator) -> None:
    device = await op.enrolled("o02-display")
    rp = op.rp()
    started = await rp.initiate("o02-display", NAME)
    resp = await verify(
        op, device.verify_body(started.session_id, wrong(started.auto_password), NAME)
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_otp"
    assert started.auto_password not in resp.text
    with pytest.raises(ResultError) as info:
        await rp.wait_result(started, timeout=5)
    assert info.value.kind == "rejected" and info.value.detail == "Invalid OTP"
    # The right code afterwards gets nothing.
    late = await device.approve(started.session_id, started.auto_password, NAME)
    assert late.status_code == 409, late.text
    assert late.json()["error"] == "session_not_pending"
    assert not await is_listed(device, started.session_id)


async def test_o02_typed_mode_third_wrong_otp_ends_the_session(op: Operator) -> None:
    device = await op.enrolled("o02-typed")
    rp = op.rp("typed-shop")
    started = await rp.initiate("o02-typed", NAME)
    sock = await open_socket(rp, started)
    bad = wrong(started.auto_password)
    for attempt in (1, 2):
        resp = await verify(op, device.verify_body(started.session_id, bad, NAME))
        assert resp.status_code == 400, f"attempt {attempt}: {resp.text}"
        assert resp.json()["error"] == "invalid_otp"
        await assert_silent(sock)
        assert await is_listed(device, started.session_id)
    # The failure that ends the session answers with its own error; later calls get 429.
    third = await verify(op, device.verify_body(started.session_id, bad, NAME))
    assert third.status_code == 400, third.text
    assert third.json()["error"] == "invalid_otp"
    assert messages_are_rejection(await all_messages(sock), "Too many attempts")
    with pytest.raises(ResultError) as info:
        await rp.wait_result(started, timeout=5)
    assert info.value.kind == "rejected" and info.value.detail == "Too many attempts"
    # Later calls, even with the right code, get 429.
    later = await device.approve(started.session_id, started.auto_password, NAME)
    assert later.status_code == 429, later.text
    assert later.json()["error"] == "too_many_requests"
    assert int(later.headers["retry-after"]) >= 1


def messages_are_rejection(messages: list[dict[str, Any]], reason: str) -> bool:
    return messages == [{"type": "rejected", "reason": reason}]


# =========================================================================== O03 / A02


async def test_o03_replayed_approval(op: Operator) -> None:
    device = await op.enrolled("o03-user")
    rp = op.rp()
    first = await rp.initiate("o03-user", NAME)
    body = device.verify_body(first.session_id, first.auto_password, NAME)
    ok = await verify(op, body)
    assert ok.status_code == 200, ok.text
    replay = await verify(op, body)
    assert replay.status_code == 409, replay.text
    assert replay.json()["error"] == "session_not_pending"

    second = await rp.initiate("o03-user", NAME)
    moved = {**body, "sessionId": second.session_id}
    resp = await verify(op, moved)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"
    moved_with_otp = {**moved, "otp": second.auto_password}
    resp = await verify(op, moved_with_otp)
    assert resp.status_code == 401, resp.text
    # Exactly one JWT for the first session; the second is still pending and approvable.
    message = await rp.wait_result(first, timeout=5)
    assert message["type"] == "approved"
    assert await is_listed(device, second.session_id)
    resp = await device.approve(second.session_id, second.auto_password, NAME)
    assert resp.status_code == 200, resp.text


async def test_a02_signature_for_another_session(op: Operator) -> None:
    device = await op.enrolled("a02-user")
    rp = op.rp()
    x = await rp.initiate("a02-user", NAME)
    y = await rp.initiate("a02-user", NAME)
    signed_for_x = device.verify_body(x.session_id, x.auto_password, NAME)
    for otp in (x.auto_password, y.auto_password):
        resp = await verify(op, {**signed_for_x, "sessionId": y.session_id, "otp": otp})
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"] == "invalid_signature"
    # Neither session was approved.
    assert await is_listed(device, x.session_id) and await is_listed(device, y.session_id)


# =========================================================================== A01 / J14


async def test_a01_device_of_another_token(op: Operator) -> None:
    victim = await op.enrolled("a01-victim", device_id="victim-phone")
    mallory = await op.enrolled("a01-mallory", device_id="mallory-phone")
    assert victim.enrollment is not None
    rp = op.rp()
    started = await rp.initiate("a01-victim", NAME)
    sock = await open_socket(rp, started)
    sid, otp = started.session_id, started.auto_password

    # Mallory's own tokenId and credential.
    resp = await verify(op, mallory.verify_body(sid, otp, NAME))
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "device_mismatch"
    # The victim's tokenId with Mallory's credential.
    resp = await verify(op, mallory.verify_body(sid, otp, NAME, token_id="a01-victim"))
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "device_mismatch"
    await assert_silent(sock)
    assert await is_listed(victim, sid)

    # The right device still approves.
    resp = await victim.approve(sid, otp, NAME)
    assert resp.status_code == 200, resp.text
    assert [m["type"] for m in await all_messages(sock)] == ["approved"]


async def test_j14_and_stolen_credentials(op: Operator) -> None:
    victim = await op.enrolled("j14-victim", device_id="victim-phone")
    mallory = await op.enrolled("j14-mallory", device_id="mallory-phone")
    assert victim.enrollment is not None and mallory.enrollment is not None
    rp = op.rp()
    # An ID token we issued, to present as a credential.
    done = await rp.initiate("j14-victim", NAME)
    assert (await victim.approve(done.session_id, done.auto_password, NAME)).status_code == 200
    id_token = (await rp.wait_result(done, timeout=5))["jwt"]

    started = await rp.initiate("j14-victim", NAME)
    sock = await open_socket(rp, started)
    sid, otp = started.session_id, started.auto_password
    resp = await verify(op, victim.verify_body(sid, otp, NAME, credential=id_token))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"
    # The victim's key with another token's credential.
    resp = await verify(
        op, victim.verify_body(sid, otp, NAME, credential=mallory.enrollment.credential)
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "device_mismatch"
    await assert_silent(sock)
    await sock.close()

    # Mallory with the victim's (stolen) credential but her own key: the signature fails.
    other = await rp.initiate("j14-victim", NAME)
    resp = await verify(
        op,
        mallory.verify_body(
            other.session_id,
            other.auto_password,
            NAME,
            token_id="j14-victim",
            credential=victim.enrollment.credential,
        ),
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"
    assert await is_listed(victim, sid) and await is_listed(victim, other.session_id)


def _tamper_payload(credential: str, **changes: Any) -> str:
    header, payload, signature = credential.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}.{signature}"


async def test_tampered_credential_is_401(op: Operator) -> None:
    device = await op.enrolled("tamper-user", given_name="Ann")
    assert device.enrollment is not None
    credential = device.enrollment.credential
    header, payload, signature = credential.split(".")
    none_header = b64url(json.dumps({"alg": "none", "typ": "idtoken-credential+jwt"}).encode())
    jwt_header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    hs_header = b64url(json.dumps({"alg": "HS256", "typ": "idtoken-credential+jwt"}).encode())
    variants = {
        "trustLevel raised": _tamper_payload(credential, trustLevel=3),
        "givenName changed": _tamper_payload(credential, givenName="Eve"),
        "extra claim": _tamper_payload(credential, dateOfBirth="1900-01-01"),
        "header typ JWT": f"{jwt_header}.{payload}.{signature}",
        "alg none": f"{none_header}.{payload}.",
        "alg HS256": f"{hs_header}.{payload}.{signature}",
        "signature truncated": f"{header}.{payload}.{signature[:-2]}",
    }
    rp = op.rp()
    for label, forged in variants.items():
        # A fresh session for each, so that failure counting does not end the session.
        started = await rp.initiate("tamper-user", ["identity:name", "identity:trust_level"])
        body = device.verify_body(
            started.session_id,
            started.auto_password,
            ["identity:name", "identity:trust_level"],
            credential=forged,
        )
        resp = await verify(op, body)
        assert resp.status_code == 401, f"{label}: {resp.text}"
        assert resp.json()["error"] == "invalid_signature", label
        assert await is_listed(device, started.session_id), label


# =========================================================================== A04


async def test_a04_approval_after_the_lifetime(clocked: Operator, clock: ManualClock) -> None:
    op = clocked
    device = await op.enrolled("a04-user")
    rp = op.rp()
    started = await rp.initiate("a04-user", NAME)
    clock.advance(61)
    body = device.verify_body(started.session_id, started.auto_password, NAME, timestamp=ms(clock))
    resp = await verify(op, body)
    assert resp.status_code == 410, resp.text
    assert resp.json()["error"] == "session_expired"
    # A socket connecting now gets the terminal message at once, then a normal close.
    sock = await websockets.connect(rp.socket_url(started), compression=None)
    assert await all_messages(sock) == [{"type": "expired"}]
    assert sock.close_code == 1000
    # And the approval stays refused.
    resp = await verify(
        op, device.verify_body(started.session_id, started.auto_password, NAME, timestamp=ms(clock))
    )
    assert resp.status_code == 410, resp.text
    assert not await is_listed_at(op, device, clock, started.session_id)


async def test_a04_socket_after_the_lifetime_gets_only_expired(
    clocked: Operator, clock: ManualClock
) -> None:
    """Contract §1: otp_ready is sent "while the session is pending"; once its lifetime has
    passed the session is over (verify answers 410), even if nobody has touched it since."""
    op = clocked
    device = await op.enrolled("a04b-user")
    rp = op.rp()
    started = await rp.initiate("a04b-user", NAME)
    clock.advance(61)
    sock = await websockets.connect(rp.socket_url(started), compression=None)
    messages = await all_messages(sock)
    assert messages == [{"type": "expired"}], messages
    assert sock.close_code == 1000
    body = device.verify_body(started.session_id, started.auto_password, NAME, timestamp=ms(clock))
    resp = await verify(op, body)
    assert resp.status_code == 410, resp.text


# =========================================================================== A06


async def test_a06_replaced_device_key(op: Operator) -> None:
    old = await op.enrolled("a06-user", device_id="old-phone")
    new = op.device("new-phone")
    await new.enroll(op.issuer.mint("a06-user"))
    assert old.enrollment is not None and new.enrollment is not None
    rp = op.rp()
    started = await rp.initiate("a06-user", NAME)
    sid, otp = started.session_id, started.auto_password
    sock = await open_socket(rp, started)
    cases = {
        "old key, old credential": old.verify_body(sid, otp, NAME),
        "old key, new credential": old.verify_body(
            sid, otp, NAME, credential=new.enrollment.credential
        ),
    }
    for label, body in cases.items():
        resp = await verify(op, body)
        assert resp.status_code == 401, f"{label}: {resp.text}"
        assert resp.json()["error"] == "invalid_signature", label
    await assert_silent(sock)
    resp = await new.approve(sid, otp, NAME)
    assert resp.status_code == 200, resp.text
    assert [m["type"] for m in await all_messages(sock)] == ["approved"]


async def test_a06_replaced_device_cannot_end_sessions_with_a_wrong_code(op: Operator) -> None:
    """The replaced key is no longer the token's device key (contract §2 checks), so its
    approvals are 401 whatever OTP they carry: a lost or stolen phone that was replaced must
    not be able to end the new phone's sessions with one signed wrong code."""
    old = await op.enrolled("a06c-user", device_id="old-phone")
    new = op.device("new-phone")
    await new.enroll(op.issuer.mint("a06c-user"))
    rp = op.rp()
    started = await rp.initiate("a06c-user", NAME)
    sock = await open_socket(rp, started)
    resp = await verify(op, old.verify_body(started.session_id, wrong(started.auto_password), NAME))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"
    await assert_silent(sock)
    resp = await new.approve(started.session_id, started.auto_password, NAME)
    assert resp.status_code == 200, resp.text
    assert [m["type"] for m in await all_messages(sock)] == ["approved"]


async def test_new_key_with_old_credential_is_refused(op: Operator) -> None:
    old = await op.enrolled("a06b-user", device_id="old-phone")
    new = op.device("new-phone")
    await new.enroll(op.issuer.mint("a06b-user"))
    assert old.enrollment is not None
    started = await op.rp().initiate("a06b-user", NAME)
    body = new.verify_body(
        started.session_id, started.auto_password, NAME, credential=old.enrollment.credential
    )
    resp = await verify(op, body)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"


# =========================================================================== scopes


async def test_x05_granting_an_unrequested_scope(op: Operator) -> None:
    device = await op.enrolled("x05-user", given_name="Ann", birthdate="1990-01-01")
    rp = op.rp()
    started = await rp.initiate("x05-user", NAME)
    sock = await open_socket(rp, started)
    for granted in (["identity:name", "identity:age_over_18"], ["identity:date_of_birth"]):
        resp = await verify(
            op, device.verify_body(started.session_id, started.auto_password, granted)
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] in ("invalid_request", "invalid_scope")
        await assert_silent(sock)
    resp = await device.approve(started.session_id, started.auto_password, NAME)
    assert resp.status_code == 200, resp.text
    (message,) = await all_messages(sock)
    assert message["type"] == "approved"
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["scope"] == "identity:name"
    assert claims["idtoken"] == {"tokenId": "x05-user", "givenName": "Ann"}


async def test_x05_unknown_scopes_are_400(op: Operator) -> None:
    device = await op.enrolled("x05b-user")
    started = await op.rp().initiate("x05b-user", NAME)
    for granted in (["admin"], ["*"], ["identity:name|x"], ["IDENTITY:NAME"], [""]):
        resp = await verify(
            op, device.verify_body(started.session_id, started.auto_password, granted)
        )
        assert resp.status_code == 400, f"{granted}: {resp.text}"
    assert await is_listed(device, started.session_id)


async def test_empty_granted_scopes_release_only_the_token_id(op: Operator) -> None:
    device = await op.enrolled("empty-user", given_name="Ann", birthdate="1990-01-01")
    rp = op.rp()
    started = await rp.initiate("empty-user", ["identity:name", "identity:age_over_18"])
    resp = await device.approve(started.session_id, started.auto_password, [])
    assert resp.status_code == 200, resp.text
    message = await rp.wait_result(started, timeout=5)
    claims = await rp.verify_jwt(message["jwt"], session_id=started.session_id)
    assert claims["scope"] == ""
    assert claims["idtoken"] == {"tokenId": "empty-user"}


async def test_granted_scope_order_is_what_the_signature_covers(op: Operator) -> None:
    device = await op.enrolled("order-user", given_name="Ann", birthdate="1990-01-01")
    rp = op.rp()
    requested = ["identity:name", "identity:age_over_18"]
    started = await rp.initiate("order-user", requested)
    signed = device.verify_body(
        started.session_id, started.auto_password, list(reversed(requested))
    )
    resp = await verify(op, {**signed, "grantedScopes": requested})  # same set, other order
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_signature"
    resp = await verify(op, signed)
    assert resp.status_code == 200, resp.text
    claims = await rp.verify_jwt(
        (await rp.wait_result(started, timeout=5))["jwt"], session_id=started.session_id
    )
    assert set(claims["scope"].split(" ")) == set(requested)
    assert claims["idtoken"] == {
        "tokenId": "order-user",
        "givenName": "Ann",
        "age_over_18": True,
    }


# =========================================================================== timestamps


async def test_timestamp_window(clocked: Operator, clock: ManualClock) -> None:
    op = clocked
    device = await op.enrolled("skew-user")
    rp = op.rp()
    started = await rp.initiate("skew-user", NAME)
    sid, otp = started.session_id, started.auto_password
    for offset in (31_000, -31_000):
        resp = await verify(op, device.verify_body(sid, otp, NAME, timestamp=ms(clock) + offset))
        assert resp.status_code == 401, f"{offset}: {resp.text}"
        assert resp.json()["error"] == "invalid_signature"
    assert await is_listed_at(op, device, clock, sid)
    resp = await verify(op, device.verify_body(sid, otp, NAME, timestamp=ms(clock) + 29_000))
    assert resp.status_code == 200, resp.text
    for offset in (-29_000, 30_000, -30_000):
        other = await rp.initiate("skew-user", NAME)
        body = device.verify_body(
            other.session_id, other.auto_password, NAME, timestamp=ms(clock) + offset
        )
        resp = await verify(op, body)
        assert resp.status_code == 200, f"{offset}: {resp.text}"


async def is_listed_at(op: Operator, device: Device, clock: ManualClock, sid: str) -> bool:
    assert device.enrollment is not None
    token_id, ts = device.enrollment.token_id, ms(clock)
    body = {
        "tokenId": token_id,
        "timestamp": ts,
        "signature": device.sign(f"{token_id}|pending|{ts}"),
    }
    resp = await op.http.post("/auth/pending", json=body)
    assert resp.status_code == 200, resp.text
    return sid in [s["sessionId"] for s in resp.json()["sessions"]]


# =========================================================================== J16


async def test_j16_signature_encodings(op: Operator) -> None:
    device = await op.enrolled("j16-user")
    rp = op.rp()
    der_signer = device.private_key

    def variants(body: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
        message = verify_message(body)
        raw = raw_signature(device, message)
        der = der_signer.sign(message.encode(), ec.ECDSA(hashes.SHA256()))
        std = ""
        for _ in range(100):
            candidate = b64url(raw_signature(device, message))
            if "-" in candidate or "_" in candidate:
                std = candidate.replace("-", "+").replace("_", "/")
                break
        assert std, "no signature with - or _ in 100 tries"
        return {
            "DER": (b64url(der), (401,)),
            "63 bytes": (b64url(raw[:63]), (401,)),
            "65 bytes": (b64url(raw + b"\x00"), (401,)),
            "66 bytes (r, s padded to 33)": (
                b64url(b"\x00" + raw[:32] + b"\x00" + raw[32:]),
                (401,),
            ),
            "padded": (b64url(raw) + "==", (400, 401)),
            "standard alphabet": (std, (400, 401)),
            "standard base64 with padding": (
                base64.b64encode(raw).decode(),
                (400, 401),
            ),
            "r = s = 0": (b64url(b"\x00" * 64), (401,)),
            "whitespace": (b64url(raw)[:40] + " " + b64url(raw)[40:], (400, 401)),
            "hex": (raw.hex(), (400, 401)),
        }

    for label in variants(device.verify_body("sess_x", "000000", NAME)):
        started = await rp.initiate("j16-user", NAME)
        body = device.verify_body(started.session_id, started.auto_password, NAME)
        signature, allowed = variants(body)[label]
        resp = await verify(op, {**body, "signature": signature})
        assert resp.status_code in allowed, f"{label}: {resp.status_code} {resp.text}"
        expected = "invalid_signature" if resp.status_code == 401 else "invalid_request"
        assert resp.json()["error"] == expected, label
        assert await is_listed(device, started.session_id), label
    # Control: the canonical form approves.
    started = await rp.initiate("j16-user", NAME)
    assert (
        await device.approve(started.session_id, started.auto_password, NAME)
    ).status_code == 200


# =========================================================================== R09


async def test_r09_concurrent_verifies_yield_one_success(
    op: Operator, redis_srv: RedisServer
) -> None:
    device = await op.enrolled("r09-user")
    rp = op.rp("typed-shop")
    started = await rp.initiate("r09-user", NAME)
    sock = await open_socket(rp, started)
    collector = asyncio.create_task(all_messages(sock, timeout=30))
    bad = wrong(started.auto_password)
    # Right codes first and then alternating, so that a right one is among the first three
    # to arrive: the session must end approved, not "Too many attempts".
    bodies = [
        device.verify_body(started.session_id, started.auto_password if i % 2 == 0 else bad, NAME)
        for i in range(100)
    ]
    async with httpx.AsyncClient(
        base_url=op.base_url, timeout=30, limits=httpx.Limits(max_connections=100)
    ) as http:
        responses = await asyncio.gather(*(http.post("/auth/verify", json=b) for b in bodies))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, statuses
    assert all(400 <= s < 500 for s in statuses if s != 200), statuses
    for r in responses:
        if r.status_code != 200:
            assert r.json()["error"] in (
                "session_not_pending",
                "invalid_otp",
                "too_many_requests",
            ), r.text
    messages = await collector
    assert [m["type"] for m in messages] == ["approved"], messages
    fails = session_fails(redis_srv, "r09-user", started.session_id)
    assert fails <= 3
    # Counters are exact: every invalid_otp answer is one counted failure.
    assert fails == sum(1 for r in responses if r.status_code == 400)
    state = redis_srv.cli("HGET", f"idtoken:{{t:r09-user}}:sess:{started.session_id}", "state")
    assert state == "approved"


async def test_r09_concurrent_wrong_codes_count_exactly(
    op: Operator, redis_srv: RedisServer
) -> None:
    device = await op.enrolled("r09b-user")
    rp = op.rp("typed-shop")
    started = await rp.initiate("r09b-user", NAME)
    sock = await open_socket(rp, started)
    collector = asyncio.create_task(all_messages(sock, timeout=30))
    bad = wrong(started.auto_password)
    bodies = [device.verify_body(started.session_id, bad, NAME) for _ in range(50)]
    async with httpx.AsyncClient(base_url=op.base_url, timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/auth/verify", json=b) for b in bodies))
    statuses = [r.status_code for r in responses]
    assert 200 not in statuses
    assert session_fails(redis_srv, "r09b-user", started.session_id) == 3
    assert statuses.count(400) == 3, statuses
    assert statuses.count(429) == 47, statuses
    assert await collector == [{"type": "rejected", "reason": "Too many attempts"}]


# =========================================================================== reject


async def test_reject_user_rejected(op: Operator) -> None:
    device = await op.enrolled("rej-user")
    rp = op.rp()
    started = await rp.initiate("rej-user", NAME)
    resp = await device.reject(started.session_id, "user_rejected")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "rejected"}
    with pytest.raises(ResultError) as info:
        await rp.wait_result(started, timeout=5)
    assert info.value.kind == "rejected" and info.value.detail == "User rejected"
    late = await device.approve(started.session_id, started.auto_password, NAME)
    assert late.status_code == 409, late.text


async def test_reject_not_me_cancels_everything_and_pauses(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    limits = {"max_pending_per_token": 5, "not_me_pause": 900}
    async with make_operator(
        services=[dict(DEFAULT_SERVICE), dict(TYPED_SERVICE)], limits=limits
    ) as op:
        device = await op.enrolled("notme-user")
        shop, typed = op.rp(), op.rp("typed-shop")
        sessions = [
            (shop, await shop.initiate("notme-user", NAME)),
            (shop, await shop.initiate("notme-user", NAME)),
            (typed, await typed.initiate("notme-user", NAME)),
        ]
        resp = await device.reject(sessions[0][1].session_id, "not_me")
        assert resp.status_code == 200, resp.text
        for rp, started in sessions:
            with pytest.raises(ResultError) as info:
                await rp.wait_result(started, timeout=5)
            assert info.value.kind == "rejected" and info.value.detail == "Not me"
        assert await device.pending() == []
        for rp in (shop, typed):
            resp = await op.http.post(
                "/auth/initiate", json={"tokenId": "notme-user", "serviceId": rp.service_id}
            )
            assert resp.status_code == 429, resp.text
            assert resp.json()["error"] == "too_many_requests"
            assert 1 <= int(resp.headers["retry-after"]) <= 900


async def test_reject_needs_the_right_key(op: Operator) -> None:
    victim = await op.enrolled("rej-victim", device_id="victim-phone")
    mallory = await op.enrolled("rej-mallory", device_id="mallory-phone")
    rp = op.rp()
    started = await rp.initiate("rej-victim", NAME)
    sock = await open_socket(rp, started)
    for reason in ("user_rejected", "not_me"):
        body = mallory.reject_body(started.session_id, reason)
        resp = await op.http.post("/auth/reject", json={**body, "tokenId": "rej-victim"})
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"] == "invalid_signature"
        resp = await op.http.post("/auth/reject", json=body)  # Mallory's own tokenId
        assert resp.status_code in (401, 403), resp.text
    # A reject signed over another session's id.
    other = await rp.initiate("rej-victim", NAME)
    body = victim.reject_body(other.session_id)
    resp = await op.http.post("/auth/reject", json={**body, "sessionId": started.session_id})
    assert resp.status_code == 401, resp.text
    await assert_silent(sock)
    assert await is_listed(victim, started.session_id)
    # No pause was set: a new login still starts.
    assert (await rp.initiate("rej-victim", NAME)).session_id


# =========================================================================== pending


async def test_pending_lists_sessions_for_the_right_key_only(op: Operator) -> None:
    device = await op.enrolled("pend-user")
    shop = await op.rp().initiate("pend-user", NAME)
    typed = await op.rp("typed-shop").initiate("pend-user", NAME)
    sessions = {s["sessionId"]: s for s in await device.pending()}
    assert set(sessions) == {shop.session_id, typed.session_id}
    assert sessions[shop.session_id] == {
        "sessionId": shop.session_id,
        "serviceId": "shop",
        "serviceName": "Example Shop",
        "scopes": NAME,
        "expiresAt": shop.expires_at,
        "autoPassword": shop.auto_password,
    }
    assert sessions[typed.session_id] == {
        "sessionId": typed.session_id,
        "serviceId": "typed-shop",
        "serviceName": "Typed Shop",
        "scopes": NAME,
        "expiresAt": typed.expires_at,
    }

    stranger = op.device("stranger")
    ts = int(time.time() * 1000)
    wrong_key = {
        "tokenId": "pend-user",
        "timestamp": ts,
        "signature": stranger.sign(f"pend-user|pending|{ts}"),
    }
    unknown = {
        "tokenId": "nobody-here",
        "timestamp": ts,
        "signature": stranger.sign(f"nobody-here|pending|{ts}"),
    }
    signed = device.pending_body()
    other_message = {**signed, "timestamp": signed["timestamp"] + 1}
    bodies = []
    for label, body in (
        ("wrong key", wrong_key),
        ("unknown", unknown),
        ("other ts", other_message),
    ):
        resp = await op.http.post("/auth/pending", json=body)
        assert resp.status_code == 401, f"{label}: {resp.text}"
        assert shop.auto_password not in resp.text
        bodies.append(resp.json())
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["error"] == "invalid_signature"


# =========================================================================== O04


async def test_o04_every_secret_is_compared_with_compare_digest(
    make_operator: OperatorFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O04: the client secret, the wsToken and the OTP are each compared in constant time,
    and a correct prefix gets nothing more than any other wrong value."""
    secret = "o04-client-secret-0123456789"
    service = {**DEFAULT_SERVICE, "client_secret_sha256": secret_digest(secret)}
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    async with make_operator(services=[service]) as op:
        device = await op.enrolled("o04-user")
        monkeypatch.setattr(hmac, "compare_digest", spy)
        # The client secret, with a correct prefix, then right.
        prefix = {"Authorization": f"Bearer {secret[:-1]}x"}
        body = {"tokenId": "o04-user", "serviceId": "shop"}
        refused = await op.http.post("/auth/initiate", json=body, headers=prefix)
        assert refused.status_code == 401, refused.text
        assert compared, "the client secret was not compared with compare_digest"
        compared.clear()
        rp = op.rp(client_secret=secret)
        started = await rp.initiate("o04-user", NAME)
        assert compared
        # The wsToken: a correct prefix is refused like any wrong token (4001), then right.
        compared.clear()
        forged = dataclasses.replace(started, ws_token=started.ws_token[:-1] + "x")
        async with websockets.connect(rp.socket_url(forged), compression=None) as sock:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(sock.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        assert compared, "the wsToken was not compared with compare_digest"
        # The OTP: one wrong last digit (the rest a correct prefix) is a wrong code.
        compared.clear()
        near = started.auto_password[:-1] + str((int(started.auto_password[-1]) + 1) % 10)
        resp = await verify(op, device.verify_body(started.session_id, near, NAME))
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_otp"
        assert (6, 6) in compared, "the OTP was not compared with compare_digest"
