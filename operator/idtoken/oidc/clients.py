"""Client authentication at the token and backchannel endpoints (RFC 6749 §2.3, §3.2.1;
OpenID Connect Core §9): ``client_secret_basic``, ``client_secret_post`` and ``none``; and
``/auth/initiate``'s ``Authorization: Bearer`` check of the same secret.

A client uses exactly the method it is registered with, and one method per request. Secrets
are compared as SHA-256 digests in constant time (the configuration keeps only the digest).

Failures are counted per client and address in the store's sliding window, the same counter
``/auth/initiate``'s Bearer check uses: past :data:`FAILURE_LIMIT` failures in
:data:`FAILURE_WINDOW` seconds the client, from that address, gets 429 until the window
clears, right secret or not. The instance that sees the count pass the limit remembers it, so
a blocked client costs no store round trip; across instances, at most :data:`FAILURE_LIMIT`
plus one guess per instance gets through a window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from idtoken.clock import Clock
from idtoken.errors import InvalidClient, InvalidRequest, TooManyRequests
from idtoken.ids import ID_PATTERN
from idtoken.metrics import Metrics
from idtoken.settings import AuthMethod, ServiceSettings
from idtoken.store.base import Store

security = logging.getLogger("idtoken.security")

FAILURE_LIMIT = 20
FAILURE_WINDOW = 60
MAX_SECRET = 512
_BLOCKED_CACHE = 10_000


@dataclass(frozen=True)
class PresentedClient:
    """Who a request says it is, and how it proves it."""

    client_id: str
    secret: str | None
    method: AuthMethod


def presented_client(
    authorization: str | None, client_id: str | None, client_secret: str | None
) -> PresentedClient:
    """Read the client's credentials from the ``Authorization`` header and the form's
    ``client_id`` / ``client_secret``. Two methods at once is ``invalid_request``; a header
    that is not HTTP Basic, or unreadable, is ``invalid_client``."""
    if authorization is not None:
        if client_secret is not None:
            raise InvalidRequest("use one client authentication method, not two")
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise _invalid("the Authorization header must be HTTP Basic")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid("the Authorization header is not valid Basic credentials") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise _invalid("the Authorization header is not valid Basic credentials")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before they are joined.
        user, password = unquote_plus(user), unquote_plus(password)
        if client_id is not None and client_id != user:
            raise InvalidRequest("client_id differs from the authenticated client")
        return PresentedClient(user, password, "client_secret_basic")
    if client_id is None:
        raise _invalid("client authentication is required")
    if client_secret is not None:
        return PresentedClient(client_id, client_secret, "client_secret_post")
    return PresentedClient(client_id, None, "none")


def _invalid(description: str) -> InvalidClient:
    return InvalidClient(description, headers={"WWW-Authenticate": 'Basic realm="idtoken"'})


class ClientAuthenticator:
    """Authenticates clients against their registration; see the module docstring."""

    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        store: Store,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._services = services
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._blocked: dict[tuple[str, str], float] = {}

    async def authenticate(self, presented: PresentedClient, address: str) -> ServiceSettings:
        """The client's registration, or ``invalid_client`` (401) / ``too_many_requests``."""
        now = self._clock.now()
        key = (presented.client_id[:128], address)
        self._refuse_if_blocked(key, now)
        service = self._services.get(presented.client_id)
        if ID_PATTERN.match(presented.client_id) is None:
            service = None
        if not verifies(service, presented):
            await self.failed(key, now)
            raise _invalid("client authentication failed")
        assert service is not None
        return service

    async def authenticate_bearer(
        self, service: ServiceSettings, authorization: str | None, address: str
    ) -> None:
        """``/auth/initiate``'s check: a confidential service sends its secret as
        ``Authorization: Bearer <secret>`` (a public one nothing). Its failures count with
        the token endpoint's: it is the same secret."""
        expected = service.client_secret_sha256
        if expected is None:
            return
        now = self._clock.now()
        key = (service.id, address)
        self._refuse_if_blocked(key, now)
        scheme, _, secret = (authorization or "").partition(" ")
        presented = hashlib.sha256(secret.strip().encode("utf-8")).digest()
        # Compare digests in constant time; the scheme check does not depend on the secret.
        ok = hmac.compare_digest(presented, expected)
        if scheme.lower() != "bearer" or not secret.strip() or not ok:
            await self.failed(key, now)
            raise InvalidClient(
                "client authentication failed",
                headers={"WWW-Authenticate": 'Bearer realm="idtoken", error="invalid_client"'},
            )

    def _refuse_if_blocked(self, key: tuple[str, str], now: float) -> None:
        until = self._blocked.get(key, 0.0)
        if until > now:
            raise TooManyRequests(
                "too many failed client authentications", retry_after=int(until - now) + 1
            )

    async def failed(self, key: tuple[str, str], now: float) -> None:
        """Count a failed authentication of ``key`` (client id, address); 429 past the
        limit."""
        self._metrics.client_auth_failures.inc()
        security.warning("client authentication failed", extra={"client_id": key[0]})
        wait = await self._store.hit(
            f"client-auth:{key[0]}:{key[1]}", limit=FAILURE_LIMIT, window=FAILURE_WINDOW, now=now
        )
        if wait > 0:
            if len(self._blocked) >= _BLOCKED_CACHE:
                self._blocked.clear()
            self._blocked[key] = now + wait
            raise TooManyRequests("too many failed client authentications", retry_after=wait)


def verifies(service: ServiceSettings | None, presented: PresentedClient) -> bool:
    """Whether ``presented`` proves to be ``service``. The digest comparison runs whatever
    the other checks say, so timing does not tell an unknown client from a wrong secret."""
    expected = service.client_secret_sha256 if service is not None else None
    secret = presented.secret if presented.secret is not None else ""
    digest = hashlib.sha256(secret[:MAX_SECRET].encode("utf-8")).digest()
    same = hmac.compare_digest(digest, expected or _NO_SECRET)
    if service is None or presented.method != service.token_endpoint_auth_method:
        return False
    if presented.method == "none":
        return True
    return same and len(secret) <= MAX_SECRET


_NO_SECRET = hashlib.sha256(b"\x00no secret").digest()
