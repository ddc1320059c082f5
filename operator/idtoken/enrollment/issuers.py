"""Enrollment issuers' public keys, loaded and checked once at start-up.

An integration server (seed 000) gives its key as a PEM public key, a PEM certificate, or the
base64 of either (``pubkey.pem.b64``, ``cert.b64``). The algorithm is pinned by key type — RS256
for RSA (≥2048 bits), ES256 for EC P-256 — and never taken from a token header.

Such an issuer has one key, so a token's ``kid`` chooses nothing: it is matched, never used as a
path or a query (catalogue J08). The key answers to two names, its RFC 7638 thumbprint and the
issuer's configured ``kid``. An issuer with a configured ``kid`` must send one of those two (or
none); an issuer without one may send any ``kid`` of the strict form :data:`KID_FORM`, since
many integration servers name their key themselves. Anything else is refused like a wrong key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idtoken import jose
from idtoken.errors import ConfigError
from idtoken.keys.device import jwk_thumbprint, public_jwk
from idtoken.settings import IssuerSettings

Alg = Literal["RS256", "ES256"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

KID_FORM = re.compile(r"(?!.*\.\.)[A-Za-z0-9._:-]{1,128}")
"""What a ``kid`` of an issuer configured by key may look like, whole (``fullmatch``): 1-128
letters, digits, ``.``, ``_``, ``:`` or ``-``, and no ``..``. Thumbprints (base64url), UUIDs,
dates and dotted or colon-separated names fit; a slash, a space, a quote, NUL or a non-string
does not. The configured ``kid`` must fit too."""


@dataclass(frozen=True)
class StaticIssuer:
    """An issuer whose single key is configured locally."""

    settings: IssuerSettings
    alg: Alg
    verifier: jose.Verifier
    thumbprint: str
    """The RFC 7638 SHA-256 thumbprint of the key: a ``kid`` that always names it."""

    def check_kid(self, header: Mapping[str, object]) -> None:
        """Refuse a header ``kid`` that does not name this key (``JoseError``): with a
        configured ``kid``, anything but it or the thumbprint (``unknown_kid``); without one,
        anything that does not fit :data:`KID_FORM` (``bad_kid``; the thumbprint fits)."""
        if "kid" not in header:
            return
        kid = header["kid"]
        if self.settings.kid is None:
            if not isinstance(kid, str) or KID_FORM.fullmatch(kid) is None:
                raise jose.JoseError("bad_kid")
        elif kid not in (self.settings.kid, self.thumbprint):
            raise jose.JoseError("unknown_kid")


def load_static_issuer(index: int, settings: IssuerSettings, *, now: float) -> StaticIssuer:
    """Load and check the key of ``enrollment_issuers[index]``; errors name the key."""
    prefix = f"enrollment_issuers[{index}]"
    if settings.public_key_file is not None:
        key_name = f"{prefix}.public_key_file"
        data = _read(key_name, settings.issuer, settings.public_key_file)
    elif settings.certificate_file is not None:
        key_name = f"{prefix}.certificate_file"
        data = _read(key_name, settings.issuer, settings.certificate_file)
    elif settings.public_key_b64 is not None:
        key_name = f"{prefix}.public_key_b64"
        data = settings.public_key_b64.encode("ascii", "replace")
    else:
        raise ConfigError(f"{prefix}.public_key_file", "no key configured")
    who = f"issuer {settings.issuer!r}"
    if not data.strip():
        raise ConfigError(key_name, f"{who}: the key is empty")
    key = _parse_key(key_name, who, _unwrap_base64(data), now=now)
    alg: Alg
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(key_name, f"{who}: RSA key of {key.key_size} bits (minimum 2048)")
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise ConfigError(key_name, f"{who}: EC curve {key.curve.name} (only P-256)")
        alg = "ES256"
    else:
        raise ConfigError(key_name, f"{who}: only RSA and EC P-256 keys are supported")
    if settings.kid is not None and KID_FORM.fullmatch(settings.kid) is None:
        raise ConfigError(
            f"{prefix}.kid", f"{who}: 1-128 of A-Z a-z 0-9 . _ : - without '..' (a key id)"
        )
    return StaticIssuer(
        settings=settings,
        alg=alg,
        verifier=jose.verifier_for(key, alg),
        thumbprint=jwk_thumbprint(_public_jwk(key)),
    )


def _public_jwk(key: PublicKey) -> dict[str, str]:
    """The members RFC 7638 hashes: ``kty``, ``crv``, ``x``, ``y`` (EC) or ``kty``, ``n``, ``e``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return public_jwk(key)
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "n": jose.b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": jose.b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }


def _read(key_name: str, issuer: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            key_name, f"issuer {issuer!r}: cannot read {path}: {exc.strerror or exc}"
        ) from exc


def _unwrap_base64(data: bytes) -> bytes:
    """``base64 pubkey.pem > pubkey.pem.b64`` wraps a PEM in base64 (with line breaks)."""
    if b"-----BEGIN" in data:
        return data
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return data
    return decoded if b"-----BEGIN" in decoded else data


def _parse_key(key_name: str, who: str, pem: bytes, *, now: float) -> PublicKey:
    if b"-----BEGIN CERTIFICATE-----" in pem:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise ConfigError(key_name, f"{who}: not a valid PEM certificate") from exc
        moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        if moment < cert.not_valid_before_utc:
            raise ConfigError(
                key_name,
                f"{who}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d}",
            )
        if moment > cert.not_valid_after_utc:
            raise ConfigError(
                key_name, f"{who}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
            )
        key: object = cert.public_key()
    else:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError(key_name, f"{who}: not a PEM public key or certificate") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigError(key_name, f"{who}: only RSA and EC P-256 keys are supported")
    return key
