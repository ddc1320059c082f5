"""What a push is: the device's subscription, the outcome of one delivery, and the Notifier role.

A :class:`PushSubscription` comes from the device at enrollment (wire contract §2) and is the
only thing the operator needs to reach it. Its endpoint is chosen by the device, so it is
validated strictly before it is stored: a push is an outbound request to that URL.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, StringConstraints, with_config
from typing_extensions import TypedDict

from idtoken import jose
from idtoken.errors import InvalidRequest, OperatorError
from idtoken.urls import AddressPolicy, is_canonical_address, is_loopback_host
from idtoken.wire.declare import STRICT, Kind, Member, Problem, Refuse

MAX_ENDPOINT_LENGTH = 1024
# Printable ASCII without space after the scheme: a URL on the wire never needs more, and this
# keeps control characters and header-splitting tricks out of the request line.
ENDPOINT_PATTERN = r"^https?://[\x21-\x7E]+$"
# Canonical unpadded base64url of 65 bytes whose first is 0x04 (an uncompressed point): "B",
# then the 2 zero bits that end 0x04 and 4 bits of x, ..., and 2 zero padding bits at the end.
P256DH_PATTERN = r"^B[A-P][A-Za-z0-9_-]{84}[AEIMQUYcgkosw048]$"
# Canonical unpadded base64url of 16 bytes: the last character carries 4 zero padding bits.
AUTH_PATTERN = r"^[A-Za-z0-9_-]{21}[AQgw]$"


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


# ------------------------------------------------------------------- the wire form, declared
def _refuse_endpoint(name: str, problems: Sequence[Problem]) -> OperatorError:
    value = problems[0].value
    if not isinstance(value, str):
        return InvalidRequest(f"{name} must be a string")
    if not value:
        return InvalidRequest(f"{name} must not be empty")
    if len(value) > MAX_ENDPOINT_LENGTH:
        return InvalidRequest(f"{name} must be at most {MAX_ENDPOINT_LENGTH} characters")
    if not _PRINTABLE.fullmatch(value):
        return InvalidRequest(f"{name} must be a URL of printable ASCII characters")
    return InvalidRequest(f"{name} must be an https URL")


def _refuse_key(meaning: str) -> Refuse:
    """A key: not a string, not canonical base64url, or not ``meaning`` once decoded."""

    def refuse(name: str, problems: Sequence[Problem]) -> OperatorError:
        value = problems[0].value
        if not isinstance(value, str):
            return InvalidRequest(f"{name} must be a string")
        try:
            b64url_decode(value, what=name)
        except ValueError as exc:
            return InvalidRequest(str(exc))
        return InvalidRequest(f"{name} must be {meaning}")

    return refuse


_REFUSE_P256DH = _refuse_key("an uncompressed P-256 public key")
_REFUSE_AUTH = _refuse_key("16 bytes")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")

Endpoint = Annotated[
    str,
    Kind(
        StringConstraints(min_length=1, max_length=MAX_ENDPOINT_LENGTH, pattern=ENDPOINT_PATTERN),
        refuse=_refuse_endpoint,
    ),
]
P256dh = Annotated[
    str,
    Kind(
        Field(
            pattern=P256DH_PATTERN,
            description=(
                "An uncompressed P-256 point (65 bytes, the first 0x04), canonical base64url "
                "without padding. The point must be on the curve, which JSON Schema cannot "
                "state: another is refused with 400 `invalid_request`."
            ),
        ),
        refuse=_REFUSE_P256DH,
    ),
]
Auth = Annotated[
    str,
    Kind(
        Field(pattern=AUTH_PATTERN, description="16 bytes, canonical base64url without padding."),
        refuse=_REFUSE_AUTH,
    ),
]


@with_config(STRICT)
class PushKeys(TypedDict):
    p256dh: P256dh
    auth: Auth


@with_config(STRICT)
class PushSubscriptionJSON(TypedDict):
    """A Web Push subscription as `PushSubscription.toJSON()` gives it. `endpoint` is an https
    URL (plain http only for loopback hosts) without credentials or fragment, naming its host
    or giving an IPv4 address as a plain dotted quad, and on a public address unless the
    operator's `push.allow_private_networks` allows it; a name is checked again, on the
    addresses it resolves to, at every push. JSON Schema cannot state these: an endpoint that
    breaks one is refused with 400 `invalid_request`. `expirationTime` is accepted and
    ignored."""

    endpoint: Endpoint
    keys: PushKeys
    expirationTime: NotRequired[float | None]


def _refuse_subscription(name: str, problems: Sequence[Problem]) -> OperatorError:
    """The subscription's own descriptions, checked in this order, each naming the member."""

    def under(*path: str | int) -> list[Problem]:
        return [p for p in problems if p.path[: len(path)] == path and len(p.path) > len(path)]

    def at(*path: str | int) -> list[Problem]:
        return [p for p in problems if p.path == path]

    if at():
        return InvalidRequest(f"{name} must be an object")
    if any(p.type == "extra_forbidden" and len(p.path) == 1 for p in problems):
        return InvalidRequest(f"{name} has unknown members")
    if at("expirationTime"):
        return InvalidRequest(f"{name}.expirationTime must be null or a number")
    if any(p.type in ("missing", "string_type") for p in at("endpoint")):
        return InvalidRequest(f"{name}.endpoint must be a string")
    if at("keys"):
        return InvalidRequest(f"{name}.keys must be an object")
    keys = under("keys")
    if any(p.type in ("missing", "extra_forbidden") for p in keys):
        return InvalidRequest(f"{name}.keys must have exactly p256dh and auth")
    if any(p.type == "string_type" for p in keys):
        return InvalidRequest(f"{name}.keys members must be strings")
    if at("endpoint"):
        return _refuse_endpoint(f"{name}.endpoint", at("endpoint"))
    if at("keys", "p256dh"):
        return _REFUSE_P256DH(f"{name}.keys.p256dh", at("keys", "p256dh"))
    return _REFUSE_AUTH(f"{name}.keys.auth", at("keys", "auth"))


