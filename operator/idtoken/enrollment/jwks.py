"""A KYC provider's signing keys, fetched from its JWKS URL and cached (seed 002).

The provider's documentation asks relying parties to cache the keys in memory and to refresh
them only when a JWS names a ``kid`` they do not know. :class:`RemoteJwks` does that with
three guards, because the ``kid`` comes from an unauthenticated token and anyone can send a
fresh one with every request:

- a cooldown: at most one fetch per ``cooldown`` seconds, both in this process (the injected
  clock) and across every instance sharing the store (``Store.acquire``);
- sharing: a fetched key set is published in the store, so N instances fetch once between
  them, and an instance that restarts while the provider is down still has the keys;
- a bounded fetch: ``https://`` only (``http://`` for loopback hosts), a total timeout,
  a 64 KiB body cap, no content encoding, and redirects followed only within the same
  scheme, host and port (at most three).

Only RSA keys of 2048 to 8192 bits usable for RS256 signatures are kept; a ``kid`` that
appears twice is dropped altogether, since either key could be the one meant.

An unknown ``kid`` ends in one of two ways: :class:`~idtoken.jose.JoseError` ``unknown_kid``
(the provider answered recently and does not have it: the token is bad) or
:class:`~idtoken.errors.TemporarilyUnavailable` (the provider could not be asked: try later).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from idtoken import jose
from idtoken.clock import Clock
from idtoken.errors import TemporarilyUnavailable
from idtoken.store.base import Store
from idtoken.strictjson import StrictJsonError, loads_strict_json
from idtoken.urls import is_loopback_host

__all__ = ["MAX_JWKS_BYTES", "JwksFetchError", "RemoteJwks", "parse_jwks"]

log = logging.getLogger("idtoken.enrollment")

MAX_JWKS_BYTES = 64 * 1024
MAX_REDIRECTS = 3
SHARED_TTL = 86400
_MAX_RSA_BITS = 8192  # bounds the cost of one verification under a hostile key set
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_KID = re.compile(r"[\x20-\x7e]{1,256}")  # the same rule jose.parse_compact applies to headers
_POLL_INTERVAL = 0.05


class JwksFetchError(Exception):
    """The key set could not be fetched or was not a JWKS. ``reason`` is for the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_jwks(data: bytes | str) -> dict[str, Mapping[str, str]]:
    """The usable signing keys of a JWKS document, by ``kid``, as minimal RSA JWKs.

    The document must be a strict JSON object with a ``keys`` array (else
    :class:`JwksFetchError`). Individual keys that are not usable are skipped, not fatal:
    anything but ``kty: RSA``, ``use`` other than ``sig``, ``key_ops`` without ``verify``,
    ``alg`` other than ``RS256``, private members, moduli outside 2048-8192 bits, a missing or
    odd ``kid``, and every key whose ``kid`` occurs more than once.
    """
    try:
        doc = loads_strict_json(data.encode("utf-8") if isinstance(data, str) else data)
    except StrictJsonError as exc:
        raise JwksFetchError("jwks_not_json") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksFetchError("jwks_without_keys")
    kept: dict[str, Mapping[str, str]] = {}
    seen: set[str] = set()
    for entry in doc["keys"]:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if isinstance(kid, str):
            if kid in seen:
                # Two keys under one kid: a token naming it is ambiguous, so neither is used.
                kept.pop(kid, None)
                continue
            seen.add(kid)
        jwk = _usable_rsa_key(entry)
        if jwk is not None:
            kept[jwk["kid"]] = jwk
    return kept


def _usable_rsa_key(entry: object) -> dict[str, str] | None:
    if not isinstance(entry, dict) or entry.get("kty") != "RSA":
        return None
    kid, n, e = entry.get("kid"), entry.get("n"), entry.get("e")
    if not isinstance(kid, str) or _KID.fullmatch(kid) is None:
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
        return None
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if "d" in entry or "p" in entry or "q" in entry:
        # A published private key means the key is compromised, whatever else it says.
        return None
    if not isinstance(n, str) or not isinstance(e, str):
        return None
    try:
        modulus = int.from_bytes(jose.b64url_decode(n), "big")
        exponent = int.from_bytes(jose.b64url_decode(e), "big")
        key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (jose.JoseError, ValueError):
        return None
    if not 2048 <= key.key_size <= _MAX_RSA_BITS:
        return None
    return {"kty": "RSA", "kid": kid, "n": n, "e": e}


