"""The operator's VAPID identity (RFC 8292): a P-256 key kept in a PEM file, and the JWTs it signs.

The public half is the ``applicationServerKey`` the app subscribes with; push services bind the
subscription to it, so the key must survive restarts. It is created on first start and never
rotated silently: a new key would orphan every stored subscription.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idtoken import jose
from idtoken.privatefile import write_private_file
from idtoken.push.base import b64url_encode

logger = logging.getLogger("idtoken.push")

# RFC 8292 §2: push services reject tokens whose exp is more than 24 h away. 12 h leaves room
# for clock skew between us and the push service.
VAPID_TOKEN_LIFETIME = 12 * 3600
# The header as push services have always been sent it, member order included.
_JWT_HEADER = {"typ": "JWT", "alg": "ES256"}


def load_or_create_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the VAPID key from a PKCS#8 PEM file, creating it (mode 0600) if it does not exist.

    Creation is atomic: the key is written to a private temporary file and linked into place,
    so two processes starting together end up with the same key and nobody reads half a file.
    Raises :class:`ValueError` naming the path if the file is unreadable, not PEM, encrypted or
    not a P-256 private key.
    """
    path = Path(path)
    if not path.exists():
        _create_key_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the VAPID private key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: the VAPID key must be an EC P-256 private key")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("VAPID key file %s is accessible to other users; chmod 600 it", path)
    return key


def _create_key_file(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if write_private_file(path, pem):  # else another process created it first: use theirs
        logger.info("created VAPID key %s", path)


def vapid_public_key_b64(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The ``applicationServerKey``: unpadded base64url of the uncompressed public point."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    raw = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(raw)


def sign_vapid_jwt(key: ec.EllipticCurvePrivateKey, *, aud: str, sub: str, exp: int) -> str:
    """An ES256 JWT for RFC 8292 ``vapid t=``: header ``{"typ":"JWT","alg":"ES256"}``, claims
    ``{"aud":…,"exp":…,"sub":…}`` in that order without spaces, the form every push service
    accepts. Signed by :func:`idtoken.jose.sign_compact`, like every other JWS we make."""
    return jose.sign_compact(
        _JWT_HEADER, {"aud": aud, "exp": exp, "sub": sub}, jose.ES256Signer(key)
    )


class VapidSigner:
    """Builds RFC 8292 ``Authorization`` headers, caching one token per audience.

    A token is reused until an hour before its ``exp`` so that signing is not on the path of
    every push; ``now`` is passed in (the notifier's clock) rather than read here.
    """

    REFRESH_MARGIN = 3600

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        if not subject.startswith(("mailto:", "https://")):
            raise ValueError("vapid_subject must be a mailto: or https: URI")
        self._key = key
        self._subject = subject
        self._public_b64 = vapid_public_key_b64(key)
        self._cache: dict[str, tuple[str, int]] = {}

    @property
    def public_key_b64(self) -> str:
        return self._public_b64

    def authorization(self, aud: str, *, now: float) -> str:
        """``vapid t=<jwt>, k=<public key>`` for the push service at origin ``aud``."""
        cached = self._cache.get(aud)
        if cached is None or cached[1] - self.REFRESH_MARGIN <= now:
            exp = int(now) + VAPID_TOKEN_LIFETIME
            token = sign_vapid_jwt(self._key, aud=aud, sub=self._subject, exp=exp)
            # Real deployments see a handful of push services, but endpoints are chosen by
            # devices, so bound the cache rather than trust that.
            if len(self._cache) >= 256:
                self._cache.clear()
            cached = (token, exp)
            self._cache[aud] = cached
        return f"vapid t={cached[0]}, k={self._public_b64}"