PushSubscriptionMember = Annotated[PushSubscriptionJSON, Kind(refuse=_refuse_subscription)]
"""The member type of request bodies that carry a subscription (the W3C Push API's
``PushSubscriptionJSON``)."""

_WIRE: Member[PushSubscriptionJSON] = Member(PushSubscriptionMember)
_ENDPOINT: Member[str] = Member(Endpoint)
_P256DH: Member[str] = Member(P256dh)
_AUTH: Member[str] = Member(Auth)


def _wire(member: Member[Any], value: Any, name: str) -> None:
    try:
        member.decode(value, name)
    except OperatorError as exc:
        raise ValueError(exc.description) from None


# -------------------------------------------------- what JSON Schema cannot say about them
def _check_endpoint(endpoint: str) -> None:
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError("endpoint must be a valid URL") from None
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


def _check_on_curve(value: str) -> None:
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), jose.b64url_decode(value))
    except ValueError:
        raise ValueError("keys.p256dh is not a point on P-256") from None


@dataclass(frozen=True)
class PushSubscription:
    """A device's Web Push subscription (RFC 8030 endpoint plus RFC 8291 keys).

    The constructor validates, so an instance is always safe to push to: each member against
    its declaration above (:class:`PushSubscriptionJSON`), then what JSON Schema cannot say
    (the endpoint's URL rules, the point on the curve).
    """

    endpoint: str
    p256dh: str
    auth: str

    def __post_init__(self) -> None:
        _wire(_ENDPOINT, self.endpoint, "endpoint")
        _wire(_P256DH, self.p256dh, "keys.p256dh")
        _wire(_AUTH, self.auth, "keys.auth")
        _check_endpoint(self.endpoint)
        _check_on_curve(self.p256dh)

    @classmethod
    def parse(cls, value: object, *, name: str = "pushSubscription") -> PushSubscription:
        """Build from the contract's JSON ``{"endpoint", "keys": {"p256dh", "auth"}}``.

        Strict: unknown members, missing members and wrong types raise :class:`ValueError`
        with a message fit for a 400 response (it never echoes the input), naming the value
        as ``name`` (the request member it came in).
        """
        try:
            wire = _WIRE.decode(value, name)
        except OperatorError as exc:
            raise ValueError(exc.description) from None
        return cls.from_wire(wire, name=name)

    @classmethod
    def from_wire(
        cls, value: PushSubscriptionJSON, *, name: str = "pushSubscription"
    ) -> PushSubscription:
        """Build from a subscription its declaration has already accepted; what JSON Schema
        cannot say raises :class:`ValueError` naming the value as ``name``."""
        try:
            keys = value["keys"]
            return cls(endpoint=value["endpoint"], p256dh=keys["p256dh"], auth=keys["auth"])
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
