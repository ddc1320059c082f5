"""The operator secret: a symmetric key every instance shares, for what must not be readable at
rest or forgeable by a client.

It protects, each under a key of its own derived with HKDF-SHA256 and a purpose label:

- *sealed* values (AES-256-GCM, the purpose as associated data): authorization codes and CIBA
  ``auth_req_id`` values (which carry the session's location, so that collecting a result is
  one store round trip), the hosted login page's request handle, access tokens (which carry
  the consented claims, so that ``/userinfo`` needs no claims at rest), and the token response
  kept with an approval until it is collected;
- *pairwise subjects* (OpenID Connect Core §8.1): HMAC-SHA256 of the sector and the tokenId.

The file holds 32 random bytes, base64url. It is created on first start (mode 0600) and never
rotated silently: a new secret changes every pairwise ``sub``. Every instance records the
secret's fingerprint in the shared store at start and refuses a different one (see
:meth:`idtoken.store.base.Store.register_secret`); ``idtoken-operator secret adopt`` records a
deliberately replaced one (docs/oidc.md, "The operator secret").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from idtoken.privatefile import write_private_file

SECRET_BYTES = 32
_NONCE_BYTES = 12
MAX_SEALED_LENGTH = 8192


class SecretError(Exception):
    """The secret file cannot be read or is not a secret of the right size."""


class SealError(Exception):
    """A sealed value is malformed, forged, or sealed for another purpose."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or len(text) > MAX_SEALED_LENGTH or not text.isascii() or "=" in text:
        raise SealError("malformed")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SealError("malformed") from None
    if _b64(data) != text:  # one encoding per value
        raise SealError("malformed")
    return data


def _derive(raw: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode()).derive(raw)


class OperatorSecret:
    """The derived keys of one operator secret."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != SECRET_BYTES:
            raise SecretError(f"the operator secret must be {SECRET_BYTES} bytes")
        self._aead = AESGCM(_derive(raw, "idtoken seal v1"))
        self._pairwise = _derive(raw, "idtoken pairwise subject v1")
        self.fingerprint = hashlib.sha256(_derive(raw, "idtoken fingerprint v1")).hexdigest()[:32]

    def seal(self, purpose: str, data: bytes) -> str:
        """``data`` encrypted and authenticated for ``purpose``: base64url, no padding."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _b64(nonce + self._aead.encrypt(nonce, data, purpose.encode()))

    def open(self, purpose: str, sealed: str) -> bytes:
        """The data of a value sealed for ``purpose``; :class:`SealError` otherwise."""
        raw = _unb64(sealed)
        if len(raw) < _NONCE_BYTES + 16:
            raise SealError("malformed")
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], purpose.encode())
        except InvalidTag:
            raise SealError("forged") from None

    def pairwise_subject(self, sector: str, token_id: str) -> str:
        """The ``sub`` of ``token_id`` for relying parties of ``sector``: stable, and not
        linkable across sectors without this secret."""
        mac = hmac.new(self._pairwise, f"{sector}\x00{token_id}".encode(), hashlib.sha256)
        return _b64(mac.digest())


def load_or_create_secret(path: Path) -> OperatorSecret:
    """Read the secret file, creating it (mode 0600) on first start."""
    if not path.exists():
        write_private_file(path, (_b64(secrets.token_bytes(SECRET_BYTES)) + "\n").encode())
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{path}: cannot read the operator secret ({exc})") from None
    try:
        raw = _unb64(text)
    except SealError:
        raise SecretError(f"{path}: not a base64url operator secret") from None
    if len(raw) != SECRET_BYTES:
        raise SecretError(f"{path}: the operator secret must be {SECRET_BYTES} bytes")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise SecretError(f"{path}: readable by other users; chmod 600 it")
    return OperatorSecret(raw)
