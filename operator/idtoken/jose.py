"""Strict compact JWS handling, framework-free.

Every token the operator reads (integration enrollment JWTs, KYC JWSs, its own credentials)
goes through :func:`parse_compact` and a :class:`Verifier` pinned to one key and one
algorithm. The rules follow RFC 8725: the algorithm comes from configuration, never from the
header; header members that fetch keys, carry keys or change processing (``jku``, ``x5u``,
``x5c``, ``jwk``, ``crit``, ``b64``, ``zip``, JWE members) are refused rather than ignored;
base64url and JSON are decoded strictly so that one token has exactly one meaning.

Every failure is a :class:`JoseError` whose ``reason`` is for the logs only; callers map all
of them to one opaque wire error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.hashes import SHA256

from idtoken.strictjson import StrictJsonError, loads_strict_json

__all__ = [
    "CompactJWS",
    "ES256Signer",
    "JoseError",
    "RawCompactJWS",
    "Signer",
    "StrictJsonError",
    "Verifier",
    "b64url_decode",
    "b64url_encode",
    "check_times",
    "es256_der_from_raw",
    "loads_strict_json",
    "numeric_date",
    "parse_compact",
    "parse_compact_raw",
    "sign_compact",
    "verifier_for",
    "verify_signature",
]

Alg = Literal["RS256", "ES256"]

DEFAULT_HEADER_MEMBERS: frozenset[str] = frozenset({"alg", "typ", "kid"})
MIN_RSA_BITS = 2048
# Order of the P-256 group: r and s of an ES256 signature must lie in [1, n-1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ES256_SIGNATURE_BYTES = 64


class JoseError(Exception):
    """Any token failure.

    ``reason`` is a short snake_case string for the logs; callers map every ``JoseError`` to
    one opaque wire error so that a client cannot learn which check failed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- base64url

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str) -> bytes:
    """Decode canonical base64url without padding; anything else raises :class:`JoseError`.

    Padding, ``+``/``/``, whitespace and non-zero trailing bits are refused so that every
    byte string has exactly one accepted encoding (a signed token cannot be re-encoded into
    a different string that still verifies).
    """
    if not isinstance(value, str) or _B64URL.fullmatch(value) is None:
        raise JoseError("bad_base64url")
    if len(value) % 4 == 1:
        raise JoseError("bad_base64url")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise JoseError("bad_base64url") from None
    if b64url_encode(data) != value:
        raise JoseError("non_canonical_base64url")
    return data


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class RawCompactJWS:
    """A strictly split compact JWS whose payload is kept as bytes (not yet JSON)."""

    header: Mapping[str, Any]
    payload_bytes: bytes
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True)
class CompactJWS:
    """A strictly parsed compact JWS whose payload is a JSON object. Not yet verified."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,256}")


def _check_header(header: Mapping[str, Any], allowed: frozenset[str]) -> None:
    if not header.keys() <= allowed:
        raise JoseError("header_member_not_allowed")
    if not isinstance(header.get("alg"), str):
        raise JoseError("bad_alg")
    if "kid" in header:
        kid = header["kid"]
        if not isinstance(kid, str) or _PRINTABLE_ASCII.fullmatch(kid) is None:
            raise JoseError("bad_kid")
    if "typ" in header and not isinstance(header["typ"], str):
        raise JoseError("bad_typ")


def parse_compact_raw(
    token: object,
    *,
    max_length: int = 16384,
    allowed_header: frozenset[str] = DEFAULT_HEADER_MEMBERS,
) -> RawCompactJWS:
    """Split and decode a compact JWS without interpreting its payload.

    Applies every rule of :func:`parse_compact` except that the payload may be any bytes.
    Useful for JWSs over non-JSON payloads; tokens should use :func:`parse_compact`.
    """
    if not isinstance(token, str):
        raise JoseError("not_a_string")
    # The size limit comes before any decoding so that a huge (e.g. b64=false detached)
    # payload costs nothing.
    if len(token) > max_length:
        raise JoseError("too_long")
    if not token.isascii():
        raise JoseError("not_ascii")
    dots = token.count(".")
    if dots == 4:
        # A JWE (possibly PBES2 with a huge p2c): refused on shape alone, its header is
        # never even decoded.
        raise JoseError("jwe_not_accepted")
    if dots != 2:
        raise JoseError("malformed")
    header_b64, payload_b64, signature_b64 = token.split(".")
    if not header_b64:
        raise JoseError("malformed")
    if not signature_b64:
        raise JoseError("empty_signature")
    try:
        header = loads_strict_json(b64url_decode(header_b64))
    except StrictJsonError:
        raise JoseError("bad_header_json") from None
    if not isinstance(header, dict):
        raise JoseError("header_not_object")
    _check_header(header, allowed_header)
    payload_bytes = b64url_decode(payload_b64)
    signature = b64url_decode(signature_b64)
    return RawCompactJWS(
        header=header,
        payload_bytes=payload_bytes,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


def parse_compact(
    token: object,
    *,
    max_length: int = 16384,
    allowed_header: frozenset[str] = DEFAULT_HEADER_MEMBERS,
) -> CompactJWS:
    """Parse a compact JWS strictly. The result is *not* verified: pass it to a verifier.

    ``token`` must be an ASCII ``str`` of at most ``max_length`` characters with exactly
    three base64url parts; a five-part JWE is refused unread. The header and payload must be
    strict JSON objects, the header may hold only ``allowed_header`` members, ``alg`` must be
    a string, ``kid`` (if present) 1-256 printable ASCII characters, and the signature must
    not be empty. Every failure raises :class:`JoseError`.
    """
    raw = parse_compact_raw(token, max_length=max_length, allowed_header=allowed_header)
    try:
        payload = loads_strict_json(raw.payload_bytes)
    except StrictJsonError:
        raise JoseError("bad_payload_json") from None
    if not isinstance(payload, dict):
        raise JoseError("payload_not_object")
    return CompactJWS(
        header=raw.header,
        payload=payload,
        signing_input=raw.signing_input,
        signature=raw.signature,
    )


# --------------------------------------------------------------------------- verification


def es256_der_from_raw(signature: bytes) -> bytes:
    """Convert a raw 64-byte ES256 ``r || s`` signature to DER, checking 1 <= r, s < n.

    Any other length (DER, 63/65/66 bytes) raises :class:`JoseError`. The range check is
    explicit rather than left to OpenSSL because r = 0 or s = 0 is the classic forgery
    (CVE-2022-21449).
    """
    if len(signature) != ES256_SIGNATURE_BYTES:
        raise JoseError("bad_signature_length")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise JoseError("bad_signature")
    return encode_dss_signature(r, s)


class Verifier(Protocol):
    """Verifies compact JWSs with one key under one pinned algorithm.

    Built once per configured key with :func:`verifier_for`. ``verify`` returns ``None`` on
    success and raises :class:`JoseError` on any failure, including a header ``alg`` that is
    not exactly the pinned one.
    """

    @property
    def alg(self) -> Alg: ...

    def verify(self, jws: CompactJWS | RawCompactJWS) -> None: ...


class _ES256Verifier:
    alg: Literal["ES256"] = "ES256"

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        self.key = key

    def verify(self, jws: CompactJWS | RawCompactJWS) -> None:
        if jws.header.get("alg") != self.alg:
            raise JoseError("alg_mismatch")
        der = es256_der_from_raw(jws.signature)
        try:
            self.key.verify(der, jws.signing_input, ec.ECDSA(SHA256()))
        except InvalidSignature:
            raise JoseError("bad_signature") from None


class _RS256Verifier:
    alg: Literal["RS256"] = "RS256"

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self.key = key
        self._signature_bytes = (key.key_size + 7) // 8

    def verify(self, jws: CompactJWS | RawCompactJWS) -> None:
        if jws.header.get("alg") != self.alg:
            raise JoseError("alg_mismatch")
        # RFC 8017 §8.2.2: the signature is exactly k bytes; shorter or longer is invalid.
        if len(jws.signature) != self._signature_bytes:
            raise JoseError("bad_signature_length")
        try:
            self.key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), SHA256())
        except InvalidSignature:
            raise JoseError("bad_signature") from None


def verifier_for(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, alg: Alg) -> Verifier:
    """Build the verifier for one configured key pinned to ``alg``.

    ES256 needs a P-256 public key, RS256 an RSA public key of at least 2048 bits; any other
    pairing (or algorithm) is a configuration error and raises ``ValueError``. Verification
    uses pyca/cryptography directly, so there is no per-call key import to cache.
    """
    if alg == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("ES256 needs an EC P-256 public key")
        return _ES256Verifier(key)
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("RS256 needs an RSA public key")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return _RS256Verifier(key)
    raise ValueError(f"unsupported algorithm {alg!r}: only RS256 and ES256 are accepted")


def verify_signature(
    jws: CompactJWS | RawCompactJWS,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    alg: Alg,
) -> None:
    """Verify ``jws`` with ``key`` pinned to ``alg``; raise :class:`JoseError` on failure.

    A thin wrapper over :func:`verifier_for`. Here a key that cannot serve ``alg`` (say a
    P-384 key from a JWKS) is a token failure (``JoseError("key_not_usable")``), not a crash.
    """
    try:
        verifier = verifier_for(key, alg)
    except ValueError:
        raise JoseError("key_not_usable") from None
    verifier.verify(jws)


# --------------------------------------------------------------------------- claims

# 2**40 seconds is about year 36812: far beyond any real expiry, small enough that no
# arithmetic on it overflows or loses precision as a float.
_MAX_NUMERIC_DATE = 2**40


def _numeric(payload: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    if name not in payload:
        if required:
            raise JoseError(f"missing_{name}")
        return None
    value = payload[name]
    # bool is a subclass of int: `true` must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JoseError(f"bad_{name}")
    # The comparison also refuses NaN and the infinities, and never converts a huge int.
    if not 0 <= value < _MAX_NUMERIC_DATE:
        raise JoseError(f"bad_{name}")
    return value


def numeric_date(payload: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    """Read a JWT NumericDate claim (RFC 7519 §2) as whole seconds, floored.

    Accepts an int (not a bool) or a finite float in ``[0, 2**40)``. Anything else raises
    ``JoseError(f"bad_{name}")``; a missing required claim raises
    ``JoseError(f"missing_{name}")``; a missing optional one returns ``None``.
    """
    value = _numeric(payload, name, required=required)
    return None if value is None else math.floor(value)


def check_times(
    payload: Mapping[str, Any],
    *,
    now: float,
    leeway: int,
    require_exp: bool = True,
    max_lifetime: int | None = None,
) -> None:
    """Check ``exp``, ``nbf`` and ``iat`` against ``now`` with ``leeway`` seconds of skew.

    ``exp`` must be after ``now - leeway`` (``"expired"``); ``nbf`` and ``iat``, when
    present, no later than ``now + leeway`` (``"not_yet_valid"``, ``"issued_in_future"``).
    With ``max_lifetime``, ``exp`` minus ``iat`` (or minus ``now`` when there is no ``iat``)
    may not exceed ``max_lifetime + leeway`` (``"lifetime_too_long"``), so that a token
    valid for a year is refused even when it is fresh. Malformed claims raise ``bad_*``.
    """
    exp = _numeric(payload, "exp", required=require_exp)
    nbf = _numeric(payload, "nbf", required=False)
    iat = _numeric(payload, "iat", required=False)
    if exp is not None and exp <= now - leeway:
        raise JoseError("expired")
    if nbf is not None and nbf > now + leeway:
        raise JoseError("not_yet_valid")
    if iat is not None and iat > now + leeway:
        raise JoseError("issued_in_future")
    if max_lifetime is not None and exp is not None:
        start = iat if iat is not None else now
        if exp - start > max_lifetime + leeway:
            raise JoseError("lifetime_too_long")


# --------------------------------------------------------------------------- signing


class Signer(Protocol):
    """Produces JWS signatures: ``alg`` names the algorithm, ``sign`` returns the raw
    signature bytes as they appear (base64url-decoded) in a compact JWS."""

    @property
    def alg(self) -> str: ...

    def sign(self, signing_input: bytes) -> bytes: ...


class ES256Signer:
    """ES256 with a P-256 private key, producing raw 64-byte ``r || s`` signatures."""

    alg: Literal["ES256"] = "ES256"

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or (
            private_key.curve.name != "secp256r1"
        ):
            raise ValueError("ES256 needs an EC P-256 private key")
        self._key = private_key

    def sign(self, signing_input: bytes) -> bytes:
        """Sign ``signing_input`` and return ``r || s``, each 32 bytes big-endian."""
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _compact_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def sign_compact(header: Mapping[str, Any], payload: Mapping[str, Any], signer: Signer) -> str:
    """Serialise and sign a compact JWS: the one signer of every JWS the operator makes.

    ``alg`` is taken from ``signer``: put first when ``header`` has none, and a header that
    names a different ``alg`` raises ``ValueError``. Members are written in the order given
    (so a header that names ``alg`` keeps its place, as the VAPID form needs), compactly, in
    UTF-8, with NaN/Infinity refused.
    """
    if header.get("alg", signer.alg) != signer.alg:
        raise ValueError("header alg does not match the signer")
    protected = dict(header) if "alg" in header else {"alg": signer.alg, **header}
    signing_input = (
        b64url_encode(_compact_json(protected)) + "." + b64url_encode(_compact_json(payload))
    )
    signature = signer.sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)
