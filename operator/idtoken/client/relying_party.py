"""A relying party, in Python: initiate, wait on the socket, verify the JWT (wire contract §1).

JWT verification uses joserfc, independently of the operator's JWS code, with the operator's
keys fetched from its JWKS, cached in memory and re-fetched only for an unknown ``kid`` — at most
once per cooldown, so a flood of forged ``kid`` values cannot turn the RP into a load
generator against the operator.

It is as strict as the operator is with the tokens it reads (RFC 8725), because integrators
copy it: the algorithm is pinned to ES256 and the header holds exactly ``alg``, ``typ``
(``JWT``) and ``kid`` — joserfc's default registry also lets ``jku``, ``x5u``, ``x5c``, ``jwk``,
``x5t``, ``x5t#S256``, ``cty``, ``crit`` and ``b64`` through, so :class:`IdTokenRegistry`
replaces it. A member named twice in the header or the claims refuses the token (RFC 7515 §4
lets a parser refuse or keep the last; Python's ``json`` keeps the last): JSON is read by the
package's strict reader, :mod:`idtoken.strictjson` (copy it along).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import websockets
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jws import JWSRegistry
from joserfc.registry import JWS_HEADER_REGISTRY, HeaderParameter, HeaderRegistryDict
from joserfc.util import urlsafe_b64decode
from websockets.typing import Origin

from idtoken.strictjson import loads_strict_json

ALG = "ES256"
TYP = "JWT"
HEADER_REGISTRY: HeaderRegistryDict = {
    "alg": JWS_HEADER_REGISTRY["alg"],
    "typ": HeaderParameter("Type", lambda value: _must_be(value, TYP), required=True),
    "kid": HeaderParameter("Key ID", "str", required=True),
}
"""The members of an ID token's header, all three required; nothing else is allowed."""


def _must_be(value: object, expected: str) -> None:
    if value != expected:
        raise ValueError(f"must be {expected!r}")


class IdTokenRegistry(JWSRegistry):
    """joserfc's JWS registry cut down to what an ID token's header is: ``alg`` ES256 only,
    ``typ`` ``JWT`` and ``kid``, and no other member (:data:`HEADER_REGISTRY`,
    ``strict_check_header``). The operator's other signed tokens, such as the phone's
    credential, are typed otherwise and fail here."""

    def __init__(self) -> None:
        super().__init__(algorithms=[ALG], strict_check_header=True)
        # Replaces, rather than extends, joserfc's defaults (jku, x5u, x5c, jwk, x5t, ...).
        self.header_registry = dict(HEADER_REGISTRY)


class StrictJSONDecoder(json.JSONDecoder):
    """joserfc's ``decoder_cls`` hook onto :func:`idtoken.strictjson.loads_strict_json`: a
    member named twice, NaN or Infinity (and the rest that module lists) refuse the token."""

    def decode(self, s: str, _w: Any = None) -> Any:
        return loads_strict_json(s.encode("utf-8"))


def _header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS, decoded strictly (canonical base64url, unique
    members) and checked against :class:`IdTokenRegistry` before any key is looked up."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = loads_strict_json(urlsafe_b64decode(parts[0].encode("ascii")))
    if not isinstance(header, dict):
        raise ValueError("the header is not an object")
    _REGISTRY.check_header(header)
    _REGISTRY.get_alg(header["alg"])
    return header


_REGISTRY = IdTokenRegistry()


class ResultError(Exception):
    """The login did not succeed: rejected, expired, or a result that does not check out."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Initiation:
    session_id: str
    auto_password: str
    ws_token: str
    expires_at: str
    random: str


class JwksCache:
    """The operator's public keys by ``kid``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        cooldown: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._url = url
        self._cooldown = cooldown
        self._monotonic = monotonic
        self._keys: dict[str, ECKey] = {}
        self._last_fetch: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> ECKey:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            now = self._monotonic()
            if kid not in self._keys and (
                self._last_fetch is None or now - self._last_fetch >= self._cooldown
            ):
                self._last_fetch = now
                await self._fetch()
        key = self._keys.get(kid)
        if key is None:
            raise ResultError("invalid_jwt", "unknown signing key")
        return key

    async def _fetch(self) -> None:
        self.fetches += 1
        resp = await self._http.get(self._url)
        resp.raise_for_status()
        key_set = KeySet.import_key_set(resp.json())
        self._keys = {
            str(k.kid): k
            for k in key_set.keys
            if isinstance(k, ECKey) and k.kid and k.get("alg", "ES256") == "ES256"
        }


