"""The operator's ES256 signing keys: rotation, the public JWKS, signing and verifying our tokens.

Keys live in ``keys_dir`` as ``<kid>.pem`` (PKCS#8; ``kid`` is the RFC 7638 thumbprint), each
with an optional ``<kid>.json`` saying when it starts signing. Every instance pointed at the
same directory computes the same key states from the same files and the clock, so all of them
serve the same JWKS and sign with the same key without talking to each other; a new file is
picked up within :data:`REFRESH_SECONDS` without a restart.

A key's life::

    created ──(published)──> activates_at ──(signs)──> next key activates ──(published)──>
        retired_at + max token lifetime + JWKS max-age ──> no longer published

so a relying party that caches the JWKS for max-age already knows a key before it signs, and
still knows it until the last token it signed has expired. Credentials (which only the operator
verifies) are checked against every key in the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idtoken import jose
from idtoken.clock import Clock, SystemClock
from idtoken.keys.device import jwk_thumbprint, public_jwk
from idtoken.settings import Settings

JWKS_MAX_AGE = 3600
_VERIFIED_CACHE = 20_000
REFRESH_SECONDS = 10.0


class KeyStoreError(Exception):
    """The key directory cannot be read or holds an unusable key."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    public_jwk: Mapping[str, str]
    created: float
    activates_at: float
    signer: jose.ES256Signer
    verifier: jose.Verifier


@dataclass(frozen=True)
class KeyState:
    kid: str
    state: str  # "pending" (published, not yet signing), "active", "retired", "expired"
    activates_at: float
    retired_at: float | None
    published_until: float | None


@dataclass(frozen=True)
class _Snapshot:
    active: SigningKey
    published: tuple[SigningKey, ...]
    jwks_body: bytes
    jwks_etag: str
    valid_until: float


def key_states(keys: list[SigningKey], *, now: float, keep_after_retire: float) -> list[KeyState]:
    """Where each key is in its life at ``now`` (pure; used by the ring and by ``keys list``)."""
    ordered = sorted(keys, key=lambda k: (k.activates_at, k.created, k.kid))
    states = []
    for i, key in enumerate(ordered):
        successor = next((k for k in ordered[i + 1 :] if k.activates_at > key.activates_at), None)
        retired_at = successor.activates_at if successor and successor.activates_at <= now else None
        until = None if retired_at is None else retired_at + keep_after_retire
        if key.activates_at > now:
            state = "pending"
        elif retired_at is None:
            state = "active"
        else:
            state = "retired" if until is not None and now < until else "expired"
        states.append(KeyState(key.kid, state, key.activates_at, retired_at, until))
    return states


