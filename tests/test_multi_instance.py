"""Several operator processes sharing one Redis, as in a load-balanced deployment.

Each instance is a real ``python -m idtoken serve`` child process on the same configuration file
(same ``keys_dir``, same Redis). A login may touch a different instance at every step: the
contract says every instance can serve every socket and the decision may be taken on another
one. Catalogue rows: Y01 (JWKS identical everywhere), Y05 (keys shared, survive restarts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from joserfc import jwt
from joserfc.jwk import KeySet

from idtoken.client import Device, Initiation, RelyingParty
from support import (
    Node,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    closed_code,
    otp_ready,
    recv_json,
    redis_server,
)

AUDIENCE = "shop-audience"


# ----------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    redis: RedisServer
    config: OperatorConfig
    config_file: Path
    procs: list[OperatorProcess]

    def replace(self, index: int) -> OperatorProcess:
        """Stop instance ``index`` (if still running) and start a fresh process in its place."""
        self.procs[index].stop()
        self.procs[index] = OperatorProcess(self.config_file).start()
        return self.procs[index]

    def healthy(self) -> None:
        """Restart any instance a previous test left stopped."""
        for i, proc in enumerate(self.procs):
            if proc.process is None or proc.process.poll() is not None:
                self.replace(i)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with redis_server() as redis:
        config = OperatorConfig(
            tmp_path_factory.mktemp("cluster"),
            redis_url=redis.url,
            # Every enrollment in this module comes from 127.0.0.1.
            limits={"enroll_per_ip_per_hour": 10_000},
        )
        path = config.write()
        procs: list[OperatorProcess] = []
        try:
            for _ in range(3):
                procs.append(OperatorProcess(path).start())
            yield Cluster(redis, config, path, procs)
        finally:
            for proc in procs:
                proc.stop()


@contextlib.asynccontextmanager
async def nodes(cluster: Cluster) -> AsyncIterator[list[Node]]:
    cluster.healthy()
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for proc in cluster.procs:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=proc.url, timeout=10))
            rp = RelyingParty(
                http, service_id="shop", issuer=cluster.config.issuer_url, audience=AUDIENCE
            )
            out.append(Node(proc, http, rp))
        yield out


def new_token_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def enroll(cluster: Cluster, node: Node, token_id: str) -> Device:
    device = Device(node.http, device_id=f"dev-{token_id}")
    await device.enroll(cluster.config.issuers[0].mint(token_id, given_name="Ada"))
    return device


async def approve(device: Device, started: Initiation) -> None:
    resp = await device.approve(started.session_id, started.auto_password, ["identity:name"])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "approved"}


def verify_with_jwks(token: str, jwks: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    """Independent check with joserfc and a JWKS document fetched from one instance."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": cluster.config.issuer_url},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    ).validate(decoded.claims)
    return dict(decoded.claims)


async def jwks_responses(instances: list[Node]) -> list[httpx.Response]:
    return list(await asyncio.gather(*(n.http.get("/.well-known/jwks.json") for n in instances)))


