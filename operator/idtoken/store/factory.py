"""Choose the store named by the configuration."""

from __future__ import annotations

from idtoken.clock import Clock
from idtoken.settings import Settings
from idtoken.store.base import Store


def open_store(settings: Settings, clock: Clock) -> Store:
    """Redis when ``redis_url`` is set, else the embedded single-process store."""
    if settings.redis_url:
        from idtoken.store.redis import RedisStore

        return RedisStore(settings.redis_url, clock)
    from idtoken.store.memory import MemoryStore

    return MemoryStore(clock)
