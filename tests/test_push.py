"""Web Push delivery against a real loopback push service (catalogue P04–P06)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import stat
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idtoken.clock import ManualClock, SystemClock
from idtoken.jose import b64url_decode, parse_compact, verifier_for
from idtoken.push.base import PushOutcome, PushResult, PushSubscription
from idtoken.push.dispatch import PushDispatcher
from idtoken.push.vapid import load_or_create_vapid_key, sign_vapid_jwt, vapid_public_key_b64
from idtoken.push.webpush import WebPushNotifier, push_topic
from idtoken.urls import AddressPolicy
from pushreceiver import PushReceiver, Respond, Stall, verify_vapid

SUBJECT = "mailto:ops@example.com"
# The receiver listens on loopback, which the default policy refuses.
LOOPBACK = AddressPolicy.parse(["127.0.0.0/8", "::1/128"])
PAYLOAD: dict[str, Any] = {
    "type": "auth_request",
    "sessionId": "s-7Qk2",
    "serviceId": "shop",
    "serviceName": "Example Shop",
    "scopes": ["identity:name"],
    "expiresAt": 1_900_000_000,
    "autoPassword": "493817",
}


@pytest.fixture
def vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def receiver() -> AsyncIterator[PushReceiver]:
    async with PushReceiver() as push_service:
        yield push_service


@pytest.fixture
async def notifier(vapid_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[WebPushNotifier]:
    webpush = WebPushNotifier(vapid_key, SUBJECT, clock=SystemClock(), endpoint_policy=LOOPBACK)
    yield webpush
    await webpush.aclose()


async def push(
    notifier: WebPushNotifier,
    subscription: PushSubscription,
    *,
    life: float = 60.0,
    ttl: int | None = None,
    payload: Mapping[str, Any] = PAYLOAD,
    topic: str = "s-7Qk2",
) -> PushResult:
    return await notifier.send(
        subscription,
        payload,
        ttl=int(life) if ttl is None else ttl,
        topic=topic,
        deadline=time.time() + life,
    )


# --- what the push service receives (P05) ---------------------------------------------------


async def test_payload_decrypts_and_request_is_rfc_conformant(
    receiver: PushReceiver, notifier: WebPushNotifier, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    server_key = vapid_public_key_b64(vapid_key)
    assert notifier.application_server_key == server_key
    subscription, handle = receiver.new_subscription(application_server_key=server_key)

    before = time.time()
    result = await push(notifier, subscription, life=60)

    assert result.outcome is PushOutcome.SENT
    assert (result.attempts, result.status) == (1, 201)
    assert handle.payloads == [PAYLOAD]
    [request] = handle.requests
    assert request.problems == []
    assert request.headers["content-encoding"] == "aes128gcm"
    assert 0 <= int(request.headers["ttl"]) <= 60
    assert request.headers["urgency"] == "high"
    assert request.headers["topic"] == "s-7Qk2"
    assert len(request.body) <= 4096
    assert re.fullmatch(
        r"vapid t=[\w-]+\.[\w-]+\.[\w-]+, k=[\w-]+", request.headers["authorization"]
    )
    assert request.vapid_key == server_key
    claims = request.vapid_claims
    assert claims is not None
    assert claims["aud"] == receiver.origin
    assert claims["sub"] == SUBJECT
    assert before < claims["exp"] <= before + 24 * 3600 + 1


async def test_typed_mode_payload_without_code_arrives_as_sent(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    # P04 is decided by the session layer; the transport must not add anything to the payload.
    typed = {k: v for k, v in PAYLOAD.items() if k != "autoPassword"}
    subscription, handle = receiver.new_subscription()
    assert (await push(notifier, subscription, payload=typed)).outcome is PushOutcome.SENT
    assert handle.payloads == [typed]
    assert "autoPassword" not in handle.payloads[0]


def test_topics_are_made_to_fit_rfc_8030() -> None:
    assert push_topic("AbZ09_-") == "AbZ09_-"
    assert push_topic("x" * 32) == "x" * 32
    for unfit in ("x" * 33, "token:42", "a b", "é"):
        topic = push_topic(unfit)
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", topic)
        assert topic == push_topic(unfit)  # deterministic, so replacement still works
    assert push_topic("x" * 33) != push_topic("x" * 34)


async def test_unfit_topic_is_hashed_on_the_wire(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription()
    result = await push(notifier, subscription, topic="token/with:odd chars")
    assert result.outcome is PushOutcome.SENT
    assert handle.requests[0].headers["topic"] == push_topic("token/with:odd chars")


async def test_ttl_never_exceeds_the_remaining_life(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription(500, 201)
    result = await push(notifier, subscription, life=5, ttl=3600)
    assert result.outcome is PushOutcome.RETRIED
    first, second = (int(r.headers["ttl"]) for r in handle.requests)
    assert first <= 5
    assert second <= 4  # the retry starts 0.5 s later and is clamped to what is left


async def test_vapid_token_is_cached_per_audience(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    async with PushReceiver() as other_service:
        sub_a1, handle_a1 = receiver.new_subscription()
        sub_a2, handle_a2 = receiver.new_subscription()
        sub_b, handle_b = other_service.new_subscription()
        for subscription in (sub_a1, sub_a2, sub_b):
            assert (await push(notifier, subscription)).outcome is PushOutcome.SENT
        auth_a1 = handle_a1.requests[0].headers["authorization"]
        assert handle_a2.requests[0].headers["authorization"] == auth_a1
        [request_b] = handle_b.requests
        assert request_b.problems == []
        assert request_b.vapid_claims is not None
        assert request_b.vapid_claims["aud"] == other_service.origin


async def test_vapid_token_keeps_its_form_and_verifies(
    receiver: PushReceiver, notifier: WebPushNotifier, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    """The VAPID JWT comes from the one JWS signer (jose.sign_compact) in the exact form push
    services have always been sent: header, then claims in aud/exp/sub order, no spaces."""
    subscription, handle = receiver.new_subscription()
    assert (await push(notifier, subscription)).outcome is PushOutcome.SENT
    [request] = handle.requests
    assert request.problems == []
    token = request.headers["authorization"].removeprefix("vapid t=").split(",")[0]
    head, claims, signature = token.split(".")
    assert b64url_decode(head) == b'{"typ":"JWT","alg":"ES256"}'
    assert request.vapid_claims is not None
    exp = request.vapid_claims["exp"]
    expected = f'{{"aud":"{receiver.origin}","exp":{exp},"sub":"{SUBJECT}"}}'
    assert b64url_decode(claims) == expected.encode()
    assert len(b64url_decode(signature)) == 64
    # Verified by the operator's strict verifier too, pinned to ES256 and the VAPID key.
    parsed = parse_compact(token)
    verifier_for(vapid_key.public_key(), "ES256").verify(parsed)


async def test_one_connection_is_reused_across_pushes(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    handles = []
    for _ in range(4):
        subscription, handle = receiver.new_subscription()
        handles.append(handle)
        assert (await push(notifier, subscription)).outcome is PushOutcome.SENT
    assert all(len(h.requests) == 1 for h in handles)
    assert len(receiver.requests) == 4
    assert len(receiver.connections) == 1


async def test_logs_name_the_origin_only(
    receiver: PushReceiver, notifier: WebPushNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="idtoken.push")
    subscription, _ = receiver.new_subscription(500, 410)
    assert (await push(notifier, subscription)).outcome is PushOutcome.DEAD
    records = [r for r in caplog.records if r.name == "idtoken.push"]
    assert any(r.levelno == logging.INFO and "dead" in r.getMessage() for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert receiver.origin in text
    for secret in ("/push/", subscription.p256dh, subscription.auth, "493817"):
        assert secret not in text
    assert "/push/" not in repr(subscription)


async def test_receiver_refuses_a_bad_vapid_identity(
    receiver: PushReceiver, notifier: WebPushNotifier, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    # The receiver's checks are live: a push signed by another key is refused like FCM would.
    other_key = vapid_public_key_b64(ec.generate_private_key(ec.SECP256R1()))
    subscription, handle = receiver.new_subscription(application_server_key=other_key)
    result = await push(notifier, subscription)
    assert (result.outcome, result.status) == (PushOutcome.FAILED, 403)
    assert handle.requests[0].problems == ["VAPID key differs from the subscription's"]

    now = time.time()
    for aud, exp, problem in [
        ("https://elsewhere.example", int(now) + 60, "aud"),
        (receiver.origin, int(now) - 1, "past"),
        (receiver.origin, int(now) + 25 * 3600, "24 h"),
    ]:
        token = sign_vapid_jwt(vapid_key, aud=aud, sub=SUBJECT, exp=exp)
        header = f"vapid t={token}, k={vapid_public_key_b64(vapid_key)}"
        _, _, problems = verify_vapid(header, audience=receiver.origin, now=now)
        assert len(problems) == 1
        assert problem in problems[0]


# --- push service failures (P06) ------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_subscription_is_dead_at_once(
    receiver: PushReceiver, notifier: WebPushNotifier, status: int
) -> None:
    subscription, handle = receiver.new_subscription(status)
    result = await push(notifier, subscription)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.DEAD, 1, status)
    assert len(handle.requests) == 1


async def test_429_waits_for_retry_after_seconds(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription(Respond(429, {"Retry-After": "1"}), 201)
    result = await push(notifier, subscription)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.RETRIED, 2, 201)
    first, second = handle.requests
    assert second.monotonic - first.monotonic >= 0.9
    assert handle.payloads == [PAYLOAD, PAYLOAD]


async def test_429_understands_an_http_date(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    retry_at = formatdate(time.time() + 1, usegmt=True)
    subscription, _ = receiver.new_subscription(Respond(429, {"Retry-After": retry_at}), 201)
    result = await push(notifier, subscription)
    assert (result.outcome, result.attempts) == (PushOutcome.RETRIED, 2)


async def test_retry_after_beyond_the_deadline_expires_without_waiting(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription(Respond(429, {"Retry-After": "20"}), 201)
    started = time.monotonic()
    result = await push(notifier, subscription, life=5)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.EXPIRED, 1, 429)
    assert time.monotonic() - started < 2
    assert len(handle.requests) == 1


async def test_server_error_then_success_is_retried(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription(500, 201)
    result = await push(notifier, subscription)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.RETRIED, 2, 201)
    assert handle.requests[1].monotonic - handle.requests[0].monotonic >= 0.4


async def test_server_error_forever_fails_after_max_attempts(
    receiver: PushReceiver, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    webpush = WebPushNotifier(
        vapid_key, SUBJECT, clock=SystemClock(), max_attempts=3, endpoint_policy=LOOPBACK
    )
    try:
        subscription, handle = receiver.new_subscription(503)
        result = await push(webpush, subscription, life=60)
    finally:
        await webpush.aclose()
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.FAILED, 3, 503)
    assert len(handle.requests) == 3
    assert result.elapsed >= 1.4  # backoff 0.5 s + 1 s


async def test_server_error_forever_expires_with_the_session(
    receiver: PushReceiver, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    webpush = WebPushNotifier(
        vapid_key, SUBJECT, clock=SystemClock(), max_attempts=50, endpoint_policy=LOOPBACK
    )
    try:
        subscription, handle = receiver.new_subscription(500)
        started = time.monotonic()
        result = await push(webpush, subscription, life=2.0)
        elapsed = time.monotonic() - started
    finally:
        await webpush.aclose()
    assert result.outcome is PushOutcome.EXPIRED
    assert result.attempts == len(handle.requests) >= 2
    assert elapsed < 2.5  # never sleeps past the deadline


async def test_stalled_push_service_is_abandoned_at_the_deadline(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, _ = receiver.new_subscription(Stall(30))
    started = time.monotonic()
    result = await push(notifier, subscription, life=2.0)
    assert result.outcome in (PushOutcome.EXPIRED, PushOutcome.FAILED)
    assert result.status is None
    assert time.monotonic() - started < 10


async def test_request_timeout_applies_to_each_attempt(
    receiver: PushReceiver, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    webpush = WebPushNotifier(
        vapid_key, SUBJECT, clock=SystemClock(), request_timeout=0.3, endpoint_policy=LOOPBACK
    )
    try:
        subscription, handle = receiver.new_subscription(Stall(30), 201)
        result = await push(webpush, subscription, life=30)
    finally:
        await webpush.aclose()
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.RETRIED, 2, 201)
    assert len(handle.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_other_client_errors_fail_without_retry(
    receiver: PushReceiver, notifier: WebPushNotifier, status: int
) -> None:
    subscription, handle = receiver.new_subscription(status)
    result = await push(notifier, subscription)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.FAILED, 1, status)
    assert len(handle.requests) == 1


async def test_redirects_are_not_followed(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    elsewhere, elsewhere_handle = receiver.new_subscription()
    subscription, _ = receiver.new_subscription(Respond(307, {"Location": elsewhere.endpoint}))
    result = await push(notifier, subscription)
    assert (result.outcome, result.status) == (PushOutcome.FAILED, 307)
    assert elsewhere_handle.requests == []


async def test_unreachable_push_service_does_not_raise(notifier: WebPushNotifier) -> None:
    async with PushReceiver() as gone:
        subscription, _ = gone.new_subscription()
    result = await push(notifier, subscription, life=1.2)
    assert result.outcome in (PushOutcome.EXPIRED, PushOutcome.FAILED)
    assert result.status is None
    assert result.attempts >= 2


async def test_past_deadline_sends_nothing(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription()
    result = await notifier.send(subscription, PAYLOAD, ttl=0, topic="t", deadline=time.time() - 1)
    assert (result.outcome, result.attempts) == (PushOutcome.EXPIRED, 0)
    assert handle.requests == []


async def test_unsendable_payload_fails_without_a_request(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    subscription, handle = receiver.new_subscription()
    too_big = await push(notifier, subscription, payload={"pad": "x" * 4000})
    not_json = await push(notifier, subscription, payload={"when": object()})
    assert (too_big.outcome, too_big.attempts) == (PushOutcome.FAILED, 0)
    assert (not_json.outcome, not_json.attempts) == (PushOutcome.FAILED, 0)
    assert handle.requests == []
    largest = await push(notifier, subscription, payload={"pad": "x" * (3993 - 10)})
    assert largest.outcome is PushOutcome.SENT
    assert handle.requests[0].problems == []


async def test_manual_clock_sets_vapid_expiry(
    receiver: PushReceiver, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    clock = ManualClock(time.time() - 3600)
    webpush = WebPushNotifier(vapid_key, SUBJECT, clock=clock, endpoint_policy=LOOPBACK)
    try:
        subscription, handle = receiver.new_subscription()
        result = await webpush.send(
            subscription, PAYLOAD, ttl=60, topic="t", deadline=clock.now() + 60
        )
    finally:
        await webpush.aclose()
    assert result.outcome is PushOutcome.SENT
    claims = handle.requests[0].vapid_claims
    assert claims is not None
    assert claims["exp"] == int(clock.now()) + 12 * 3600


async def test_closed_notifier_refuses_quietly(
    receiver: PushReceiver, vapid_key: ec.EllipticCurvePrivateKey
) -> None:
    webpush = WebPushNotifier(vapid_key, SUBJECT, clock=SystemClock(), endpoint_policy=LOOPBACK)
    subscription, handle = receiver.new_subscription()
    assert (await push(webpush, subscription)).outcome is PushOutcome.SENT
    await webpush.aclose()
    await webpush.aclose()
    assert (await push(webpush, subscription)).outcome is PushOutcome.FAILED
    assert len(handle.requests) == 1


def test_notifier_rejects_bad_settings(vapid_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="vapid_subject"):
        WebPushNotifier(vapid_key, "ops@example.com", clock=SystemClock())
    with pytest.raises(ValueError, match="max_attempts"):
        WebPushNotifier(vapid_key, SUBJECT, clock=SystemClock(), max_attempts=0)


# --- background dispatch (P06: initiate never waits on the push service) ---------------------


def push_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("idtoken-push:")]


async def test_dispatch_returns_before_the_push_runs(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    results: list[tuple[str, PushResult]] = []

    async def on_result(key: str, _: PushSubscription, result: PushResult) -> None:
        results.append((key, result))

    dispatcher = PushDispatcher(notifier, on_result=on_result)
    subscription, handle = receiver.new_subscription()
    assert not inspect.iscoroutinefunction(PushDispatcher.dispatch)  # a plain call
    dispatcher.dispatch(
        "s-1", subscription, PAYLOAD, ttl=60, topic="s-1", deadline=time.time() + 60
    )
    assert dispatcher.in_flight == 1
    assert handle.requests == []  # the push has not even started
    await receiver.wait_for_requests(1)
    async with asyncio.timeout(5):
        while dispatcher.in_flight:
            await asyncio.sleep(0.01)
    assert [(k, r.outcome) for k, r in results] == [("s-1", PushOutcome.SENT)]
    assert handle.payloads == [PAYLOAD]
    await dispatcher.aclose()


async def test_dispatch_with_a_stalled_service_is_instant_and_aclose_leaks_nothing(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    dispatcher = PushDispatcher(notifier)
    subscription, _ = receiver.new_subscription(Stall(30))
    started = time.monotonic()
    for n in range(5):
        dispatcher.dispatch(
            f"s-{n}", subscription, PAYLOAD, ttl=60, topic=f"s-{n}", deadline=time.time() + 60
        )
    assert time.monotonic() - started < 0.1
    assert dispatcher.in_flight == 5
    await asyncio.sleep(0.2)  # let the requests reach the stalled service
    assert dispatcher.in_flight == 5

    closing = time.monotonic()
    await dispatcher.aclose(timeout=0.2)
    assert time.monotonic() - closing < 2
    assert dispatcher.in_flight == 0
    assert push_tasks() == []
    # Closed: later pushes are dropped, not started.
    dispatcher.dispatch("late", subscription, PAYLOAD, ttl=60, topic="t", deadline=time.time() + 60)
    assert dispatcher.in_flight == 0
    assert push_tasks() == []


async def test_dead_subscription_is_reported_to_on_result(
    receiver: PushReceiver, notifier: WebPushNotifier
) -> None:
    dead: list[PushSubscription] = []

    async def on_result(_: str, subscription: PushSubscription, result: PushResult) -> None:
        if result.outcome is PushOutcome.DEAD:
            dead.append(subscription)

    dispatcher = PushDispatcher(notifier, on_result=on_result)
    subscription, _ = receiver.new_subscription(410)
    dispatcher.dispatch("s-1", subscription, PAYLOAD, ttl=60, topic="t", deadline=time.time() + 60)
    await dispatcher.aclose(timeout=5)
    assert dead == [subscription]


class ExplodingNotifier:
    """A Notifier whose send raises: the dispatcher must contain it."""

    def __init__(self) -> None:
        self.closed = False

    async def send(
        self,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        deadline: float,
    ) -> PushResult:
        raise RuntimeError("boom")

    async def aclose(self) -> None:
        self.closed = True


async def test_failures_inside_tasks_are_logged_not_propagated(
    receiver: PushReceiver, notifier: WebPushNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    exploding = ExplodingNotifier()
    subscription, _ = receiver.new_subscription()
    crashing = PushDispatcher(exploding)
    crashing.dispatch("s-1", subscription, PAYLOAD, ttl=60, topic="t", deadline=time.time() + 60)
    await crashing.aclose(timeout=5)
    assert exploding.closed

    async def bad_callback(*_: object) -> None:
        raise RuntimeError("store down")

    failing_callback = PushDispatcher(notifier, on_result=bad_callback)
    failing_callback.dispatch(
        "s-2", subscription, PAYLOAD, ttl=60, topic="t", deadline=time.time() + 60
    )
    await failing_callback.aclose(timeout=5)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("s-1" in m and "crashed" in m for m in messages)
    assert any("s-2" in m and "handler" in m for m in messages)
    assert push_tasks() == []


# --- VAPID key file -------------------------------------------------------------------------


def test_vapid_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keys" / "vapid.pem"
    created = load_or_create_vapid_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    reloaded = load_or_create_vapid_key(path)
    assert reloaded.private_numbers() == created.private_numbers()
    assert sorted(p.name for p in path.parent.iterdir()) == ["vapid.pem"]

    public = vapid_public_key_b64(reloaded)
    assert re.fullmatch(r"[A-Za-z0-9_-]{87}", public)
    assert public == vapid_public_key_b64(created.public_key())


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: _pem(ec.generate_private_key(ec.SECP384R1())), id="p384"),
        pytest.param(
            lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), id="rsa"
        ),
        pytest.param(lambda: b"not a key", id="garbage"),
        pytest.param(
            lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            id="encrypted",
        ),
    ],
)
def test_vapid_key_file_must_be_an_unencrypted_p256_key(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "vapid.pem"
    path.write_bytes(content())
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_or_create_vapid_key(path)


def test_unreadable_vapid_key_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    path.mkdir()  # unreadable as a file, even for root
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_or_create_vapid_key(path)


# --- subscriptions --------------------------------------------------------------------------


def _key_with_url_safe_characters() -> str:
    # The "standard alphabet" case below needs a key whose base64url has '-' or '_' in it.
    while True:
        key = vapid_public_key_b64(ec.generate_private_key(ec.SECP256R1()))
        if "-" in key or "_" in key:
            return key


P256DH = _key_with_url_safe_characters()
AUTH = "AAECAwQFBgcICQoLDA0ODw"  # 16 bytes
ENDPOINT = "https://fcm.googleapis.com/fcm/send/abc:def"


def subscription_json(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"endpoint": ENDPOINT, "keys": {"p256dh": P256DH, "auth": AUTH}}
    keys = changes.pop("keys", {})
    value.update(changes)
    value["keys"] = {**value["keys"], **keys} if isinstance(keys, dict) else keys
    return value


def test_subscription_round_trips() -> None:
    parsed = PushSubscription.parse(subscription_json())
    assert parsed == PushSubscription(ENDPOINT, P256DH, AUTH)
    assert parsed.to_json() == subscription_json()
    assert PushSubscription.parse(parsed.to_json()) == parsed
    assert parsed.origin == "https://fcm.googleapis.com"
    # Browsers' PushSubscription.toJSON() adds expirationTime; it is accepted and dropped.
    assert PushSubscription.parse(subscription_json(expirationTime=None)) == parsed
    for loopback in ("http://127.0.0.1:8080/p", "http://localhost/p", "http://[::1]:9/p"):
        assert PushSubscription.parse(subscription_json(endpoint=loopback)).endpoint == loopback
    assert PushSubscription.parse(subscription_json(endpoint="http://[::1]:9/p")).origin == (
        "http://[::1]:9"
    )


def _drop_auth() -> dict[str, Any]:
    value = subscription_json()
    del value["keys"]["auth"]
    return value


def _drop_endpoint() -> dict[str, Any]:
    value = subscription_json()
    del value["endpoint"]
    return value


_COMPRESSED = "A" + P256DH[1:44]  # a 33-byte key, wrong form

BAD_SUBSCRIPTIONS: list[Any] = [
    None,
    [],
    "https://push.example/x",
    subscription_json(extra=1),
    subscription_json(keys={"extra": "x"}),
    subscription_json(expirationTime="soon"),
    subscription_json(keys="p256dh"),
    _drop_auth(),
    _drop_endpoint(),
    subscription_json(endpoint=123),
    subscription_json(endpoint=""),
    subscription_json(endpoint="https://push.example/" + "a" * 1024),
    subscription_json(endpoint="http://push.example/x"),
    subscription_json(endpoint="http://10.0.0.1/x"),
    subscription_json(endpoint="ftp://push.example/x"),
    subscription_json(endpoint="file:///etc/passwd"),
    subscription_json(endpoint="https:///nohost"),
    subscription_json(endpoint="https://user:pw@push.example/x"),
    subscription_json(endpoint="https://push.example/x#frag"),
    subscription_json(endpoint="https://push.example:99999/x"),
    subscription_json(endpoint="https://push.example/x y"),
    subscription_json(endpoint="https://push.example/x\r\nX-Evil: 1"),
    subscription_json(endpoint="https://push.éxample/x"),
    subscription_json(keys={"p256dh": 123}),
    subscription_json(keys={"p256dh": ""}),
    subscription_json(keys={"p256dh": P256DH + "="}),
    subscription_json(keys={"p256dh": P256DH.replace("-", "+").replace("_", "/")}),
    subscription_json(keys={"p256dh": _COMPRESSED}),
    subscription_json(keys={"p256dh": "BA" + "A" * 85}),  # right length, not on the curve
    subscription_json(keys={"auth": AUTH + "AA"}),
    subscription_json(keys={"auth": AUTH[:-2]}),
    subscription_json(keys={"auth": "AAECAwQFBgcICQoLDA0ODx"}),  # non-canonical trailing bits
    subscription_json(keys={"auth": None}),
    subscription_json(keys={"auth": True}),
]


@pytest.mark.parametrize("value", BAD_SUBSCRIPTIONS)
def test_bad_subscriptions_are_refused(value: Any) -> None:
    with pytest.raises(ValueError) as caught:
        PushSubscription.parse(value)
    assert "X-Evil" not in str(caught.value)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError):
        PushSubscription("http://push.example/x", P256DH, AUTH)
    with pytest.raises(ValueError):
        PushSubscription(ENDPOINT, P256DH, "short")