class RelyingParty:
    """One service's view of the operator. ``http`` has the operator as its base_url."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        service_id: str,
        issuer: str,
        audience: str | None = None,
        client_secret: str | None = None,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
        leeway: int = 30,
    ) -> None:
        self.clock = clock
        self.leeway = leeway
        self.http = http
        self.service_id = service_id
        self.issuer = issuer
        self.audience = audience or service_id
        self.client_secret = client_secret
        self.jwks = jwks or JwksCache(http, "/.well-known/jwks.json")

    async def initiate(
        self, token_id: str, scopes: list[str] | None = None, nonce: str | None = None
    ) -> Initiation:
        body: dict[str, Any] = {"tokenId": token_id, "serviceId": self.service_id}
        if scopes is not None:
            body["scopes"] = scopes
        if nonce is not None:
            body["nonce"] = nonce
        headers = {"Authorization": f"Bearer {self.client_secret}"} if self.client_secret else {}
        resp = await self.http.post("/auth/initiate", json=body, headers=headers)
        if resp.status_code != 201:
            raise ResultError("initiate_failed", f"{resp.status_code} {resp.text[:200]}")
        data = resp.json()
        return Initiation(
            session_id=data["sessionId"],
            auto_password=data["autoPassword"],
            ws_token=data["wsToken"],
            expires_at=data["expiresAt"],
            random=data["random"],
        )

    def socket_url(self, initiation: Initiation) -> str:
        base = str(self.http.base_url).rstrip("/")
        base = "ws" + base.removeprefix("http")  # http -> ws, https -> wss
        return (
            f"{base}/ws/session/{quote(initiation.session_id)}?token={quote(initiation.ws_token)}"
        )

    async def wait_result(
        self, initiation: Initiation, *, timeout: float = 120.0, origin: str | None = None
    ) -> dict[str, Any]:
        """Listen on the socket until the terminal message; return the ``approved`` message
        (its ``hash`` checked) or raise :class:`ResultError`."""
        async with asyncio.timeout(timeout):
            async with websockets.connect(
                self.socket_url(initiation),
                origin=Origin(origin) if origin is not None else None,
                compression=None,
            ) as sock:
                async for raw in sock:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "otp_ready":
                        continue
                    if kind == "approved":
                        if message.get("random") != initiation.random:
                            raise ResultError("bad_random", "not the result of this initiation")
                        if not self.hash_ok(initiation, message):
                            raise ResultError("bad_hash", "the result hash does not match")
                        return dict(message)
                    if kind == "rejected":
                        raise ResultError("rejected", str(message.get("reason")))
                    if kind == "expired":
                        raise ResultError("expired")
        raise ResultError("closed", "the socket closed without a result")

    @staticmethod
    def hash_ok(initiation: Initiation, message: dict[str, Any]) -> bool:
        msg = f"{initiation.session_id}|{message['random']}|{message['jwt']}".encode()
        expected = hmac.new(initiation.ws_token.encode(), msg, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, str(message.get("hash", "")))

    async def verify_jwt(
        self, token: str, *, session_id: str | None = None, nonce: str | None = None
    ) -> dict[str, Any]:
        """Verify the header (exactly ``alg`` ES256, ``typ`` JWT and ``kid``: see
        :class:`IdTokenRegistry`), the signature, strict JSON throughout, ``iss``, ``aud``,
        ``exp``, and ``sid``/``nonce`` if given; return the claims."""
        try:
            header = _header(token)
        except (JoseError, ValueError, UnicodeError, TypeError) as exc:
            raise ResultError("invalid_jwt", "unexpected header") from exc
        key = await self.jwks.key(header["kid"])
        try:
            decoded = jwt.decode(token, key, registry=_REGISTRY, decoder_cls=StrictJSONDecoder)
            options: dict[str, Any] = {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.audience},
                "exp": {"essential": True},
                "sub": {"essential": True},
            }
            if session_id is not None:
                options["sid"] = {"essential": True, "value": session_id}
            if nonce is not None:
                options["nonce"] = {"essential": True, "value": nonce}
            registry = jwt.JWTClaimsRegistry(
                now=lambda: int(self.clock()), leeway=self.leeway, **options
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise ResultError("invalid_jwt", exc.error) from exc
        return dict(decoded.claims)

    async def login(
        self, token_id: str, scopes: list[str] | None = None, *, timeout: float = 120.0
    ) -> tuple[Initiation, dict[str, Any]]:
        """Initiate, wait for the result and verify it, for callers with no code to show (a
        user interface calls :meth:`initiate`, shows ``autoPassword``, then
        :meth:`wait_result` and :meth:`verify_jwt`)."""
        initiation = await self.initiate(token_id, scopes)
        message = await self.wait_result(initiation, timeout=timeout)
        claims = await self.verify_jwt(message["jwt"], session_id=initiation.session_id)
        return initiation, claims
