"""Choose the store named by the configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from idtoken.clock import Clock
from idtoken.settings import Settings
from idtoken.store.base import Store

if TYPE_CHECKING:
    from idtoken.store.redis import RedisStore


def open_store(settings: Settings, clock: Clock) -> Store:
    """Redis when ``redis_url`` is set, else the embedded single-process store."""
    if settings.redis_url:
        return open_redis_store(settings, clock)
    from idtoken.store.memory import MemoryStore

    return MemoryStore(clock)


def open_redis_store(settings: Settings, clock: Clock) -> RedisStore:
    """The Redis store for ``redis_url`` with the ``redis_tls_*`` files applied (standalone,
    Sentinel or Cluster, chosen by the URL scheme). Tools outside the server (the CLI) should
    use this rather than ``RedisStore(url, clock)`` so that TLS configuration applies."""
    from idtoken.store.redis import RedisStore

    if not settings.redis_url:
        raise ValueError("redis_url is not configured")
    return RedisStore(settings.redis_url, clock, tls=settings.redis_tls)
