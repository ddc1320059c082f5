"""Fault injection with a real Redis and real operator processes ("Scale and survive", item 4).

Every instance is a ``python -m idtoken serve`` child process (with a short ``--drain-timeout``)
on one configuration file and one Redis; the tests talk to them over HTTP and WebSocket as the
reference relying party and phone would, and inject faults from outside: ``CLIENT KILL TYPE
pubsub``, stopping and restarting ``redis-server`` (with AOF, ``appendfsync always``),
``SIGTERM`` and ``SIGKILL`` to an instance.

Catalogue rows: R01 (Redis down), R04 (subscriber connection dropped), R05 (Redis restarted
with flows in flight), R09 (concurrent verifies on one session), F01 (SIGTERM with live
sockets), F02 (SIGKILL with verifies in flight).

The instances in ``fleet`` (module scope, plain Redis) are shared by the tests that do not
break Redis; a test that stops an instance leaves it to :meth:`Fleet.live` to start a fresh
one. The tests that stop or restart Redis get their own Redis and instances (``aof_fleet``).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from idtoken.client import Device, Initiation, RelyingParty
from idtoken.issued_jwt import open_final
from idtoken.oidc.secret import load_or_create_secret
from support import (
    DEFAULT_SERVICE,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    closed_code,
    otp_ready,
    recv_json,
    redis_server,
)
from support import Node as InstanceNode

AUDIENCE = "shop-audience"
TYPED_AUDIENCE = "typed-audience"
TYPED = {
    **DEFAULT_SERVICE,
    "id": "shop-typed",
    "name": "Typed Shop",
    "audience": TYPED_AUDIENCE,
    "otp_mode": "typed",
}
LIMITS = {
    "enroll_per_ip_per_hour": 10_000,  # every enrollment comes from 127.0.0.1
    "max_pending_per_token": 100,  # many flows per token in flight at once
    "pushes_per_token_per_10min": 1000,
}
DRAIN = 3.0  # --drain-timeout of every instance (seconds)
SCOPES = ["identity:name"]
RECONNECT_CODES = {1006, 1011, 1012}  # relying-party guide §4: reconnect on these


# ----------------------------------------------------------------------------- processes
class Instance(OperatorProcess):
    """:class:`support.OperatorProcess` with a short ``--drain-timeout``."""

    def __init__(self, config_file: Path, **kwargs: Any) -> None:
        super().__init__(config_file, args=("--drain-timeout", str(DRAIN)), **kwargs)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Fleet:
    redis: RedisServer
    config: OperatorConfig
    config_file: Path
    procs: list[Instance]

    def live(self) -> None:
        """Start a fresh process in place of every instance a test stopped (in parallel)."""
        dead = [i for i, p in enumerate(self.procs) if not p.alive()]
        for i in dead:
            self.procs[i].stop()
        fresh = [Instance(self.config_file) for _ in dead]
        _start_all(fresh)
        for i, proc in zip(dead, fresh, strict=True):
            self.procs[i] = proc

    def session_field(self, token_id: str, session_id: str, name: str) -> str:
        return self.redis.cli("HGET", f"idtoken:{{t:{token_id}}}:sess:{session_id}", name)


def _start_all(procs: Sequence[Instance]) -> None:
    with concurrent.futures.ThreadPoolExecutor(max(1, len(procs))) as pool:
        list(pool.map(lambda p: p.start(), procs))


@contextlib.contextmanager
def running_fleet(directory: Path, *redis_args: str) -> Iterator[Fleet]:
    with redis_server(*redis_args) as redis:
        config = OperatorConfig(
            directory, redis_url=redis.url, services=[dict(DEFAULT_SERVICE), TYPED], limits=LIMITS
        )
        path = config.write()
        procs = [Instance(path) for _ in range(3)]
        try:
            _start_all(procs)
            yield Fleet(redis, config, path, procs)
        finally:
            for proc in procs:
                proc.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three instances on one Redis, shared by the tests that do not stop Redis."""
    with running_fleet(tmp_path_factory.mktemp("faults")) as f:
        yield f


