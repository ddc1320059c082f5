"""Redis key and channel names (the layout is described in :mod:`idtoken.store.redis`).

Everything about one token carries its hash tag ``{t:<tokenId>}``, so that every script stays
in one Cluster slot; the socket reference is in the session id's own slot.
"""

from __future__ import annotations

CHANNEL = "idtoken:events"
"""Standalone and Sentinel: every event, one channel."""


def token_tag(token_id: str) -> str:
    return f"idtoken:{{t:{token_id}}}"


def device_key(token_id: str) -> str:
    return f"{token_tag(token_id)}:device"


def session_key(token_id: str, session_id: str) -> str:
    return f"{token_tag(token_id)}:sess:{session_id}"


def shard_channel(token_id: str) -> str:
    """The token's event channel on a Redis Cluster: in the slot of the token's keys."""
    return f"{token_tag(token_id)}:events"


def ref_key(session_id: str) -> str:
    return f"idtoken:sessref:{{{session_id}}}"


def lock_key(name: str) -> str:
    """A single-use claim or cooldown (``Store.acquire``), in its own slot."""
    return f"idtoken:lock:{{{name}}}"


def enroll_claim(replay_id: str) -> str:
    """The claim that makes an enrollment token single use, across every token."""
    return lock_key(f"enroll-jti:{replay_id}")
