"""Web Push delivery: RFC 8030 requests, RFC 8291 ``aes128gcm`` payloads, RFC 8292 VAPID.

pywebpush does the payload encryption (``WebPusher.encode``); the request itself is sent here
with one shared aiohttp session, because the delivery policy lives in the request: redirects
are never followed (the endpoint was vetted, a redirect target was not), the response body is
not buffered without bound, and every attempt is bounded by the session's remaining life.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

from idtoken.clock import Clock
from idtoken.push.base import PushOutcome, PushResult, PushSubscription, b64url_encode
from idtoken.push.vapid import VapidSigner
from idtoken.urls import PUBLIC_ONLY, AddressPolicy

logger = logging.getLogger("idtoken.push")

# RFC 8291 §4: a push message body is at most 4096 octets, which leaves 3993 for the
# plaintext once the aes128gcm header (86), padding delimiter (1) and tag (16) are added.
MAX_PLAINTEXT = 3993
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 30.0
FIRST_BACKOFF = 0.5
# A push service answers 201 with an empty body; anything larger is not worth reading, and
# leaving it unread only costs the connection.
_MAX_BODY_TO_DRAIN = 64 * 1024
_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


def push_topic(topic: str) -> str:
    """The ``Topic`` header for a caller's topic.

    RFC 8030 §5.4 allows at most 32 characters of the base64url alphabet. A topic that already
    fits is sent as is; any other is replaced by 32 base64url characters of its SHA-256, which
    keeps it deterministic, all that replacement of a pending message needs.
    """
    if _TOPIC.fullmatch(topic):
        return topic
    return b64url_encode(hashlib.sha256(topic.encode("utf-8")).digest())[:32]


def retry_after_seconds(value: str | None, *, now: float) -> float:
    """Seconds to wait for a ``Retry-After`` value (delay-seconds or HTTP-date), capped."""
    if value is None:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        delay = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # HTTP-dates are always GMT
        delay = when.timestamp() - now
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def encrypt_payload(subscription: PushSubscription, payload: Mapping[str, Any]) -> bytes:
    """The aes128gcm body for ``payload`` as compact JSON; ValueError if it cannot be sent."""
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_PLAINTEXT:
        raise ValueError(f"push payload is {len(data)} bytes; the limit is {MAX_PLAINTEXT}")
    encoded = WebPusher(subscription.to_json()).encode(data, content_encoding="aes128gcm")
    return bytes(encoded["body"])


class RefusedAddress(OSError):
    """An endpoint's host resolved only to addresses the :class:`AddressPolicy` refuses."""


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver with every address the policy refuses taken out of its answers.

    The check sits where the connection gets its addresses, so the address checked is the
    address connected to: a name cannot resolve to a public address for a check and to an
    internal one for the connection (DNS rebinding). Literal IP hosts never reach a resolver;
    :meth:`WebPushNotifier.send` checks those itself."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        allowed = [r for r in answers if self._policy.allows(r["host"])]
        if not allowed:
            raise RefusedAddress("the endpoint resolves to no address the push policy allows")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class WebPushNotifier:
    """A :class:`~idtoken.push.base.Notifier` speaking Web Push with VAPID.

    Outcomes: 2xx → sent; 404/410 → dead, at once; 429 → retry after ``Retry-After``; 5xx,
    connection errors and timeouts → retry with exponential backoff from 0.5 s; other
    statuses → failed. At most ``max_attempts`` requests, each limited to
    ``min(request_timeout, time left before deadline)``; when the next attempt would start
    after the deadline the push ends as expired.

    ``endpoint_policy`` decides which addresses a push may connect to (public ones, and the
    networks it lists): an endpoint whose host is, or resolves only to, another address fails
    at once, without a request and without retries.
    """

    def __init__(
        self,
        vapid_key: ec.EllipticCurvePrivateKey,
        subject: str,
        *,
        clock: Clock,
        max_attempts: int = 4,
        request_timeout: float = 10.0,
        endpoint_policy: AddressPolicy = PUBLIC_ONLY,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self._signer = VapidSigner(vapid_key, subject)
        self._clock = clock
        self._max_attempts = max_attempts
        self._request_timeout = request_timeout
        self._policy = endpoint_policy
        self._session: aiohttp.ClientSession | None = None
        self._resolver: PolicyResolver | None = None
        self._closed = False

    @property
    def application_server_key(self) -> str:
        """The VAPID public key, as apps pass it to ``PushManager.subscribe``."""
        return self._signer.public_key_b64

    async def send(
        self,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        deadline: float,
    ) -> PushResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Read the wall clock once and count down on the loop's monotonic clock from here, so a
        # clock step during the retries can neither stretch nor cut them short.
        end = started + (deadline - self._clock.now())
        outcome, attempts, status = await self._deliver(
            subscription, payload, ttl=ttl, topic=topic, end=end
        )
        result = PushResult(outcome, attempts, status, loop.time() - started)
        logger.info(
            "push to %s %s: attempts=%d status=%s elapsed=%.3fs",
            subscription.origin,
            result.outcome,
            result.attempts,
            result.status,
            result.elapsed,
        )
        return result

    async def _deliver(
        self,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        end: float,
    ) -> tuple[PushOutcome, int, int | None]:
        if self._closed:
            logger.warning("push to %s after the notifier was closed", subscription.origin)
            return PushOutcome.FAILED, 0, None
        try:
            body = encrypt_payload(subscription, payload)
        except (TypeError, ValueError) as exc:
            # A caller bug, not a delivery problem; the message names sizes and types only.
            logger.error("push to %s not sendable: %s", subscription.origin, exc)
            return PushOutcome.FAILED, 0, None
        except Exception as exc:
            # pywebpush/http_ece raise their own types; still not worth crashing a push task.
            logger.error("push to %s not encryptable: %s", subscription.origin, type(exc).__name__)
            return PushOutcome.FAILED, 0, None
        # A literal address never reaches the resolver, so it is checked here; names
        # (``localhost`` too) are checked on the addresses they resolve to.
        if self._policy.refuses_literal(subscription.host):
            _log_refused(subscription)
            return PushOutcome.FAILED, 0, None
        loop = asyncio.get_running_loop()
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Urgency": "high",
        }
        if topic:
            headers["Topic"] = push_topic(topic)
        attempts = 0
        status: int | None = None
        while True:
            remaining = end - loop.time()
            if remaining <= 0:
                return PushOutcome.EXPIRED, attempts, status
            if self._closed:
                return PushOutcome.FAILED, attempts, status
            attempts += 1
            # Never let the push service hold the message beyond the session's life, even on
            # a retry that starts seconds after the caller computed ``ttl``.
            headers["TTL"] = str(max(0, min(ttl, int(remaining))))
            headers["Authorization"] = self._signer.authorization(
                subscription.origin, now=self._clock.now()
            )
            try:
                status, retry_after = await self._attempt(
                    subscription, body, headers, seconds=min(self._request_timeout, remaining)
                )
            except RefusedAddress:
                _log_refused(subscription)
                return PushOutcome.FAILED, attempts, None
            except aiohttp.InvalidURL:  # no later attempt could do better
                logger.warning("push to %s failed: unusable endpoint URL", subscription.origin)
                return PushOutcome.FAILED, attempts, None
            if status is not None and 200 <= status < 300:
                outcome = PushOutcome.SENT if attempts == 1 else PushOutcome.RETRIED
                return outcome, attempts, status
            if status in (404, 410):
                return PushOutcome.DEAD, attempts, status
            if status is not None and status != 429 and status < 500:
                return PushOutcome.FAILED, attempts, status
            if attempts >= self._max_attempts:
                return PushOutcome.FAILED, attempts, status
            if status == 429:
                delay = retry_after_seconds(retry_after, now=self._clock.now())
            else:
                delay = FIRST_BACKOFF * 2 ** (attempts - 1)
            if loop.time() + delay >= end:
                return PushOutcome.EXPIRED, attempts, status
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        subscription: PushSubscription,
        body: bytes,
        headers: Mapping[str, str],
        *,
        seconds: float,
    ) -> tuple[int | None, str | None]:
        """One POST: (status, Retry-After), with status None if no answer arrived in time."""
        session = self._client()
        status: int | None = None
        retry_after: str | None = None
        try:
            async with asyncio.timeout(seconds):
                async with session.post(
                    subscription.endpoint, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status, retry_after = response.status, response.headers.get("Retry-After")
                    length = response.content_length
                    if length is not None and length <= _MAX_BODY_TO_DRAIN:
                        # Reading the (empty) body returns the connection to the pool. If that
                        # fails the answer still stands; only the connection is lost.
                        await response.read()
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise exc.os_error from None
            logger.debug("push to %s: %s", subscription.origin, type(exc).__name__)
        except aiohttp.InvalidURL:
            raise
        except Exception as exc:
            # Only the exception type: messages of URL errors can carry the endpoint path.
            logger.debug("push to %s: %s", subscription.origin, type(exc).__name__)
        return status, retry_after

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so that it belongs to the loop that runs the pushes.
        if self._session is None:
            self._resolver = PolicyResolver(self._policy)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(total=self._request_timeout),
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._resolver is not None:
            resolver, self._resolver = self._resolver, None
            await resolver.close()


def _log_refused(subscription: PushSubscription) -> None:
    logger.warning(
        "push to %s refused: the endpoint is not a public address and not in "
        "push.allow_private_networks",
        subscription.origin,
    )
