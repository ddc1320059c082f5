"""Identifiers, secrets and wire formats that several modules share. All randomness is CSPRNG."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from typing import NamedTuple

ID_PATTERN = re.compile(r"\A[A-Za-z0-9._:@-]{1,128}\Z")
"""sessionId, tokenId and deviceId: never contain '|', so signed messages stay unambiguous."""

OTP_PATTERN = re.compile(r"\A[0-9]{6}\Z")

_OTP_SPACE = 1_000_000
_OTP_LIMIT = (1 << 32) - (1 << 32) % _OTP_SPACE  # below it, x % 10**6 is exactly uniform


def new_otp() -> str:
    """A code on its own (see :func:`new_session_secrets` for the usual way)."""
    return f"{secrets.randbelow(_OTP_SPACE):06d}"  # uniform over 000000..999999


class SessionSecrets(NamedTuple):
    session_id: str  # "sess_" + 128 bits, base64url
    ws_token: str  # 192 bits, base64url
    random: str  # 64 bits, 16 lowercase hex characters
    otp: str  # 6 digits, uniform over 000000..999999


def new_session_secrets() -> SessionSecrets:
    """Everything random a new session needs, from one read of the system CSPRNG (one system
    call instead of four); the OTP by rejection sampling, so that it stays exactly uniform."""
    raw = secrets.token_bytes(52)
    x = int.from_bytes(raw[48:52], "big")
    otp = f"{x % _OTP_SPACE:06d}" if x < _OTP_LIMIT else new_otp()
    return SessionSecrets(
        session_id="sess_" + base64.urlsafe_b64encode(raw[:16]).rstrip(b"=").decode(),
        ws_token=base64.urlsafe_b64encode(raw[16:40]).decode(),
        random=raw[40:48].hex(),
        otp=otp,
    )


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def result_hash(ws_token: str, session_id: str, random: str, jwt: str) -> str:
    """The ``hash`` of an ``approved`` message (contract §1)."""
    msg = f"{session_id}|{random}|{jwt}".encode()
    return hmac.new(ws_token.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def iso_z(epoch: float) -> str:
    """ISO 8601 UTC with a ``Z``, whole seconds (truncated, so never later than the truth)."""
    t = time.gmtime(int(epoch))
    return f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}Z"
