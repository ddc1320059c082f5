"""Shared fixtures: a real redis-server for the session, operators on real uvicorn servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from idtoken.app import create_app
from idtoken.client import Device, RelyingParty
from idtoken.clock import ManualClock
from idtoken.settings import Settings, load_settings
from support import Issuer, OperatorConfig, RedisServer, redis_server, serve_in_process


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    # No skip: a missing redis-server is a failure of the test set-up, reported loudly.
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    redis_srv.cli("FLUSHALL")
    return redis_srv.url


@dataclass
class Operator:
    """An operator app served by uvicorn in the test's event loop, with clients for it."""

    config: OperatorConfig
    settings: Settings
    clock: ManualClock | None
    base_url: str
    http: httpx.AsyncClient
    app: Any

    @property
    def issuer(self) -> Issuer:
        return self.config.issuers[0]

    def device(self, device_id: str = "device-1") -> Device:
        return Device(self.http, device_id=device_id)

    async def enrolled(
        self, sub: str = "user-1", device_id: str = "device-1", **claims: Any
    ) -> Device:
        device = self.device(device_id)
        await device.enroll(self.issuer.mint(sub, **claims))
        return device

    def rp(self, service_id: str = "shop", **kw: Any) -> RelyingParty:
        service = next(s for s in self.config.services if s["id"] == service_id)
        return RelyingParty(
            self.http,
            service_id=service_id,
            issuer=self.settings.issuer,
            audience=service.get("audience", service_id),
            **kw,
        )


OperatorFactory = Callable[..., contextlib.AbstractAsyncContextManager[Operator]]


@pytest.fixture
def make_operator(tmp_path: Path, redis_srv: RedisServer) -> OperatorFactory:
    counter = iter(range(1000))

    @contextlib.asynccontextmanager
    async def factory(
        *, store: str = "redis", clock: ManualClock | None = None, **config: Any
    ) -> AsyncIterator[Operator]:
        cfg = OperatorConfig(
            tmp_path / f"op{next(counter)}",
            redis_url=redis_srv.url if store == "redis" else None,
            **config,
        )
        settings = load_settings(cfg.write())
        app = create_app(settings, clock=clock)
        async with (
            serve_in_process(app) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            yield Operator(cfg, settings, clock, url, http, app)

    return factory


@pytest.fixture
async def operator(make_operator: OperatorFactory, redis_url: str) -> AsyncIterator[Operator]:
    async with make_operator() as op:
        yield op
