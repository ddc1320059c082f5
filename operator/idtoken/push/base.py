"""What a push is: the device's subscription, the outcome of one delivery, and the Notifier role.

A :class:`PushSubscription` comes from the device at enrollment (wire contract §2) and is the
only thing the operator needs to reach it. Its endpoint is chosen by the device, so it is
validated strictly before it is stored: a push is an outbound request to that URL.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from idtoken import jose
from idtoken.urls import AddressPolicy, is_canonical_address, is_loopback_host

MAX_ENDPOINT_LENGTH = 1024
# Printable ASCII without space: a URL on the wire never needs more, and this keeps control
# characters and header-splitting tricks out of the request line.
_URL_CHARS = re.compile(r"[\x21-\x7e]+")
_SUBSCRIPTION_MEMBERS = frozenset({"endpoint", "keys"})
# The W3C PushSubscriptionJSON also carries `expirationTime` (usually null); browsers' toJSON()
# emits it, so it is tolerated and dropped rather than rejected.
_TOLERATED_MEMBERS = frozenset({"expirationTime"})
_KEY_MEMBERS = frozenset({"p256dh", "auth"})


def b64url_decode(value: str, *, what: str) -> bytes:
    """Decode canonical unpadded base64url (padding, ``+/``, spaces and non-zero trailing
    bits refused, so each key has exactly one accepted spelling); ValueError names ``what``."""
    try:
        return jose.b64url_decode(value)
    except jose.JoseError:
        raise ValueError(f"{what} must be canonical unpadded base64url") from None


b64url_encode = jose.b64url_encode


def endpoint_origin(endpoint: str) -> str:
    """``scheme://host[:port]`` of an endpoint: the VAPID audience and the only part we log."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    suffix = f":{port}" if port is not None and port != default_port else ""
    return f"{parts.scheme}://{host}{suffix}"


def _check_endpoint(endpoint: str) -> None:
    if not endpoint:
        raise ValueError("endpoint must not be empty")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise ValueError(f"endpoint must be at most {MAX_ENDPOINT_LENGTH} characters")
    if not _URL_CHARS.fullmatch(endpoint):
        raise ValueError("endpoint must be a URL of printable ASCII characters")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError("endpoint must be a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError("endpoint must be an https URL")
    if not host:
        raise ValueError("endpoint must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint must not carry credentials")
    if parts.fragment:
        raise ValueError("endpoint must not have a fragment")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError("endpoint must be an https URL")
    if not is_canonical_address(host):  # 2130706433, 127.1, 0x7f.1: each client reads them its way
        raise ValueError("endpoint must name its host, or give its address in the usual form")


def _check_p256dh(value: str) -> None:
    raw = b64url_decode(value, what="keys.p256dh")
    if len(raw) != 65 or raw[0] != 0x04:
        raise ValueError("keys.p256dh must be an uncompressed P-256 public key")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValueError("keys.p256dh is not a point on P-256") from None


def _check_auth(value: str) -> None:
    if len(b64url_decode(value, what="keys.auth")) != 16:
        raise ValueError("keys.auth must be 16 bytes")


@dataclass(frozen=True)
class PushSubscription:
    """A device's Web Push subscription (RFC 8030 endpoint plus RFC 8291 keys).

    The constructor validates, so an instance is always safe to push to: ``endpoint`` is an
    https URL (plain http only for loopback hosts, for tests and local push services) of at
    most 1024 characters, ``p256dh`` is an unpadded base64url uncompressed P-256 point and
    ``auth`` an unpadded base64url 16-byte secret.
    """

    endpoint: str
    p256dh: str
    auth: str

    def __post_init__(self) -> None:
        for name in ("endpoint", "p256dh", "auth"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        _check_endpoint(self.endpoint)
        _check_p256dh(self.p256dh)
        _check_auth(self.auth)

    @classmethod
    def parse(cls, value: object, *, name: str = "pushSubscription") -> PushSubscription:
        """Build from the contract's JSON ``{"endpoint", "keys": {"p256dh", "auth"}}``.

        Strict: unknown members, missing members and wrong types raise :class:`ValueError`
        with a message fit for a 400 response (it never echoes the input), naming the value
        as ``name`` (the request member it came in).
        """
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an object")
        unknown = set(value) - _SUBSCRIPTION_MEMBERS - _TOLERATED_MEMBERS
        if unknown:
            raise ValueError(f"{name} has unknown members")
        expiration = value.get("expirationTime")
        if expiration is not None and (
            isinstance(expiration, bool) or not isinstance(expiration, int | float)
        ):
            raise ValueError(f"{name}.expirationTime must be null or a number")
        endpoint = value.get("endpoint")
        if not isinstance(endpoint, str):
            raise ValueError(f"{name}.endpoint must be a string")
        keys = value.get("keys")
        if not isinstance(keys, Mapping):
            raise ValueError(f"{name}.keys must be an object")
        if set(keys) != _KEY_MEMBERS:
            raise ValueError(f"{name}.keys must have exactly p256dh and auth")
        p256dh, auth = keys["p256dh"], keys["auth"]
        if not isinstance(p256dh, str) or not isinstance(auth, str):
            raise ValueError(f"{name}.keys members must be strings")
        try:
            return cls(endpoint=endpoint, p256dh=p256dh, auth=auth)
        except ValueError as exc:
            raise ValueError(f"{name}.{exc}") from None

    def check_policy(self, policy: AddressPolicy, *, name: str = "pushSubscription") -> None:
        """Refuse (:class:`ValueError`, naming the value as ``name``) an endpoint whose host is
        a literal address, or ``localhost``, that ``policy`` does not allow. Names are checked
        again when a push resolves them."""
        if policy.refuses_host(self.host):
            raise ValueError(
                f"{name}.endpoint must not point at a private, loopback or reserved address"
            )

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON shape, as accepted by :meth:`parse`."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}

    @property
    def host(self) -> str:
        """The endpoint's host: a name, or a literal address without brackets."""
        return urlsplit(self.endpoint).hostname or ""

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the endpoint; safe to log, unlike the full endpoint."""
        return endpoint_origin(self.endpoint)

    def __repr__(self) -> str:
        # The endpoint path is a capability to push to the device; keep it out of reprs and logs.
        return f"PushSubscription(origin={self.origin!r})"


class PushOutcome(enum.StrEnum):
    """How one push ended."""

    SENT = "sent"
    """Accepted by the push service on the first attempt."""
    RETRIED = "retried"
    """Accepted after at least one retry."""
    DEAD = "dead"
    """404/410: the subscription is gone; the caller should stop using it."""
    FAILED = "failed"
    """Refused (other 4xx), out of attempts, or never sendable."""
    EXPIRED = "expired"
    """Gave up because the session's life ran out before another attempt could start."""

    @property
    def delivered(self) -> bool:
        return self in (PushOutcome.SENT, PushOutcome.RETRIED)


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push, the number of HTTP attempts, the last HTTP status (None when
    no response was received) and the seconds spent."""

    outcome: PushOutcome
    attempts: int
    status: int | None
    elapsed: float


class Notifier(Protocol):
    """Delivers one notification to one device.

    ``send`` returns a :class:`PushResult` and never raises for delivery problems (an
    unreachable, slow or refusing push service). ``ttl`` is how long the push service may hold
    the message, in seconds (the session's remaining life); ``topic`` lets a later push replace
    a pending one; ``deadline`` is a wall-clock epoch time (the session expiry) after which no
    attempt is started and no request is left running.
    """

    async def send(
        self,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        deadline: float,
    ) -> PushResult: ...

    async def aclose(self) -> None:
        """Release connections. No push may be sent afterwards."""
        ...