# ----------------------------------------------------------------------------- tests
async def test_decision_on_another_instance_reaches_the_socket_and_jwks_agree(
    cluster: Cluster,
) -> None:
    async with nodes(cluster) as (a, b, c):
        token_id = new_token_id()
        device = await enroll(cluster, a, token_id)
        started = await a.rp.initiate(token_id, ["identity:name"], nonce="n-multi")
        async with websockets.connect(a.rp.socket_url(started), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(started)
            await approve(b.device(device), started)
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert a.rp.hash_ok(started, approved)
            assert await closed_code(sock) == 1000

        # Y01: byte-identical JWKS on every instance, only public members, cacheable.
        responses = await jwks_responses([a, b, c])
        for resp in responses:
            assert resp.status_code == 200
            assert resp.headers["cache-control"] == "public, max-age=3600"
            assert resp.headers["content-type"].startswith("application/json")
            for key in resp.json()["keys"]:
                assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
                assert (key["kty"], key["crv"], key["use"], key["alg"]) == (
                    "EC",
                    "P-256",
                    "sig",
                    "ES256",
                )
        assert len({r.content for r in responses}) == 1
        assert len({r.headers["etag"] for r in responses}) == 1  # caches agree too

        # Y05: the JWT issued by B verifies with B's JWKS, with A's, and through each RP.
        jwks = responses[0].json()
        for resp in responses:
            claims = verify_with_jwks(approved["jwt"], resp.json(), cluster)
            assert claims["sub"] == token_id and claims["sid"] == started.session_id
        for node in (a, b, c):
            claims = await node.rp.verify_jwt(
                approved["jwt"], session_id=started.session_id, nonce="n-multi"
            )
            assert claims["idtoken"] == {"tokenId": token_id, "givenName": "Ada"}
        header = jwt.decode(approved["jwt"], KeySet.import_key_set(jwks)).header
        assert header["kid"] in {k["kid"] for k in jwks["keys"]}


async def test_initiate_on_a_socket_on_b_verify_on_c(cluster: Cluster) -> None:
    async with nodes(cluster) as (a, b, c):
        token_id = new_token_id()
        device = await enroll(cluster, c, token_id)
        started = await a.rp.initiate(token_id)
        async with websockets.connect(b.rp.socket_url(started), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(started)
            await approve(c.device(device), started)
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert b.rp.hash_ok(started, approved)
            assert await closed_code(sock) == 1000
        claims = await a.rp.verify_jwt(approved["jwt"], session_id=started.session_id)
        assert claims["sub"] == token_id
        # The JWT is issued once: a second approval anywhere is refused.
        for node in (a, b, c):
            resp = await node.device(device).approve(
                started.session_id, started.auto_password, ["identity:name"]
            )
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"] == "session_not_pending"


async def test_newer_socket_on_another_instance_replaces_the_first_with_4009(
    cluster: Cluster,
) -> None:
    async with nodes(cluster) as (a, b, c):
        token_id = new_token_id()
        device = await enroll(cluster, a, token_id)
        started = await a.rp.initiate(token_id)
        first = await websockets.connect(a.rp.socket_url(started), compression=None)
        try:
            assert await recv_json(first) == otp_ready(started)
            async with websockets.connect(b.rp.socket_url(started), compression=None) as second:
                assert await recv_json(second) == otp_ready(started)
                assert await closed_code(first) == 4009
                # The newer socket is the live one: it gets the decision taken on C.
                await approve(c.device(device), started)
                approved = await recv_json(second)
                assert approved["type"] == "approved"
                assert b.rp.hash_ok(started, approved)
                assert await closed_code(second) == 1000
        finally:
            await first.close()


async def test_late_socket_on_another_instance_gets_the_decision_at_once(
    cluster: Cluster,
) -> None:
    async with nodes(cluster) as (a, b, c):
        token_id = new_token_id()
        device = await enroll(cluster, a, token_id)

        started = await a.rp.initiate(token_id)
        await approve(device, started)
        async with websockets.connect(b.rp.socket_url(started), compression=None) as sock:
            approved = await recv_json(sock, timeout=5)
            assert approved["type"] == "approved"
            assert b.rp.hash_ok(started, approved)
            assert await closed_code(sock) == 1000
        await c.rp.verify_jwt(approved["jwt"], session_id=started.session_id)

        # Same for a rejection taken on C, read on A.
        started = await b.rp.initiate(token_id)
        resp = await c.device(device).reject(started.session_id)
        assert resp.status_code == 200, resp.text
        async with websockets.connect(a.rp.socket_url(started), compression=None) as sock:
            assert await recv_json(sock, timeout=5) == {
                "type": "rejected",
                "reason": "User rejected",
            }
            assert await closed_code(sock) == 1000


async def test_restarted_instance_keeps_the_keys_and_verifies_old_jwts(cluster: Cluster) -> None:
    """Y05: keys are shared on disk and never regenerated per instance or per start."""
    async with nodes(cluster) as (a, b, _):
        token_id = new_token_id()
        device = await enroll(cluster, a, token_id)
        started = await b.rp.initiate(token_id)
        await approve(device, started)
        message = await a.rp.wait_result(started, timeout=5)
        before = (await jwks_responses([a]))[0]
        pending = await b.rp.initiate(token_id)  # a session that lives across the restart

    old_url = cluster.procs[0].url
    restarted = cluster.replace(0)
    assert restarted.url != old_url

    async with nodes(cluster) as (a, b, c):
        after = await jwks_responses([a, b, c])
        assert {r.content for r in after} == {before.content}
        assert after[0].headers["etag"] == before.headers["etag"]
        verify_with_jwks(message["jwt"], after[0].json(), cluster)
        fresh_rp = RelyingParty(  # a new RP with an empty key cache, fetching from the new one
            a.http, service_id="shop", issuer=cluster.config.issuer_url, audience=AUDIENCE
        )
        await fresh_rp.verify_jwt(message["jwt"], session_id=started.session_id)

        # The restarted instance serves sessions created before the restart, and signs with
        # the same key.
        async with websockets.connect(a.rp.socket_url(pending), compression=None) as sock:
            assert await recv_json(sock) == otp_ready(pending)
            await approve(a.device(device), pending)
            approved = await recv_json(sock)
            assert approved["type"] == "approved"
            assert await closed_code(sock) == 1000
        await b.rp.verify_jwt(approved["jwt"], session_id=pending.session_id)
        kid = jwt.decode(approved["jwt"], KeySet.import_key_set(after[0].json())).header["kid"]
        old_kid = jwt.decode(message["jwt"], KeySet.import_key_set(before.json())).header["kid"]
        assert kid == old_kid


async def test_sigterm_closes_live_sockets_and_a_reconnect_elsewhere_gets_the_decision(
    cluster: Cluster, record_property: Any
) -> None:
    async with nodes(cluster) as (a, b, c):
        token_id = new_token_id()
        device = await enroll(cluster, a, token_id)
        started = await a.rp.initiate(token_id)
        victim = c.proc
        assert victim.process is not None
        sock = await websockets.connect(c.rp.socket_url(started), compression=None)
        try:
            assert await recv_json(sock) == otp_ready(started)
            victim.signal(signal.SIGTERM)
            code = await closed_code(sock, timeout=15)
        finally:
            await sock.close()
        record_property("sigterm_close_code", code)
        print(f"SIGTERM close code observed: {code}")
        assert code in (1001, 1012), code
        exit_code = await asyncio.to_thread(victim.process.wait, 15)
        record_property("sigterm_exit_code", exit_code)
        # uvicorn shuts down gracefully, then re-raises the captured signal: 0 or -SIGTERM.
        assert exit_code in (0, -signal.SIGTERM), victim.logs()[-3000:]
        assert "Application shutdown complete" in victim.logs()

        # The browser reconnects through the load balancer and lands on another instance.
        async with websockets.connect(b.rp.socket_url(started), compression=None) as again:
            assert await recv_json(again) == otp_ready(started)
            await approve(a.device(device), started)
            approved = await recv_json(again)
            assert approved["type"] == "approved"
            assert b.rp.hash_ok(started, approved)
            assert await closed_code(again) == 1000
        await a.rp.verify_jwt(approved["jwt"], session_id=started.session_id)
    cluster.healthy()  # leave three instances for whoever runs next


def test_instances_started_together_on_a_fresh_keys_dir_share_one_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Y05 at first start: three replicas coming up at once must not each create a key."""
    config = OperatorConfig(tmp_path / "fresh", redis_url=cluster.redis.url)
    path = config.write()
    procs = [OperatorProcess(path) for _ in range(3)]
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda p: p.start(), procs))
        bodies = {httpx.get(p.url + "/.well-known/jwks.json", timeout=5).content for p in procs}
        assert len(bodies) == 1
        (body,) = bodies
        assert len(json.loads(body)["keys"]) == 1
        assert len(list((tmp_path / "fresh" / "keys").glob("*.pem"))) == 1
    finally:
        for proc in procs:
            proc.stop()
