"""A real Web Push service on 127.0.0.1 for tests: it checks and decrypts what it is sent.

It plays the part of FCM or Mozilla autopush closely enough to test the operator end to end:

* each subscription it hands out has its own P-256 key pair and 16-byte auth secret, like a
  browser's, so the payload is really decrypted (RFC 8291, with ``http_ece``);
* the VAPID ``Authorization`` header is verified as RFC 8292 asks (ES256 signature by ``k``,
  ``aud`` = this receiver's origin, ``exp`` in the future and at most 24 h away, ``sub``);
  a missing header is answered 401, an invalid one 403, like real push services do;
* a body that is not one aes128gcm record of at most 4096 bytes is answered 400/413;
* otherwise each subscription answers from its script, e.g. ``[429, 201]`` or ``[Stall(30)]``;
  the last behaviour repeats, so ``[500]`` means "500 forever".

Usage::

    async with PushReceiver() as receiver:
        subscription, handle = receiver.new_subscription(Respond(429, {"Retry-After": "1"}), 201)
        ...  # push to subscription
        assert handle.payloads == [{"type": "auth_request", ...}]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from idtoken.push.base import PushSubscription

MAX_PUSH_BODY = 4096
MAX_VAPID_LIFETIME = 24 * 3600


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Respond:
    """Answer with ``status`` and ``headers`` (e.g. ``Respond(429, {"Retry-After": "1"})``)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stall:
    """Hold the request for ``seconds`` (or until the receiver stops), then answer ``status``."""

    seconds: float
    status: int = 201


Behaviour = int | Respond | Stall


@dataclass
class ReceivedPush:
    """One request as the push service saw it."""

    received_at: float  # time.time() when the request arrived
    monotonic: float  # time.monotonic() when the request arrived
    headers: dict[str, str]  # lower-cased names
    body: bytes
    peer: tuple[Any, ...]  # the client's (host, port): one per TCP connection
    vapid_claims: dict[str, Any] | None = None
    vapid_key: str | None = None  # the `k` parameter
    payload: Any = None  # the decrypted JSON, if it decrypted
    problems: list[str] = field(default_factory=list)  # protocol violations found
    status: int | None = None  # what the receiver answered (None while stalled)


class SubscriptionHandle:
    """The receiving side of one subscription: its keys, its script, what arrived."""

    def __init__(
        self,
        subscription: PushSubscription,
        private_key: ec.EllipticCurvePrivateKey,
        auth_secret: bytes,
        behaviours: list[Behaviour],
        application_server_key: str | None,
    ) -> None:
        self.subscription = subscription
        self.private_key = private_key
        self.auth_secret = auth_secret
        self.application_server_key = application_server_key
        self.requests: list[ReceivedPush] = []
        self._behaviours = behaviours or [201]

    def script(self, *behaviours: Behaviour) -> None:
        """Replace the remaining behaviours; the last one repeats."""
        self._behaviours = list(behaviours) or [201]

    def next_behaviour(self) -> Behaviour:
        if len(self._behaviours) > 1:
            return self._behaviours.pop(0)
        return self._behaviours[0]

    @property
    def payloads(self) -> list[Any]:
        """Decrypted payloads of the requests that decrypted, in order."""
        return [r.payload for r in self.requests if r.payload is not None]

    @property
    def delivered(self) -> list[ReceivedPush]:
        """Requests answered with 2xx."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]


class PushReceiver:
    """An aiohttp push service on a free loopback port, started and stopped in the test's loop."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self._host = host
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._subscriptions: dict[str, SubscriptionHandle] = {}
        self.requests: list[ReceivedPush] = []
        self.port = 0

    async def __aenter__(self) -> PushReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push/{sid}", self._handle)
        # handler_cancellation: a client that gives up on a stalled request frees its handler.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def connections(self) -> set[tuple[Any, ...]]:
        """Distinct client TCP connections seen (by peer address)."""
        return {r.peer for r in self.requests}

    def new_subscription(
        self, *behaviours: Behaviour, application_server_key: str | None = None
    ) -> tuple[PushSubscription, SubscriptionHandle]:
        """A fresh subscription like a browser's; optionally bound to a VAPID public key."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth_secret = os.urandom(16)
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        sid = secrets.token_urlsafe(16)
        subscription = PushSubscription(
            endpoint=f"{self.origin}/push/{sid}",
            p256dh=_b64url(public),
            auth=_b64url(auth_secret),
        )
        handle = SubscriptionHandle(
            subscription, private_key, auth_secret, list(behaviours), application_server_key
        )
        self._subscriptions[sid] = handle
        return subscription, handle

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` requests have been answered."""
        async with asyncio.timeout(timeout):
            while sum(r.status is not None for r in self.requests) < count:
                await asyncio.sleep(0.01)

    async def _handle(self, request: web.Request) -> web.Response:
        handle = self._subscriptions.get(request.match_info["sid"])
        body = await request.read()
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        received = ReceivedPush(
            received_at=time.time(),
            monotonic=time.monotonic(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            peer=tuple(peer) if peer else (),
        )
        self.requests.append(received)
        if handle is None:
            received.status = 404
            return web.Response(status=404)
        handle.requests.append(received)
        status = self._check(received, handle)
        if status is not None:
            received.status = status
            return web.Response(status=status, text="; ".join(received.problems))
        behaviour = handle.next_behaviour()
        headers: Mapping[str, str] = {}
        if isinstance(behaviour, Stall):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), behaviour.seconds)
            status = behaviour.status
        elif isinstance(behaviour, Respond):
            status, headers = behaviour.status, behaviour.headers
        else:
            status = behaviour
        received.status = status
        if status == 201:
            headers = {"Location": f"{self.origin}/message/{secrets.token_urlsafe(8)}", **headers}
        return web.Response(status=status, headers=headers)

    def _check(self, received: ReceivedPush, handle: SubscriptionHandle) -> int | None:
        """Check the request as a push service would; a status to answer if it is refused."""
        headers = received.headers
        authorization = headers.get("authorization")
        if authorization is None:
            received.problems.append("Authorization header missing")
            return 401
        claims, key, problems = verify_vapid(authorization, audience=self.origin, now=time.time())
        received.vapid_claims, received.vapid_key = claims, key
        if handle.application_server_key is not None and key != handle.application_server_key:
            problems.append("VAPID key differs from the subscription's")
        if problems:
            received.problems.extend(problems)
            return 403
        ttl = headers.get("ttl")
        if ttl is None or not ttl.isdigit():
            received.problems.append("TTL header missing or not a non-negative integer")
            return 400
        if headers.get("content-encoding") != "aes128gcm":
            received.problems.append("Content-Encoding is not aes128gcm")
            return 400
        if len(received.body) > MAX_PUSH_BODY:
            received.problems.append("body larger than 4096 bytes")
            return 413
        try:
            received.payload = decrypt(received.body, handle.private_key, handle.auth_secret)
        except ValueError as exc:
            received.problems.append(f"payload does not decrypt: {exc}")
            return 400
        return None


def decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> Any:
    """Decrypt one aes128gcm Web Push record (RFC 8291) and parse it as JSON."""
    if len(body) < 21 + 65:
        raise ValueError("too short for an aes128gcm header")
    record_size = struct.unpack("!L", body[16:20])[0]
    key_id_length = body[20]
    if key_id_length != 65:
        raise ValueError("keyid is not an uncompressed P-256 key")
    if len(body) - 21 - key_id_length > record_size:
        raise ValueError("more than one record")
    try:
        plaintext = http_ece.decrypt(
            body, private_key=private_key, auth_secret=auth_secret, version="aes128gcm"
        )
    except http_ece.ECEException as exc:
        raise ValueError(exc.message) from None
    return json.loads(plaintext)


def verify_vapid(
    authorization: str, *, audience: str, now: float
) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """Check an RFC 8292 ``vapid t=..., k=...`` header: (claims, k, problems)."""
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() != "vapid":
        return None, None, [f"Authorization scheme is {scheme!r}, not vapid"]
    params: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            return None, None, ["malformed vapid parameters"]
        params[name.strip().lower()] = value.strip()
    token, key = params.get("t"), params.get("k")
    if not token or not key:
        return None, key, ["vapid t= or k= missing"]
    try:
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64url(key))
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64url(header_b64))
        claims = json.loads(_unb64url(claims_b64))
        signature = _unb64url(signature_b64)
    except ValueError as exc:
        return None, key, [f"malformed VAPID token or key: {exc}"]
    problems: list[str] = []
    if header.get("alg") != "ES256":
        problems.append("VAPID JWT alg is not ES256")
    if len(signature) != 64:
        problems.append("VAPID JWT signature is not 64 bytes")
    else:
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            problems.append("VAPID JWT signature does not verify with k")
    if not isinstance(claims, dict):
        return None, key, [*problems, "VAPID claims are not an object"]
    if claims.get("aud") != audience:
        problems.append(f"VAPID aud {claims.get('aud')!r} != {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        problems.append("VAPID exp is not an integer")
    elif exp <= now:
        problems.append("VAPID exp is in the past")
    elif exp > now + MAX_VAPID_LIFETIME:
        problems.append("VAPID exp is more than 24 h away")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        problems.append("VAPID sub missing or not a mailto:/https: URI")
    return claims, key, problems