@pytest.fixture
def aof_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Three instances on a Redis of their own, with AOF: for the tests that stop Redis."""
    with running_fleet(tmp_path / "aof", "--appendonly", "yes", "--appendfsync", "always") as f:
        yield f


# ----------------------------------------------------------------------------- clients
@dataclass
class Node(InstanceNode):
    """An instance with relying parties for both services."""

    typed_rp: RelyingParty

    def socket_url(self, started: Initiation) -> str:
        return self.rp.socket_url(started)


@contextlib.asynccontextmanager
async def nodes(fleet: Fleet) -> AsyncIterator[list[Node]]:
    fleet.live()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for proc in fleet.procs:
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=proc.url, timeout=15, limits=limits)
            )
            issuer = fleet.config.issuer_url
            rp = RelyingParty(http, service_id="shop", issuer=issuer, audience=AUDIENCE)
            typed = RelyingParty(
                http, service_id="shop-typed", issuer=issuer, audience=TYPED_AUDIENCE
            )
            out.append(Node(proc, http, rp, typed))
        yield out


def new_token_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def enroll(fleet: Fleet, node: Node, token_id: str | None = None) -> Device:
    token_id = token_id or new_token_id()
    device = Device(node.http, device_id=f"dev-{token_id}")
    await device.enroll(fleet.config.issuers[0].mint(token_id, given_name="Ada"))
    return device


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload, unverified (signatures are checked with ``RelyingParty.verify_jwt``)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def token_of(device: Device) -> str:
    assert device.enrollment is not None
    return device.enrollment.token_id


def stored_jwt(fleet: Fleet, token_id: str, session_id: str) -> str:
    """The JWT an approval stored, opened with the fleet's operator secret (it is kept
    sealed: no identity claim at rest)."""
    stored = fleet.session_field(token_id, session_id, "result")
    assert json.loads(stored)["type"] == "approved", stored
    secret = load_or_create_secret(fleet.config.directory / "var" / "secret.key")
    result = json.loads(open_final(secret, session_id, stored))
    return str(result["jwt"])


def assert_503(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "temporarily_unavailable", resp.text
    assert int(resp.headers["retry-after"]) >= 1, resp.headers


@dataclass
class Recorder:
    """Everything one browser socket receives until it closes, read in the background."""

    sock: websockets.ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> Recorder:
        rec = cls(await websockets.connect(url, compression=None))
        rec.task = asyncio.create_task(rec._read())
        return rec

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.sock:
                self.messages.append(json.loads(raw))
                self.arrived.append(time.monotonic())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def until(self, kind: str, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.of(kind):
                if self.task is not None and self.task.done():
                    raise AssertionError(f"closed {self.sock.close_code} before {kind}")
                await asyncio.sleep(0.01)
        return self.of(kind)[0]

    async def finished(self, timeout: float = 10.0) -> int | None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.sock.close_code

    async def aclose(self) -> None:
        await self.sock.close()
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def recorders(urls: Sequence[str]) -> AsyncIterator[list[Recorder]]:
    opened: list[Recorder] = []
    try:
        for url in urls:
            opened.append(await Recorder.open(url))
        yield opened
    finally:
        await asyncio.gather(*(r.aclose() for r in opened))


@dataclass
class Browser:
    """A relying party's page waiting for one login, reconnecting as the RP guide says (on
    1006, 1011, 1012 and network errors), each time to the next instance in ``urls``."""

    started: Initiation
    urls: list[str]
    ready: bool = False
    finals: list[dict[str, Any]] = field(default_factory=list)  # every terminal message
    closes: list[int | None] = field(default_factory=list)
    gave_up: str | None = None  # why it stopped without a terminal message
    failures: list[str] = field(default_factory=list)  # what a 1006 was, for the report
    finished_at: float | None = None

    async def run(self, deadline: float) -> None:
        delay = 0.1
        attempt = 0
        loop = asyncio.get_running_loop()
        while self.gave_up is None and not self.finals:
            if loop.time() >= deadline:
                self.gave_up = "hung: no terminal message before the deadline"
                return
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            code: int | None = None
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    async with websockets.connect(url, compression=None, open_timeout=5) as sock:
                        try:
                            async for raw in sock:
                                message = json.loads(raw)
                                if message["type"] == "otp_ready":
                                    self.ready = True
                                else:
                                    self.finals.append(message)
                                    self.finished_at = time.monotonic()
                        except websockets.ConnectionClosed:
                            pass
                    code = sock.close_code
            except TimeoutError:
                if loop.time() >= deadline:
                    self.gave_up = "hung: no terminal message before the deadline"
                    return
                code = 1006  # the handshake timed out
                self.failures.append(f"{url}: handshake timed out")
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                code = 1006  # refused or dropped: what a browser reports
                self.failures.append(f"{url}: {exc!r}")
            self.closes.append(code)
            if self.finals:
                return
            if code not in RECONNECT_CODES:
                self.gave_up = f"closed {code} without a terminal message"
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def approve_retrying(device: Device, started: Initiation, attempts: int = 8) -> list[Any]:
    """The phone: send the approval, freshly signed each time; after a 503 wait Retry-After,
    after a network error 0.5 s, and send it again. Returns every outcome, in order."""
    outcomes: list[Any] = []
    for _ in range(attempts):
        try:
            resp = await device.approve(started.session_id, started.auto_password, SCOPES)
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)
            await asyncio.sleep(0.5)
            continue
        if resp.status_code == 503:
            outcomes.append(503)
            await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
            continue
        outcomes.append((resp.status_code, resp.json().get("error", resp.json().get("status"))))
        break
    return outcomes


# ----------------------------------------------------------------------------- three instances
async def test_initiate_on_a_socket_on_b_verify_on_c(fleet: Fleet) -> None:
    """One login touching a different instance at each step; the JWT is the stored one."""
    async with nodes(fleet) as (a, b, c):
        device = await enroll(fleet, a)
        token_id = token_of(device)
        started = await a.rp.initiate(token_id, SCOPES, nonce="n-abc")
        async with websockets.connect(b.socket_url(started), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(started)
            resp = await c.device(device).approve(started.session_id, started.auto_password, SCOPES)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"status": "approved"}
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert approved["random"] == started.random
            assert b.rp.hash_ok(started, approved)
            assert await closed_code(sock) == 1000
        for node in (a, b, c):  # every instance's JWKS verifies it
            claims = await node.rp.verify_jwt(
                approved["jwt"], session_id=started.session_id, nonce="n-abc"
            )
            assert claims["sub"] == token_id
        assert stored_jwt(fleet, token_id, started.session_id) == approved["jwt"]


# ----------------------------------------------------------------------------- R04
async def test_subscriber_connections_killed_around_decisions_lose_nothing(fleet: Fleet) -> None:
    """R04: ``CLIENT KILL TYPE pubsub`` drops every instance's event connection just before
    (round 1) and while (round 2) decisions are published, and again and again for 0.6 s
    around them (round 3: decisions published while nobody is subscribed); each socket still
    gets its decision within 2 s of the approval, by resubscribing and re-reading state."""
    async with nodes(fleet) as (a, b, c):
        ring = [a, b, c]
        device = await enroll(fleet, a)
        token_id = token_of(device)
        log_sizes = [len(n.proc.logs()) for n in ring]

        for round_no in (1, 2, 3):
            sessions = [await ring[i % 3].rp.initiate(token_id) for i in range(6)]
            urls = [ring[(i + 1) % 3].socket_url(s) for i, s in enumerate(sessions)]
            async with recorders(urls) as socks:
                for rec, started in zip(socks, sessions, strict=True):
                    assert await rec.until("otp_ready", 5) == otp_ready(started)

                async def kill() -> int:
                    return int(
                        await asyncio.to_thread(fleet.redis.cli, "CLIENT", "KILL", "TYPE", "pubsub")
                    )

                async def decide(i: int, started: Initiation) -> float:
                    twin = ring[(i + 2) % 3].device(device)
                    resp = await twin.approve(started.session_id, started.auto_password, SCOPES)
                    assert resp.status_code == 200, resp.text
                    return time.monotonic()

                if round_no == 1:  # the connections are gone, then the decisions are taken
                    assert await kill() >= 3  # one event connection per instance
                    decided = await asyncio.gather(*(decide(i, s) for i, s in enumerate(sessions)))
                elif round_no == 2:  # decisions and the kill race each other
                    *decided, killed = await asyncio.gather(
                        *(decide(i, s) for i, s in enumerate(sessions)), kill()
                    )
                    assert killed >= 3
                else:  # a flapping subscriber: killed every ~20 ms, decisions in the middle

                    async def flap() -> int:
                        kills = 0
                        until = time.monotonic() + 0.6
                        while time.monotonic() < until:
                            kills += await kill()
                            await asyncio.sleep(0.02)
                        return kills

                    async def decide_later(i: int, started: Initiation) -> float:
                        await asyncio.sleep(0.2 + 0.03 * i)
                        return await decide(i, started)

                    *decided, killed = await asyncio.gather(
                        *(decide_later(i, s) for i, s in enumerate(sessions)), flap()
                    )
                    assert killed >= 6, killed
                latencies = []
                for rec, started, at in zip(socks, sessions, decided, strict=True):
                    approved = await rec.until("approved", 2.5)
                    latency = rec.arrived[rec.messages.index(approved)] - at
                    latencies.append(round(latency, 3))
                    assert latency < 2.0, (round_no, latency)
                    assert a.rp.hash_ok(started, approved)
                    assert await rec.finished() == 1000
                    assert len(rec.of("approved")) == 1
                print(f"R04 round {round_no}: decision-to-socket latencies {latencies} s")

        # Every instance noticed the drops (the kills did hit the event connections).
        for node, size in zip(ring, log_sizes, strict=True):
            assert "event subscription lost" in node.proc.logs()[size:]


# ----------------------------------------------------------------------------- R09
async def test_hundred_concurrent_verifies_across_instances_issue_one_jwt(fleet: Fleet) -> None:
    """R09: 100 correct approvals of one session at once, spread over A, B and C: exactly one
    200, 99 × 409, one `approved` on the socket, failure counter untouched."""
    async with nodes(fleet) as ring:
        a, b, _ = ring
        device = await enroll(fleet, a)
        token_id = token_of(device)
        started = await a.rp.initiate(token_id)
        twins = [n.device(device) for n in ring]
        async with recorders([b.socket_url(started)]) as (rec,):
            await rec.until("otp_ready", 5)
            bodies = [
                twins[i % 3].verify_body(started.session_id, started.auto_password, SCOPES)
                for i in range(100)
            ]
            responses = await asyncio.gather(
                *(
                    twins[i % 3].http.post("/auth/verify", json=body)
                    for i, body in enumerate(bodies)
                )
            )
            assert await rec.finished() == 1000
        outcomes = Counter(
            (r.status_code, r.json().get("error", r.json().get("status"))) for r in responses
        )
        assert outcomes == {(200, "approved"): 1, (409, "session_not_pending"): 99}, outcomes
        approved = rec.of("approved")
        assert len(approved) == 1, rec.messages
        assert [m["type"] for m in rec.messages] == ["otp_ready", "approved"]
        assert b.rp.hash_ok(started, approved[0])
        assert approved[0]["jwt"] == stored_jwt(fleet, token_id, started.session_id)
        assert fleet.session_field(token_id, started.session_id, "fails") == "0"
        await a.rp.verify_jwt(approved[0]["jwt"], session_id=started.session_id)


async def test_hundred_concurrent_right_and_wrong_codes_keep_exact_counters(fleet: Fleet) -> None:
    """R09 with wrong codes mixed in (typed mode, 3 attempts): whichever order the instances
    run them in, at most one success, failures counted exactly, one terminal message."""
    async with nodes(fleet) as ring:
        a, b, _ = ring
        device = await enroll(fleet, a)
        token_id = token_of(device)
        started = await a.typed_rp.initiate(token_id)
        wrong = f"{(int(started.auto_password) + 1) % 1_000_000:06d}"
        twins = [n.device(device) for n in ring]
        async with recorders([b.typed_rp.socket_url(started)]) as (rec,):
            await rec.until("otp_ready", 5)
            bodies = [
                twins[i % 3].verify_body(
                    started.session_id, started.auto_password if i % 10 == 0 else wrong, SCOPES
                )
                for i in range(100)
            ]
            responses = await asyncio.gather(
                *(
                    twins[i % 3].http.post("/auth/verify", json=body)
                    for i, body in enumerate(bodies)
                )
            )
            assert await rec.finished() == 1000
        outcomes = Counter((r.status_code, r.json().get("error", "approved")) for r in responses)
        state = fleet.session_field(token_id, started.session_id, "state")
        fails = int(fleet.session_field(token_id, started.session_id, "fails"))
        device_fails = fleet.redis.cli("HGET", f"idtoken:{{t:{token_id}}}:device", "fails")
        terminal = [m for m in rec.messages if m["type"] != "otp_ready"]
        assert len(terminal) == 1, rec.messages
        assert outcomes[(400, "invalid_otp")] == fails, (outcomes, fails)
        if state == "approved":
            assert fails <= 2
            assert outcomes[(200, "approved")] == 1
            assert set(outcomes) <= {
                (200, "approved"),
                (400, "invalid_otp"),
                (409, "session_not_pending"),
            }
            assert terminal[0]["type"] == "approved"
            assert terminal[0]["jwt"] == stored_jwt(fleet, token_id, started.session_id)
            assert device_fails == "0"  # a success clears the token's failure count
        else:
            assert state == "rejected"
            assert fails == 3
            assert set(outcomes) == {(400, "invalid_otp"), (429, "too_many_requests")}
            assert terminal[0] == {"type": "rejected", "reason": "Too many attempts"}
            assert device_fails == "3"


# ----------------------------------------------------------------------------- R01
async def test_redis_down_answers_503_and_open_sockets_recover(aof_fleet: Fleet) -> None:
    """R01: Redis stops in the middle of a burst of initiates, then initiate and verify answer
    503 with Retry-After on every instance; no half session is left; the socket that was open
    stays open and gets the decision once Redis is back and the phone has retried."""
    fleet = aof_fleet
    async with nodes(fleet) as ring:
        a, b, c = ring
        device, other = await asyncio.gather(enroll(fleet, a), enroll(fleet, c))
        token_id = token_of(device)
        started = await a.rp.initiate(token_id)
        tag, other_tag = f"idtoken:{{t:{token_id}}}", f"idtoken:{{t:{token_of(other)}}}"
        async with recorders([b.socket_url(started)]) as (rec,):
            assert await rec.until("otp_ready", 5) == otp_ready(started)

            async def initiate(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.005)
                body = {"tokenId": token_of(other), "serviceId": "shop", "scopes": SCOPES}
                return await ring[i % 3].http.post("/auth/initiate", json=body)

            async def stop() -> None:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(fleet.redis.stop)

            *burst, _ = await asyncio.gather(*(initiate(i) for i in range(40)), stop())
            statuses = Counter(r.status_code for r in burst)
            assert set(statuses) == {201, 503}, statuses
            for resp in burst:
                if resp.status_code == 503:
                    assert_503(resp)
            created = {r.json()["sessionId"] for r in burst if r.status_code == 201}

            for node in (a, c):
                body = {"tokenId": token_id, "serviceId": "shop", "scopes": SCOPES}
                assert_503(await node.http.post("/auth/initiate", json=body))
            # A created the session (its facts are cached there: the approve script fails);
            # C must read the session first (the read fails).
            for node in (a, c):
                twin = node.device(device)
                assert_503(await twin.approve(started.session_id, started.auto_password, SCOPES))
            # A socket opened now is closed 1011 (contract note 12); the open one stays open.
            async with websockets.connect(c.socket_url(started), compression=None) as late:
                assert await closed_code(late) == 1011
            await asyncio.sleep(1.0)
            assert rec.task is not None and not rec.task.done(), rec.sock.close_code
            assert rec.sock.close_code is None and len(rec.messages) == 1

            await asyncio.to_thread(fleet.redis.restart)
            # No half session: the refused initiates left nothing behind...
            assert fleet.redis.cli("KEYS", f"{tag}:sess:*") == f"{tag}:sess:{started.session_id}"
            assert fleet.redis.cli("ZRANGE", f"{tag}:pending", "0", "-1") == started.session_id
            assert fleet.session_field(token_id, started.session_id, "state") == "pending"
            assert fleet.session_field(token_id, started.session_id, "fails") == "0"
            # ... and of the burst, every acknowledged session survived (AOF), and every stored
            # session is whole: hash, pending entry and socket reference.
            keys = fleet.redis.cli("KEYS", f"{other_tag}:sess:*").split()
            stored = {k.rsplit(":", 1)[1] for k in keys}
            assert created <= stored, created - stored
            pending = set(fleet.redis.cli("ZRANGE", f"{other_tag}:pending", "0", "-1").split())
            assert pending == stored
            for sid in stored:
                assert fleet.redis.cli("GET", f"idtoken:sessref:{{{sid}}}") == token_of(other)
            print(
                f"R01: burst {dict(statuses)}; {len(stored - created)} session(s) stored"
                " although their initiate got 503"
            )

            # The phone retries; the socket that stayed open through the outage gets the result.
            outcomes = await approve_retrying(c.device(device), started)
            assert outcomes[-1] == (200, "approved"), outcomes
            decided = time.monotonic()
            approved = await rec.until("approved", 5)
            print(f"R01: decision reached the socket {rec.arrived[-1] - decided:.3f} s after 200")
            assert b.rp.hash_ok(started, approved)
            assert await rec.finished() == 1000
        await c.rp.verify_jwt(approved["jwt"], session_id=started.session_id)


# ----------------------------------------------------------------------------- R05
async def test_redis_restart_with_200_flows_in_flight(aof_fleet: Fleet) -> None:
    """R05: Redis (AOF, appendfsync always) stops for 0.6 s and restarts while 200 logins are
    being approved; 40 browsers connect during the outage. The phones retry after 503 as
    documented, the browsers reconnect on 1011/1012. Every flow ends approved, none hangs,
    and each session has exactly one JWT, the stored one."""
    fleet = aof_fleet
    flows = 200
    async with nodes(fleet) as ring:
        devices = await asyncio.gather(*(enroll(fleet, ring[i % 3]) for i in range(10)))
        owners = [devices[i % 10] for i in range(flows)]
        sessions = await asyncio.gather(
            *(ring[i % 3].rp.initiate(token_of(owners[i])) for i in range(flows))
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # sessions live 60 s: a flow still open at 30 s hung
        browsers = [
            Browser(s, [ring[(i + j) % 3].socket_url(s) for j in (1, 2, 0)])
            for i, s in enumerate(sessions)
        ]
        early, late = browsers[:160], browsers[160:]  # late ones connect during the restart
        watching = [asyncio.create_task(br.run(deadline)) for br in early]
        try:
            async with asyncio.timeout(15):
                while not all(br.ready for br in early):
                    assert not any(t.done() for t in watching), [b.gave_up for b in browsers]
                    await asyncio.sleep(0.05)

            async def phone(i: int) -> list[Any]:
                await asyncio.sleep(i * 0.0075)  # approvals spread over 1.5 s
                return await approve_retrying(ring[(i + 2) % 3].device(owners[i]), sessions[i])

            async def restart() -> float:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(fleet.redis.stop)
                await asyncio.sleep(0.6)
                await asyncio.to_thread(fleet.redis.restart)
                return time.monotonic()

            async def browse_late(i: int, browser: Browser) -> None:
                await asyncio.sleep(i * 0.04)  # spread over 1.6 s
                await browser.run(deadline)

            watching += [asyncio.create_task(browse_late(i, br)) for i, br in enumerate(late)]
            t0 = time.monotonic()
            *phones, restarted = await asyncio.gather(*(phone(i) for i in range(flows)), restart())
            await asyncio.wait(watching, timeout=max(0.0, deadline - loop.time()))
        finally:
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)

    hit = sum(1 for p in phones if len(p) > 1)
    ends = [br.finished_at for br in browsers if br.finished_at is not None]
    print(
        f"R05: {hit} phones retried; last flow ended {max(ends) - t0:.2f} s after the first"
        f" approval, {max(ends) - restarted:.2f} s after Redis was back; close codes seen"
        f" {Counter(c for br in browsers for c in br.closes)}; phones ended with"
        f" {Counter(str(p[-1]) for p in phones)}; dropped connections"
        f" {[f for br in browsers for f in br.failures]}"
    )
    assert hit > 0, "no approval met the outage: the test did not exercise it"
    # Sockets end normally after their terminal message, or with a code a client acts on.
    assert {c for br in browsers for c in br.closes} <= {1000, 1011, 1012}
    hung = {br.started.session_id: (br.gave_up, br.closes) for br in browsers if not br.finals}
    assert not hung, hung
    jtis: set[str] = set()
    for br, outcome, owner in zip(browsers, phones, owners, strict=True):
        started = br.started
        # One terminal message per flow, and it is the approval (the phone always approves).
        assert len(br.finals) == 1, br.finals
        final = br.finals[0]
        assert final["type"] == "approved", (final, outcome, br.closes)
        assert RelyingParty.hash_ok(started, final)
        # The phone ends with 200, or with 409 when an earlier attempt of its own got through.
        assert outcome[-1] in ((200, "approved"), (409, "session_not_pending")), outcome
        assert outcome.count((200, "approved")) <= 1, outcome
        if outcome[-1][0] == 409:
            assert len(outcome) > 1, outcome
        token_id = token_of(owner)
        assert stored_jwt(fleet, token_id, started.session_id) == final["jwt"]
        claims = jwt_claims(final["jwt"])
        assert claims["sid"] == started.session_id and claims["sub"] == token_id
        jtis.add(claims["jti"])
    assert len(jtis) == flows  # no JWT issued twice, none shared between sessions


# ----------------------------------------------------------------------------- F01
async def test_sigterm_closes_sockets_1012_finishes_inflight_verify_and_hands_over(
    fleet: Fleet,
) -> None:
    """F01: SIGTERM to C with two live sockets and a verify in flight: the sockets close 1012
    at once (well within --drain-timeout), the verify completes with 200, C exits cleanly, and
    reconnecting browsers on A and B get the decision (taken before, and taken after)."""
    async with nodes(fleet) as (a, b, c):
        victim = c.proc
        device = await enroll(fleet, a)
        token_id = token_of(device)
        first = await a.rp.initiate(token_id)  # decided by a verify in flight at SIGTERM
        second = await b.rp.initiate(token_id)  # decided after the victim is gone
        async with recorders([c.socket_url(first), c.socket_url(second)]) as socks:
            for rec, started in zip(socks, (first, second), strict=True):
                assert await rec.until("otp_ready", 5) == otp_ready(started)

            # A verify whose headers and half its body have reached the victim when SIGTERM
            # arrives; the rest of the body arrives during the shutdown.
            body = json.dumps(
                c.device(device).verify_body(first.session_id, first.auto_password, SCOPES)
            ).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", victim.port)
            try:
                writer.write(
                    (
                        f"POST /auth/verify HTTP/1.1\r\nHost: 127.0.0.1:{victim.port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body[: len(body) // 2]
                )
                await writer.drain()
                await asyncio.sleep(0.3)
                signalled = time.monotonic()
                victim.signal(signal.SIGTERM)

                codes = [await rec.finished(timeout=DRAIN + 2) for rec in socks]
                closed_after = time.monotonic() - signalled
                print(f"F01: sockets closed {codes} {closed_after:.3f} s after SIGTERM")
                assert codes == [1012, 1012]
                assert closed_after < DRAIN
                assert all(len(rec.messages) == 1 for rec in socks)  # nothing but otp_ready
                with pytest.raises(httpx.ConnectError):  # the victim accepts nothing new
                    await c.http.get("/.well-known/jwks.json")

                writer.write(body[len(body) // 2 :])
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DRAIN)
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (h.partition(":") for h in header_lines if h)
                }
                payload = await asyncio.wait_for(
                    reader.readexactly(int(headers["content-length"])), DRAIN
                )
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            assert status_line.split(" ", 2)[1] == "200", (status_line, payload)
            assert json.loads(payload) == {"status": "approved"}

        assert victim.process is not None
        exit_code = await asyncio.to_thread(victim.process.wait, DRAIN + 5)
        exited_after = time.monotonic() - signalled
        assert exit_code in (0, -signal.SIGTERM), victim.logs()[-3000:]
        assert exited_after < DRAIN + 2, exited_after
        assert "timeout graceful shutdown exceeded" not in victim.logs()

        # The browsers reconnect through the load balancer to the other instances.
        async with websockets.connect(b.socket_url(first), compression=None) as sock:
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert b.rp.hash_ok(first, approved)
            assert await closed_code(sock) == 1000
        assert approved["jwt"] == stored_jwt(fleet, token_id, first.session_id)
        async with websockets.connect(a.socket_url(second), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(second)
            resp = await b.device(device).approve(second.session_id, second.auto_password, SCOPES)
            assert resp.status_code == 200, resp.text
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert a.rp.hash_ok(second, approved)
            assert await closed_code(sock) == 1000


# ----------------------------------------------------------------------------- F02
async def test_sigkill_with_verifies_in_flight_never_delivers_an_unstored_jwt(
    fleet: Fleet,
) -> None:
    """F02: SIGKILL to B while approvals for 60 sessions are in flight. Each session is then
    either approved with its result stored (and that very JWT delivered, on A's socket and on
    a reconnect to C) or still pending with no JWT anywhere; a retried approval then works."""
    async with nodes(fleet) as (a, b, c):
        victim = b.proc
        devices = await asyncio.gather(*(enroll(fleet, a) for _ in range(5)))
        owners = [devices[i % 5] for i in range(60)]
        sessions = await asyncio.gather(*(a.rp.initiate(token_of(d)) for d in owners))
        async with recorders([a.socket_url(s) for s in sessions]) as watchers:
            for rec in watchers:
                await rec.until("otp_ready", 5)

            # Approvals sent to the victim every 3 ms; SIGKILL once a few have been answered.
            # The others are then at every stage: not sent yet, unread, signed but not stored,
            # stored but not answered.
            answered: list[int] = []
            some_answered = asyncio.Event()

            async def verify(i: int) -> Any:
                await asyncio.sleep(i * 0.003)
                try:
                    resp = await b.device(owners[i]).approve(
                        sessions[i].session_id, sessions[i].auto_password, SCOPES
                    )
                except httpx.ConnectError:
                    return "refused"  # sent after the kill: never reached the victim
                except httpx.TransportError:
                    return "cut"  # in flight when the victim died
                answered.append(resp.status_code)
                if len(answered) >= 5:
                    some_answered.set()
                return resp.status_code

            inflight = [asyncio.create_task(verify(i)) for i in range(60)]
            await asyncio.wait_for(some_answered.wait(), 10)
            victim.kill()  # SIGKILL, then reaped
            results = await asyncio.gather(*inflight)
            await asyncio.sleep(0.5)  # whatever reached Redis before the kill has run by now

            states = [
                fleet.session_field(token_of(d), s.session_id, "state")
                for d, s in zip(owners, sessions, strict=True)
            ]
            unanswered = sum(
                1 for r, st in zip(results, states, strict=True) if r != 200 and st == "approved"
            )
            print(
                f"F02: verify results {Counter(results)}, states {Counter(states)},"
                f" {unanswered} stored but never answered"
            )
            assert set(results) <= {200, "cut", "refused"}, results
            assert 200 in results and any(r != 200 for r in results), results
            for i, (rec, state) in enumerate(zip(watchers, states, strict=True)):
                assert state in ("approved", "pending"), (i, state)
                if results[i] == 200:
                    assert state == "approved", i
                if state == "approved":  # delivered on the survivor's socket, as stored
                    approved = await rec.until("approved", 2)
                    assert approved["jwt"] == stored_jwt(
                        fleet,
                        token_of(owners[i]),
                        sessions[i].session_id,
                    )
                    assert a.rp.hash_ok(sessions[i], approved)
            await asyncio.sleep(0.3)
            for i, (rec, state) in enumerate(zip(watchers, states, strict=True)):
                if state == "pending":  # never a JWT while the state says pending
                    assert [m["type"] for m in rec.messages] == ["otp_ready"], (i, rec.messages)
                    assert rec.sock.close_code is None

        # A browser reconnecting on the third instance: the stored result, or the code again.
        # The phone then retries its approval there (409 if its first one got through).
        async def reconnect(i: int, started: Initiation, state: str) -> None:
            token_id = token_of(owners[i])
            assert fleet.session_field(token_id, started.session_id, "state") == state
            async with websockets.connect(c.socket_url(started), compression=None) as sock:
                message = await recv_json(sock)
                if state == "approved":
                    assert message["type"] == "approved"
                    assert message["jwt"] == stored_jwt(fleet, token_id, started.session_id)
                    assert c.rp.hash_ok(started, message)
                else:
                    assert message == otp_ready(started)
                if results[i] != 200:
                    resp = await c.device(owners[i]).approve(
                        started.session_id, started.auto_password, SCOPES
                    )
                    expected = 200 if state == "pending" else 409
                    assert resp.status_code == expected, (i, state, resp.text)
                    if state == "pending":
                        message = await recv_json(sock)
                        assert message["type"] == "approved"
                        assert message["jwt"] == stored_jwt(fleet, token_id, started.session_id)
                assert await closed_code(sock) == 1000

        await asyncio.gather(
            *(reconnect(i, s, st) for i, (s, st) in enumerate(zip(sessions, states, strict=True)))
        )
