"""The operator's ES256 signing keys, the public JWKS, and signing/verifying our own tokens.

Keys live as PKCS#8 PEM files in ``keys_dir`` named ``<kid>.pem`` where ``kid`` is the key's
RFC 7638 thumbprint. Every instance pointed at the same directory loads the same keys and so
serves byte-identical JWKS; keys are never generated per instance. The first start creates a key
under an exclusive lock, so two instances starting together cannot create two.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idtoken import jose
from idtoken.keys.device import jwk_thumbprint, public_jwk


class KeyStoreError(Exception):
    """The key directory cannot be read or holds an unusable key."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    public_jwk: Mapping[str, str]
    created: float
    signer: jose.ES256Signer
    verifier: jose.Verifier


class SigningKeys:
    """All signing keys loaded from ``keys_dir``; the newest one signs."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise KeyStoreError("no signing keys")
        self._keys = sorted(keys, key=lambda k: (k.created, k.kid))
        self._by_kid = {k.kid: k for k in self._keys}
        self.active = self._keys[-1]
        self.jwks = {
            "keys": [
                # Built from an allowlist of public members, never by deleting private ones.
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": k.public_jwk["x"],
                    "y": k.public_jwk["y"],
                    "kid": k.kid,
                    "use": "sig",
                    "alg": "ES256",
                }
                for k in self._keys
            ]
        }
        self.jwks_body = json.dumps(self.jwks, separators=(",", ":"), sort_keys=True).encode()
        self.jwks_etag = '"' + hashlib.sha256(self.jwks_body).hexdigest()[:32] + '"'

    @property
    def kids(self) -> list[str]:
        return [k.kid for k in self._keys]

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """A compact JWS over ``claims`` with the active key."""
        header = {"alg": "ES256", "typ": typ, "kid": self.active.kid}
        return jose.sign_compact(header, claims, self.active.signer)

    def verify(self, token: object, *, typ: str, max_length: int = 8192) -> Mapping[str, Any]:
        """Verify one of our own tokens of kind ``typ``; raises :class:`jose.JoseError`."""
        jws = jose.parse_compact(token, max_length=max_length)
        if jws.header.get("typ") != typ:
            raise jose.JoseError("wrong_typ")
        kid = jws.header.get("kid")
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jose.JoseError("unknown_kid")
        key.verifier.verify(jws)
        return jws.payload


def load_or_create(keys_dir: Path, *, create: bool = True) -> SigningKeys:
    """Load every key in ``keys_dir``; create the directory and a first key if there is none."""
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(keys_dir):
            keys = _load_all(keys_dir)
            if not keys and create:
                keys = [_write_new_key(keys_dir)]
    except OSError as exc:
        raise KeyStoreError(f"keys_dir {keys_dir}: {exc.strerror or exc}") from exc
    return SigningKeys(keys)


def generate(keys_dir: Path) -> SigningKey:
    """Create a new key in ``keys_dir`` (the CLI's ``keys generate``)."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(keys_dir):
        return _write_new_key(keys_dir)


@contextlib.contextmanager
def _locked(keys_dir: Path) -> Iterator[None]:
    fd = os.open(keys_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _load_all(keys_dir: Path) -> list[SigningKey]:
    keys = []
    for path in sorted(keys_dir.glob("*.pem")):
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{path}: not an unencrypted PEM private key") from exc
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise KeyStoreError(f"{path}: not an EC P-256 key")
        keys.append(_signing_key(private, path.stat().st_mtime))
    return keys


def _signing_key(private: ec.EllipticCurvePrivateKey, created: float) -> SigningKey:
    jwk = public_jwk(private.public_key())
    return SigningKey(
        kid=jwk_thumbprint(jwk),
        private_key=private,
        public_jwk=jwk,
        created=created,
        signer=jose.ES256Signer(private),
        verifier=jose.verifier_for(private.public_key(), "ES256"),
    )


def _write_new_key(keys_dir: Path) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = _signing_key(private, 0.0)
    path = keys_dir / f"{key.kid}.pem"
    tmp = keys_dir / f".{key.kid}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return _signing_key(private, path.stat().st_mtime)