class SigningKeys:
    """The keys of ``keys_dir`` as they stand now; the active one signs."""

    def __init__(
        self,
        keys_dir: Path,
        *,
        clock: Clock | None = None,
        keep_after_retire: float = 3600 + JWKS_MAX_AGE,
        keys: list[SigningKey] | None = None,
    ) -> None:
        self._dir = keys_dir
        self._clock = clock or SystemClock()
        self._keep = keep_after_retire
        self._keys: list[SigningKey] = keys if keys is not None else _load_all(keys_dir)
        if not self._keys:
            raise KeyStoreError(f"{keys_dir}: no signing keys")
        self._by_kid = {k.kid: k for k in self._keys}
        self._listing = _listing(keys_dir)
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        self._snapshot: _Snapshot | None = None
        self._verified: OrderedDict[tuple[str, str], tuple[str, Mapping[str, Any]]] = OrderedDict()

    # ---- what callers use ------------------------------------------------------------------
    @property
    def active(self) -> SigningKey:
        return self._current().active

    @property
    def kids(self) -> list[str]:
        """The published kids (those in the JWKS)."""
        return [k.kid for k in self._current().published]

    @property
    def jwks_body(self) -> bytes:
        return self._current().jwks_body

    @property
    def jwks_etag(self) -> str:
        return self._current().jwks_etag

    @property
    def jwks(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.jwks_body)
        return body

    def states(self) -> list[KeyState]:
        self._refresh_files()
        return key_states(self._keys, now=self._clock.now(), keep_after_retire=self._keep)

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """A compact JWS over ``claims`` with the active key."""
        active = self.active
        header = {"alg": "ES256", "typ": typ, "kid": active.kid}
        return jose.sign_compact(header, claims, active.signer)

    def verify(self, token: object, *, typ: str, max_length: int = 8192) -> Mapping[str, Any]:
        """Verify one of our own tokens of kind ``typ``; raises :class:`jose.JoseError`.

        A phone presents the same credential with every approval, so successful verifications
        are remembered (the signature check is the costliest step of an approval); a hit is
        honoured only while the signing key is still in the directory. Time-dependent checks
        are the caller's and run every time."""
        if isinstance(token, str):
            hit = self._verified.get((typ, token))
            if hit is not None and hit[0] in self._by_kid:
                self._verified.move_to_end((typ, token))
                return hit[1]
        kid, payload = self._verify_uncached(token, typ=typ, max_length=max_length)
        if isinstance(token, str):
            self._verified[(typ, token)] = (kid, payload)
            if len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return payload

    def _verify_uncached(
        self, token: object, *, typ: str, max_length: int
    ) -> tuple[str, Mapping[str, Any]]:
        jws = jose.parse_compact(token, max_length=max_length)
        if jws.header.get("typ") != typ:
            raise jose.JoseError("wrong_typ")
        kid = jws.header.get("kid")
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            self._refresh_files(force=True)
            key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jose.JoseError("unknown_kid")
        key.verifier.verify(jws)
        return key.kid, jws.payload

    # ---- internals ---------------------------------------------------------------------------
    def _current(self) -> _Snapshot:
        self._refresh_files()
        now = self._clock.now()
        snap = self._snapshot
        if snap is None or now >= snap.valid_until:
            snap = self._snapshot = self._compute(now)
        return snap

    def _compute(self, now: float) -> _Snapshot:
        states = key_states(self._keys, now=now, keep_after_retire=self._keep)
        active = [s for s in states if s.state == "active"]
        if not active:
            # Only pending keys (a fresh directory after `keys rotate`): sign with the oldest
            # one rather than refuse to work.
            first = min(self._keys, key=lambda k: (k.activates_at, k.created, k.kid))
            active_key = first
        else:
            active_key = self._by_kid[active[-1].kid]
        published = tuple(
            self._by_kid[s.kid] for s in states if s.state in ("pending", "active", "retired")
        )
        if active_key not in published:
            published = (*published, active_key)
        body = json.dumps(
            {
                "keys": [
                    # An allowlist of public members, never a private key with members removed.
                    {
                        "kty": "EC",
                        "crv": "P-256",
                        "x": k.public_jwk["x"],
                        "y": k.public_jwk["y"],
                        "kid": k.kid,
                        "use": "sig",
                        "alg": "ES256",
                    }
                    for k in sorted(published, key=lambda k: k.kid)
                ]
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        # The snapshot holds until the next moment any key changes state.
        moments = [s.activates_at for s in states if s.activates_at > now]
        moments += [
            s.published_until for s in states if s.published_until and s.published_until > now
        ]
        return _Snapshot(
            active=active_key,
            published=published,
            jwks_body=body,
            jwks_etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            valid_until=min(moments, default=float("inf")),
        )

    def _refresh_files(self, *, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        try:
            listing = _listing(self._dir)
            if listing == self._listing:
                return
            keys = _load_all(self._dir)
        except (OSError, KeyStoreError):
            return  # keep serving with the keys we have; the next refresh tries again
        if keys:
            self._keys, self._listing = keys, listing
            self._by_kid = {k.kid: k for k in keys}
            self._snapshot = None


def keep_after_retire(settings: Settings) -> float:
    """How long a retired key stays published: the longest token lifetime plus max-age."""
    longest = max((s.token_ttl for s in settings.services.values()), default=3600)
    return float(longest + JWKS_MAX_AGE)


def load_or_create(
    keys_dir: Path,
    *,
    create: bool = True,
    clock: Clock | None = None,
    keep_after_retire: float = 3600 + JWKS_MAX_AGE,
) -> SigningKeys:
    """Load every key in ``keys_dir``; create the directory and a first key if there is none."""
    try:
        # Keys already there: read them without writing anything, so that keys_dir can be a
        # read-only mount (a Kubernetes Secret). Only creating the first key takes the lock.
        keys = _load_all(keys_dir) if keys_dir.is_dir() else []
        if not keys and create:
            keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(keys_dir):
                keys = _load_all(keys_dir) or [_write_new_key(keys_dir, activates_at=None)]
    except OSError as exc:
        raise KeyStoreError(f"keys_dir {keys_dir}: {exc.strerror or exc}") from exc
    if not keys:
        raise KeyStoreError(f"{keys_dir}: no signing keys")
    return SigningKeys(keys_dir, clock=clock, keep_after_retire=keep_after_retire, keys=keys)


def generate(keys_dir: Path, *, activates_at: float | None = None) -> SigningKey:
    """Create a key in ``keys_dir``: signing at once, or from ``activates_at`` (rotation)."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(keys_dir):
        return _write_new_key(keys_dir, activates_at=activates_at)


@contextlib.contextmanager
def _locked(keys_dir: Path) -> Iterator[None]:
    fd = os.open(keys_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _listing(keys_dir: Path) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for path in keys_dir.iterdir():
        if path.suffix in (".pem", ".json") and not path.name.startswith("."):
            st = path.stat()
            entries.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(entries))


def _load_all(keys_dir: Path) -> list[SigningKey]:
    keys = []
    for path in sorted(keys_dir.glob("*.pem")):
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{path}: not an unencrypted PEM private key") from exc
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise KeyStoreError(f"{path}: not an EC P-256 key")
        meta = _read_meta(path.with_suffix(".json"))
        created = float(meta.get("created", 0.0))
        activates_at = float(meta.get("activates_at", created))
        keys.append(_signing_key(private, created=created, activates_at=activates_at))
    return keys


def _read_meta(path: Path) -> dict[str, float]:
    if not path.exists():
        # A key without metadata (copied in by hand, or made by an older version) signs at once.
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{path}: unreadable key metadata") from exc
    if not isinstance(raw, dict):
        raise KeyStoreError(f"{path}: key metadata must be an object")
    meta: dict[str, float] = {}
    for name in ("created", "activates_at"):
        value = raw.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            meta[name] = float(value)
    return meta


def _signing_key(
    private: ec.EllipticCurvePrivateKey, *, created: float, activates_at: float
) -> SigningKey:
    jwk = public_jwk(private.public_key())
    return SigningKey(
        kid=jwk_thumbprint(jwk),
        private_key=private,
        public_jwk=jwk,
        created=created,
        activates_at=activates_at,
        signer=jose.ES256Signer(private),
        verifier=jose.verifier_for(private.public_key(), "ES256"),
    )


def _write_new_key(keys_dir: Path, *, activates_at: float | None) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    now = time.time()
    key = _signing_key(
        private, created=now, activates_at=now if activates_at is None else activates_at
    )
    _write_file(
        keys_dir / f"{key.kid}.json",
        json.dumps({"created": key.created, "activates_at": key.activates_at}).encode(),
    )
    _write_file(
        keys_dir / f"{key.kid}.pem",
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