def _verifier(jwk: Mapping[str, str]) -> jose.Verifier:
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(jose.b64url_decode(jwk["e"]), "big"),
        int.from_bytes(jose.b64url_decode(jwk["n"]), "big"),
    )
    return jose.verifier_for(numbers.public_key(), "RS256")


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


class RemoteJwks:
    """One KYC provider's key set: ``await verifier(kid)`` gives the RS256 verifier for a kid.

    ``store`` (optional) shares fetched keys and the fetch cooldown with other instances;
    without it the cache and the cooldown are this process's alone. ``clock`` drives the
    local cooldown bookkeeping. The HTTP session is created on first use and closed by
    :meth:`aclose`.
    """

    def __init__(
        self,
        uri: str,
        *,
        store: Store | None,
        clock: Clock,
        cooldown: int = 30,
        timeout: float = 2.0,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        url = URL(uri)
        if not url.host or not (
            url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.host))
        ):
            raise ValueError("the JWKS URL must be https:// (http:// only for loopback hosts)")
        if cooldown < 1 or timeout <= 0 or max_bytes < 1:
            raise ValueError("cooldown, timeout and max_bytes must be positive")
        self.uri = uri
        self._url = url
        self._store = store
        self._clock = clock
        self._cooldown = cooldown
        self._timeout = timeout
        self._max_bytes = max_bytes
        digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()
        self._shared_name = f"jwks:{digest}"
        self._fetch_lock_name = f"jwks-fetch:{digest}"
        self._down_name = f"jwks-down:{digest}"
        self._verifiers: dict[str, jose.Verifier] = {}
        self._fetched_at: float | None = None  # when the key set in use was fetched
        self._next_fetch = -math.inf  # local cooldown: no fetch attempt before this time
        # One lookup of an unknown kid at a time: a burst of them waits for a single fetch.
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently cached in this process."""
        return frozenset(self._verifiers)

    async def verifier(self, kid: str) -> jose.Verifier:
        """The verifier for ``kid``, fetching the key set only if ``kid`` is unknown and the
        cooldown allows. Raises ``JoseError("unknown_kid")`` or TemporarilyUnavailable."""
        found = self._verifiers.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._verifiers.get(kid)
            if found is not None:  # a concurrent lookup refreshed the keys meanwhile
                return found
            if await self._load_shared() and kid in self._verifiers:
                return self._verifiers[kid]
            now = self._clock.now()
            if self._fresh(now):
                # The provider answered within the cooldown and did not list this kid.
                raise jose.JoseError("unknown_kid")
            if now < self._next_fetch:
                # Our last attempt, less than a cooldown ago, failed (a success would be fresh).
                raise self._unavailable("jwks_down_cooldown", self._next_fetch - now)
            if self._store is not None and not await self._store.acquire(
                self._fetch_lock_name, ttl=self._cooldown
            ):
                return await self._after_fetch_elsewhere(kid)
            self._next_fetch = now + self._cooldown
            try:
                keys = await self._fetch()
            except JwksFetchError as exc:
                log.warning(
                    "KYC JWKS fetch failed",
                    extra={"jwks_uri": self.uri, "reason": exc.reason},
                )
                if self._store is not None:
                    await self._store.cache_put(self._down_name, "1", ttl=self._cooldown)
                raise self._unavailable(exc.reason, self._cooldown) from exc
            self._install(keys, fetched_at=now)
            log.info("KYC JWKS fetched", extra={"jwks_uri": self.uri, "keys": len(keys)})
            if self._store is not None:
                shared = json.dumps({"fetchedAt": now, "keys": list(keys.values())})
                await self._store.cache_put(self._shared_name, shared, ttl=SHARED_TTL)
            found = self._verifiers.get(kid)
            if found is None:
                raise jose.JoseError("unknown_kid")
            return found

    async def aclose(self) -> None:
        """Close the HTTP session (if one was opened)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ---- cache -------------------------------------------------------------------------------
    def _install(self, keys: Mapping[str, Mapping[str, str]], *, fetched_at: float) -> None:
        # The new set replaces the old one: a key the provider withdrew stops verifying.
        self._verifiers = {kid: _verifier(jwk) for kid, jwk in keys.items()}
        self._fetched_at = fetched_at

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._cooldown

    async def _load_shared(self) -> bool:
        """Adopt the store's copy if it is newer than ours; True if it was adopted."""
        if self._store is None:
            return False
        raw = await self._store.cache_get(self._shared_name)
        if raw is None:
            return False
        try:
            shared = json.loads(raw)
            fetched_at = float(shared["fetchedAt"])
            if not math.isfinite(fetched_at):
                raise ValueError("fetchedAt")
            if self._fetched_at is not None and fetched_at <= self._fetched_at:
                return False
            # The shared copy is re-filtered like a fetched one: the store is not a key source.
            keys = parse_jwks(json.dumps({"keys": shared["keys"]}))
        except (ValueError, KeyError, TypeError, JwksFetchError):
            log.warning("ignoring a malformed shared JWKS copy", extra={"jwks_uri": self.uri})
            return False
        self._install(keys, fetched_at=fetched_at)
        return True

    async def _after_fetch_elsewhere(self, kid: str) -> jose.Verifier:
        """Another instance holds the fetch cooldown: use its result, or wait briefly for it."""
        assert self._store is not None
        deadline = asyncio.get_running_loop().time() + self._timeout
        while True:
            if await self._load_shared() and kid in self._verifiers:
                return self._verifiers[kid]
            if self._fresh(self._clock.now()):
                raise jose.JoseError("unknown_kid")
            if await self._store.cache_get(self._down_name) is not None:
                raise self._unavailable("jwks_down_elsewhere", self._cooldown)
            if asyncio.get_running_loop().time() >= deadline:
                raise self._unavailable("jwks_fetch_elsewhere_pending", self._cooldown)
            # The other instance is fetching right now; its result lands in the store.
            await asyncio.sleep(_POLL_INTERVAL)

    def _unavailable(self, reason: str, retry_after: float) -> TemporarilyUnavailable:
        return TemporarilyUnavailable(
            "the identity provider's keys are temporarily unavailable",
            retry_after=math.ceil(retry_after),
            log_detail=reason,
        )

    # ---- fetch -------------------------------------------------------------------------------
    async def _fetch(self) -> dict[str, Mapping[str, str]]:
        try:
            # One deadline for the whole exchange, redirects and a dripping body included.
            async with asyncio.timeout(self._timeout):
                body = await self._get()
        except TimeoutError as exc:
            raise JwksFetchError("timeout") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            # Only the type: library messages may quote URLs or headers.
            raise JwksFetchError(f"http_error:{type(exc).__name__}") from exc
        return parse_jwks(body)

    async def _get(self) -> bytes:
        session = self._client()
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(
                url,
                allow_redirects=False,
                headers={
                    "Accept": "application/jwk-set+json, application/json",
                    "Accept-Encoding": "identity",
                },
            ) as response:
                if response.status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise JwksFetchError("redirect_without_location")
                    target = url.join(URL(location))
                    if _origin(target) != _origin(self._url):
                        raise JwksFetchError("redirect_to_other_origin")
                    url = target
                    continue
                if response.status != 200:
                    raise JwksFetchError(f"http_status_{response.status}")
                if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                    # We asked for identity; a compressed body could expand past the cap.
                    raise JwksFetchError("content_encoding")
                return await self._read_capped(response)
        raise JwksFetchError("too_many_redirects")

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self._max_bytes:
            raise JwksFetchError("jwks_too_large")
        body = bytearray()
        # Read one byte past the cap so that an oversized body is detected, never truncated.
        while len(body) <= self._max_bytes:
            chunk = await response.content.read(self._max_bytes + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > self._max_bytes:
            raise JwksFetchError("jwks_too_large")
        return bytes(body)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so that it belongs to the loop that serves requests.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
                auto_decompress=False,
            )
        return self._session
