"""Identifiers, secrets and wire formats that several modules share. All randomness is CSPRNG."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets

ID_PATTERN = re.compile(r"\A[A-Za-z0-9._:@-]{1,128}\Z")
"""sessionId, tokenId and deviceId: never contain '|', so signed messages stay unambiguous."""

OTP_PATTERN = re.compile(r"\A[0-9]{6}\Z")


def new_session_id() -> str:
    return "sess_" + secrets.token_urlsafe(16)  # 128 bits


def new_ws_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def new_random() -> str:
    return secrets.token_hex(8)  # 64 bits, 16 lowercase hex characters


def new_otp() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"  # uniform over 000000..999999


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
    moment = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
