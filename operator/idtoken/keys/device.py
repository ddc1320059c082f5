"""Device (phone) keys: P-256 public keys and their raw ES256 signatures.

A device proves possession of its key by signing a short message (for example
``sessionId|otp|timestamp|scopes``) with ECDSA P-256 / SHA-256. The signature travels as
base64url (no padding) of the raw 64-byte ``r || s``, the JWS form; DER, other lengths and
padded encodings are refused so that one signature has one accepted encoding.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from idtoken.jose import JoseError, b64url_decode, b64url_encode, es256_der_from_raw

__all__ = [
    "DeviceKeyError",
    "jwk_thumbprint",
    "key_from_jwk",
    "load_device_public_key",
    "public_jwk",
    "verify_device_signature",
]

MAX_PEM_CHARS = 1024
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"
_COORDINATE_BYTES = 32
# base64url of 64 bytes without padding is always 86 characters: checked before decoding.
_SIGNATURE_CHARS = 86
_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y"})
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


class DeviceKeyError(Exception):
    """A device key or device signature was refused. ``reason`` is for the logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _require_p256(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise DeviceKeyError("unsupported_key")
    return key


def load_device_public_key(pem: object) -> ec.EllipticCurvePublicKey:
    """Load a device's P-256 public key from one SPKI PEM block.

    ``pem`` must be a ``str`` of at most 1024 characters holding exactly one
    ``PUBLIC KEY`` block and nothing else, whose DER is the canonical SPKI of an
    uncompressed P-256 point (what WebCrypto, Android and iOS export). cryptography refuses
    points off the curve or at infinity while loading; compressed or hybrid encodings of a
    valid point, other curves and other key types are refused here, so that a device key
    has exactly one accepted encoding.
    """
    if not isinstance(pem, str) or len(pem) > MAX_PEM_CHARS or not pem.isascii():
        raise DeviceKeyError("bad_public_key")
    lines = [line.strip() for line in pem.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _PEM_BEGIN or lines[-1] != _PEM_END:
        raise DeviceKeyError("bad_public_key")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
        key = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise DeviceKeyError("bad_public_key") from None
    key = _require_p256(key)
    if key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != der:
        raise DeviceKeyError("bad_public_key")
    return key


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key: exactly ``kty``, ``crv`` and fixed-length ``x``, ``y``."""
    numbers = _require_p256(key).public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        "y": b64url_encode(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url without padding.

    Only the required members of the key type are hashed (``crv``, ``kty``, ``x``, ``y``
    for EC; ``e``, ``kty``, ``n`` for RSA), so optional members never change the result.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise DeviceKeyError("unsupported_kty")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise DeviceKeyError("bad_jwk")
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


@functools.lru_cache(maxsize=4096)
def _key_from_coordinates(x: str, y: str) -> ec.EllipticCurvePublicKey:
    # Cached so that the same device key, seen on every approval, is imported once.
    # cryptography keys are immutable, so sharing one object between callers is safe.
    # Failures raise and are therefore never cached.
    try:
        x_bytes, y_bytes = b64url_decode(x), b64url_decode(y)
    except JoseError:
        raise DeviceKeyError("bad_jwk") from None
    if len(x_bytes) != _COORDINATE_BYTES or len(y_bytes) != _COORDINATE_BYTES:
        raise DeviceKeyError("bad_jwk")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + x_bytes + y_bytes
        )
    except ValueError:
        raise DeviceKeyError("bad_jwk") from None


def key_from_jwk(jwk: object) -> ec.EllipticCurvePublicKey:
    """Import a device key from a strict P-256 JWK.

    The JWK must have exactly ``kty`` = ``EC``, ``crv`` = ``P-256`` and 32-byte canonical
    base64url ``x`` and ``y`` naming a point on the curve; anything else (extra members
    included) raises :class:`DeviceKeyError`. Results are cached by ``(x, y)``.
    """
    if not isinstance(jwk, Mapping) or set(jwk.keys()) != _JWK_MEMBERS:
        raise DeviceKeyError("bad_jwk")
    if jwk["kty"] != "EC" or jwk["crv"] != "P-256":
        raise DeviceKeyError("bad_jwk")
    x, y = jwk["x"], jwk["y"]
    # Cheap length check first: a 32-byte coordinate is always 43 characters.
    if not (isinstance(x, str) and isinstance(y, str) and len(x) == len(y) == 43):
        raise DeviceKeyError("bad_jwk")
    return _key_from_coordinates(x, y)


def verify_device_signature(
    key: ec.EllipticCurvePublicKey, message: str, signature: object
) -> None:
    """Verify a device's ES256 signature over the UTF-8 bytes of ``message``.

    ``signature`` must be base64url without padding of exactly 64 bytes ``r || s`` with
    ``1 <= r, s < n``. Returns ``None`` on success and raises :class:`DeviceKeyError` on any
    failure (``bad_signature_encoding`` for the form, ``bad_signature`` for the check).
    """
    _require_p256(key)
    if not isinstance(signature, str) or len(signature) != _SIGNATURE_CHARS:
        raise DeviceKeyError("bad_signature_encoding")
    try:
        raw = b64url_decode(signature)
    except JoseError:
        raise DeviceKeyError("bad_signature_encoding") from None
    try:
        der = es256_der_from_raw(raw)
    except JoseError:
        raise DeviceKeyError("bad_signature") from None
    if not isinstance(message, str):
        raise DeviceKeyError("bad_message")
    try:
        data = message.encode("utf-8")
    except UnicodeEncodeError:
        raise DeviceKeyError("bad_message") from None
    try:
        key.verify(der, data, ec.ECDSA(SHA256()))
    except InvalidSignature:
        raise DeviceKeyError("bad_signature") from None
