"""Real client libraries against a fleet of real operator processes: the fleet, and
openid-client (npm) in a child process.

Three ``idtoken-operator serve`` child processes share one Redis, one ``keys_dir`` and one
operator secret (``[oidc] secret_key_file``), as a load-balanced deployment does. The issuer is
instance A's real URL, so that a client can fetch discovery from the issuer as the libraries
insist (each compares the document's ``issuer`` with the URL it fetched); A's port is chosen
before the configuration is written. The endpoints in the discovery document are therefore
A's: a test sends a request to another instance by keeping the endpoint's path and changing
only its origin, as a load balancer would (the scripts in tests/js take a ``route`` for this).

``./scripts/test`` installs openid-client (``npm ci`` in tests/js); without node or the package
the tests fail and say what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from idtoken.client import Device
from support import REPO, OperatorConfig, OperatorProcess, RedisServer, redis_server, running

JS_DIR = REPO / "tests" / "js"
# Generous: a slow two-core machine runs three operators, Redis and node at once.
STEP_TIMEOUT = 120.0


# ----------------------------------------------------------------------------- the fleet
@dataclass
class Fleet:
    redis: RedisServer
    config: OperatorConfig
    procs: list[OperatorProcess]

    @property
    def issuer(self) -> str:
        return self.config.issuer_url


@contextlib.contextmanager
def operator_fleet(
    directory: Path, services: list[dict[str, Any]], *, oidc: str = ""
) -> Iterator[Fleet]:
    """Redis and three operators whose issuer is the first; ``oidc`` adds lines to the
    ``[oidc]`` table, which names the shared operator secret."""
    with redis_server() as redis:
        config_file = directory / "operator.toml"
        procs = [OperatorProcess(config_file) for _ in range(3)]
        config = OperatorConfig(
            directory,
            redis_url=redis.url,
            services=services,
            limits={"enroll_per_ip_per_hour": 10_000},
            issuer_url=procs[0].url,
            extra=f'\n[oidc]\nsecret_key_file = "secret.key"\n{oidc}',
        )
        assert config.write() == config_file
        with running(procs, timeout=60):
            yield Fleet(redis, config, procs)


@contextlib.asynccontextmanager
async def instances(fleet: Fleet) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=proc.url, timeout=STEP_TIMEOUT)
            )
            for proc in fleet.procs
        ]


def on(instance: httpx.AsyncClient, endpoint: str) -> str:
    """``endpoint`` (a URL from discovery) on another instance: same path, its origin."""
    origin = urlsplit(str(instance.base_url))
    return urlunsplit(urlsplit(endpoint)._replace(scheme=origin.scheme, netloc=origin.netloc))


async def enrolled_phone(fleet: Fleet, http: httpx.AsyncClient) -> tuple[str, Device]:
    """A new user's phone, enrolled on ``http``'s instance: the token id and the device."""
    token_id = f"user-{uuid.uuid4().hex[:12]}"
    device = Device(http, device_id=f"dev-{token_id}")
    await device.enroll(
        fleet.config.issuers[0].mint(
            token_id, given_name="Marie", family_name="Dupont", birthdate="1990-05-01"
        )
    )
    return token_id, device


async def collected_on(fleet: Fleet, session_id: str) -> list[int]:
    """Which instances (0, 1, 2) handed out the session's tokens, as their logs say. An
    instance writes the line as its event loop turns after the answer: wait for it."""
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while True:
        found = [
            i
            for i, proc in enumerate(fleet.procs)
            for line in proc.logs().splitlines()
            if line.startswith("{")
            and (event := json.loads(line)).get("msg") == "tokens collected"
            and event.get("session_id") == session_id
        ]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- openid-client
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: install Node.js 20 or newer with npm "
            "(Debian: apt-get install nodejs npm), then run ./scripts/test, which runs "
            "npm ci in tests/js"
        )
    return node


def openid_client_version() -> str:
    """The installed openid-client, which must be the version tests/js/package.json pins."""
    installed = JS_DIR / "node_modules" / "openid-client" / "package.json"
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["openid-client"]
    if not installed.exists():
        pytest.fail(
            "openid-client is not installed: run ./scripts/test (or: cd tests/js && npm ci)"
        )
    version: str = json.loads(installed.read_text())["version"]
    if version != pinned:
        pytest.fail(f"openid-client {version} is installed, {pinned} pinned: cd tests/js && npm ci")
    return version


def assert_token_summary(summary: dict[str, Any], scope: str) -> None:
    """A token response as the scripts sum it up (``tokenSummary``, tests/js/support.mjs): a
    Bearer access token for ``scope`` and for at most an hour, and no refresh token."""
    assert summary == {
        "token_type": "bearer",
        "scope": scope,
        "expires_in": summary["expires_in"],
        "has_access_token": True,
        "has_refresh_token": False,
    }
    assert 0 < summary["expires_in"] <= 3600


class NodeClient:
    """A script of tests/js in a child process, one JSON line per step."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def next_step(self, expected: str) -> dict[str, Any]:
        message = await self.next_message(expected)
        assert message["step"] == expected, message
        return message

    async def next_message(self, awaited: str) -> dict[str, Any]:
        """The next line, whatever its step (``awaited`` names what the test waits for)."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT)
        if not line:
            raise AssertionError(f"the node client ended before {awaited!r}: {await self.stderr()}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT)
        return (await self.process.stderr.read()).decode(errors="replace")


@contextlib.asynccontextmanager
async def node_client(script: str, settings: dict[str, Any]) -> AsyncIterator[NodeClient]:
    """``node tests/js/<script> '<settings JSON>'``, which must end with status 0. It needs
    the installed openid-client: the test fails, naming what to install, without it."""
    openid_client_version()
    process = await asyncio.create_subprocess_exec(
        node_binary(),
        str(JS_DIR / script),
        json.dumps(settings),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeClient(process)
        assert await asyncio.wait_for(process.wait(), STEP_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
