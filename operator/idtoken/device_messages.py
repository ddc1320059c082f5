"""The messages a device signs (wire contract §2), built in one place for the operator, the
reference device client and the test vectors.

Every field that enters a message is validated before it is used, so that ``|`` never occurs
inside one (ids, scopes, OTP, decimal timestamps); free text (a CIBA binding message, a push
endpoint) enters only as the lowercase hex SHA-256 of its UTF-8 bytes.
"""

from __future__ import annotations

import hashlib


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def enroll_message(device_id: str, timestamp: int, enrollment_token: str) -> str:
    return f"enroll|{device_id}|{timestamp}|{_digest(enrollment_token)}"


def verify_message(
    session_id: str,
    otp: str,
    timestamp: int,
    scopes: list[str],
    binding_message: str | None = None,
) -> str:
    """The approval. A session with a binding message (CIBA) appends ``|`` and the message's
    digest, so the phone signs the text it showed; every other session's message is the
    contract's four fields, unchanged."""
    base = f"{session_id}|{otp}|{timestamp}|{' '.join(scopes)}"
    return base if binding_message is None else f"{base}|{_digest(binding_message)}"


def reject_message(session_id: str, timestamp: int) -> str:
    return f"{session_id}|reject|{timestamp}"


def pending_message(token_id: str, timestamp: int) -> str:
    return f"{token_id}|pending|{timestamp}"


def subscription_message(token_id: str, endpoint: str, timestamp: int) -> str:
    return f"{token_id}|subscription|{timestamp}|{_digest(endpoint)}"
