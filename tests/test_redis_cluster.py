"""The operator on a real Redis Cluster: three masters on loopback ports.

The cluster is built once for the module with ``redis-server --cluster-enabled yes`` and
``redis-cli --cluster create``; the operator connects as the restricted ACL user documented in
docs/scaling.md. On it run: the whole Store contract (the same tests as
``test_store_contract.py``, with a cluster-backed store), cluster-specific checks (slots, the
socket reference, sharded pub/sub subscriptions per node, recovery after the shard
connections are killed), and the full login flow across two operator processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import websockets
from redis.crc import key_slot

import test_store_contract as contract
from idtoken.client import Device, RelyingParty
from idtoken.clock import ManualClock
from idtoken.store.base import CreateStatus, Outcome, Store, StoreUnavailable
from idtoken.store.layout import shard_channel
from idtoken.store.redis import RedisStore
from support import (
    Node,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    free_port,
    recv_json,
    redis_server,
)
from test_redis_tls import OPERATOR_ACL, PASSWORD
from test_store_contract import (  # fixtures and helpers shared with the contract suite
    LIMITS,
    T0,
    TOKEN,
    Inbox,
    approve,
    clock,
    create,
    enroll,
    session_record,
)

__all__ = ["clock"]  # a fixture, used by the imported contract tests

AUDIENCE = "shop-audience"


# ----------------------------------------------------------------------------- the cluster
def redis_cli_binary() -> str:
    path = shutil.which("redis-cli")
    if path is None:  # a failure, never a skip
        raise RuntimeError("redis-cli is not installed: ./scripts/test installs it (redis-tools)")
    return path


@dataclass
class Cluster:
    nodes: list[RedisServer]
    _slots: list[tuple[int, int, int]] | None = None

    @property
    def url(self) -> str:
        """The operator's URL: every seed node, and the restricted ACL user."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://idtoken:{quote(PASSWORD, safe='')}@{hosts}"

    def node_cli(self, port: int, *args: str) -> str:
        out = subprocess.run(
            [redis_cli_binary(), "-c", "-p", str(port), *args],
            capture_output=True,
            check=True,
            timeout=10,
        )
        return out.stdout.decode().strip()

    def flush(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def cli(self, *args: str) -> str:
        """A cluster-wide ``redis-cli``, close enough to :meth:`RedisServer.cli` for the
        contract suite: ``--scan``, ``FLUSHALL`` and ``CLIENT KILL`` run on every node (the
        outputs joined, kill counts summed); key commands go to the key's master."""
        if args[:1] == ("FLUSHALL",):
            self.flush()
            return "OK"
        if args[:1] in (("--scan",), ("CLIENT",)):
            outputs = [self.node_cli(n.port, *args) for n in self.nodes]
            if args[0] == "CLIENT":
                return str(sum(int(o or "0") for o in outputs))
            return "\n".join(o for o in outputs if o)
        port = self.slot_owner(args[1]) if len(args) > 1 else self.nodes[0].port
        return self.node_cli(port, *args)

    def slot_owner(self, key: str) -> int:
        """The port of the master that serves ``key``."""
        if self._slots is None:
            with redis.Redis(port=self.nodes[0].port) as client:
                self._slots = [
                    (int(e[0]), int(e[1]), int(e[2][1]))
                    for e in client.execute_command("CLUSTER", "SLOTS")
                ]
        slot = key_slot(key.encode())
        for first, last, port in self._slots:
            if first <= slot <= last:
                return port
        raise AssertionError(f"slot {slot} not served")


def _build_cluster(stack: contextlib.ExitStack) -> Cluster:
    nodes = [
        stack.enter_context(
            redis_server(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                # An explicit bus port: the default (port + 10000) may be taken or > 65535.
                "--cluster-port",
                str(free_port()),
                "--appendonly",
                "no",
                # The operator connects as this user (the harness as `default`).
                "--user",
                "idtoken",
                "on",
                f">{PASSWORD}",
                *OPERATOR_ACL.split(),
            )
        )
        for _ in range(3)
    ]
    subprocess.run(
        [
            redis_cli_binary(),
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    cluster = Cluster(nodes)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [n.cli("CLUSTER", "INFO") for n in nodes]
        if all("cluster_state:ok" in s and "cluster_known_nodes:3" in s for s in states):
            return cluster
        time.sleep(0.05)
    raise RuntimeError("the cluster did not become ready")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        yield _build_cluster(stack)


# ----------------------------------------------------------------------------- the contract
# Every Store contract test, run against a store on the cluster. The fixtures below replace the
# contract module's: `store` is cluster-backed (not parametrized), `redis_srv` is the cluster's
# command line. The tests that kill the standalone `idtoken:events` subscriber or open a store
# on an unreachable standalone URL have cluster counterparts below.
_NOT_ON_CLUSTER = {
    "test_redis_listeners_resync_after_the_pubsub_connection_is_killed",
    "test_redis_events_arrive_after_the_pubsub_connection_is_killed",
    # These build their own store on a standalone URL: nothing cluster-specific to rerun.
    "test_redis_start_succeeds_while_redis_is_unreachable",
    "test_redis_calls_raise_store_unavailable_when_unreachable",
}
for _name in dir(contract):
    if _name.startswith("test_") and _name not in _NOT_ON_CLUSTER:
        globals()[f"{_name}"] = getattr(contract, _name)


@pytest.fixture
def redis_srv(cluster: Cluster) -> Cluster:
    return cluster


@pytest.fixture
async def store(cluster: Cluster, clock: ManualClock) -> AsyncIterator[Store]:
    cluster.flush()
    impl = RedisStore(cluster.url, clock)
    await impl.start()
    try:
        yield impl
    finally:
        await impl.aclose()


@pytest.fixture
async def redis_store(store: Store) -> Store:
    return store


# ----------------------------------------------------------------------------- cluster specifics
def tokens_on_every_node(cluster: Cluster, count: int = 3) -> list[str]:
    """Token ids whose hash tags land on ``count`` different masters."""
    found: dict[int, str] = {}
    for i in range(200):
        token = f"tok-{i}"
        found.setdefault(cluster.slot_owner(shard_channel(token)), token)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("could not spread tokens over the masters")


async def listening_sessions(store: RedisStore, tokens: list[str]) -> dict[str, Inbox]:
    """For each token: an enrolled device, a session ``s-<token>`` and a listener on it."""
    inboxes = {}
    for token in tokens:
        await enroll(store, contract.device_record(token), replay_id=f"jti-{token}")
        await create(store, f"s-{token}", token_id=token)
        inboxes[token] = Inbox()
        store.listen(token, f"s-{token}", inboxes[token])
    return inboxes


def shard_subscribers(cluster: Cluster, channel: str) -> int:
    port = cluster.slot_owner(channel)
    out = cluster.node_cli(port, "PUBSUB", "SHARDNUMSUB", channel).splitlines()
    return int(out[-1])


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)  # bounded polling of an external observer, not a sync point
    raise AssertionError("condition not reached")


async def test_cluster_session_keys_share_the_token_slot_and_the_reference_is_written(
    store: RedisStore, cluster: Cluster
) -> None:
    await enroll(store)
    await create(store, "sess_a")

    tag_port = cluster.slot_owner(f"idtoken:{{t:{TOKEN}}}:device")
    for key in (f"idtoken:{{t:{TOKEN}}}:sess:sess_a", f"idtoken:{{t:{TOKEN}}}:pending"):
        assert cluster.slot_owner(key) == tag_port
    assert cluster.cli("GET", "idtoken:sessref:{sess_a}") == TOKEN
    ttl = int(cluster.cli("PTTL", "idtoken:sessref:{sess_a}"))
    assert ttl > 300_000
    found = await store.find_session("sess_a")
    assert found is not None and found.token_id == TOKEN


async def test_cluster_refused_create_leaves_no_reference(
    store: RedisStore, cluster: Cluster
) -> None:
    await enroll(store)
    for sid in ("sess_a", "sess_b", "sess_c"):
        await create(store, sid)

    result = await store.create_session(session_record("sess_d"), limits=LIMITS, now=T0)

    assert result.status is CreateStatus.TOO_MANY_PENDING
    assert cluster.cli("EXISTS", "idtoken:sessref:{sess_d}") == "0"
    assert await store.find_session("sess_d") is None


async def test_cluster_events_reach_listeners_of_tokens_on_every_master(
    store: RedisStore, cluster: Cluster
) -> None:
    tokens = tokens_on_every_node(cluster)
    inboxes = await listening_sessions(store, tokens)

    for token in tokens:
        assert (await approve(store, f"s-{token}", token_id=token)).outcome is Outcome.APPROVED

    for token in tokens:
        event = await inboxes[token].next_event()
        assert event.session_id == f"s-{token}" and event.final is not None
        assert shard_subscribers(cluster, shard_channel(token)) == 1


async def test_cluster_subscription_follows_the_listeners_of_a_token(
    store: RedisStore, cluster: Cluster
) -> None:
    await enroll(store)
    await create(store, "sess_a")
    await create(store, "sess_b")
    channel = shard_channel(TOKEN)

    stop_a = store.listen(TOKEN, "sess_a", Inbox())
    stop_b = store.listen(TOKEN, "sess_b", Inbox())
    await store.claim_socket(TOKEN, "sess_a")  # waits until the subscription is live
    assert shard_subscribers(cluster, channel) == 1  # one per process, not one per socket

    stop_a()
    stop_a()  # idempotent
    assert shard_subscribers(cluster, channel) == 1
    stop_b()
    await wait_for(lambda: shard_subscribers(cluster, channel) == 0)


async def test_cluster_another_store_hears_a_decision_and_a_claim(
    store: RedisStore, cluster: Cluster, clock: ManualClock
) -> None:
    """Two stores (two operator processes): the decision and the claim are published by one
    and delivered to the other's listener."""
    await enroll(store)
    await create(store, "sess_a")
    other = RedisStore(cluster.url, clock)
    await other.start()
    try:
        inbox = Inbox()
        other.listen(TOKEN, "sess_a", inbox)
        await other.claim_socket(TOKEN, "sess_a")
        assert (await inbox.next_event()).claim == 1

        await store.claim_socket(TOKEN, "sess_a")
        assert (await inbox.next_event()).claim == 2
        await approve(store, "sess_a")
        assert (await inbox.next_event()).final == contract.approved_message("sess_a")
    finally:
        await other.aclose()


async def test_cluster_events_arrive_after_the_shard_connections_are_killed(
    store: RedisStore, cluster: Cluster
) -> None:
    tokens = tokens_on_every_node(cluster)
    inboxes = await listening_sessions(store, tokens)
    for token in tokens:
        await store.claim_socket(token, f"s-{token}")
        assert (await inboxes[token].next_event()).claim == 1

    assert int(cluster.cli("CLIENT", "KILL", "TYPE", "pubsub")) == 3

    # Each listener is told to re-read (the messages in between are unknown)...
    for token in tokens:
        assert await inboxes[token].next(timeout=5.0) == (f"s-{token}", None)
    # ...and hears what is published once its shard channel is back.
    for token in tokens:
        await wait_for(lambda t=token: shard_subscribers(cluster, shard_channel(t)) == 1)
        await approve(store, f"s-{token}", token_id=token)
        assert (await inboxes[token].next_event()).final == contract.approved_message(f"s-{token}")


async def test_cluster_calls_raise_store_unavailable_when_unreachable(
    clock: ManualClock,
) -> None:
    impl = RedisStore(f"redis+cluster://127.0.0.1:{free_port()}", clock)
    try:
        with pytest.raises(StoreUnavailable):
            await impl.ping()
        with pytest.raises(StoreUnavailable):
            await impl.find_session("sess_a")
        with pytest.raises(StoreUnavailable):
            await impl.create_session(session_record("sess_a"), limits=LIMITS, now=T0)
    finally:
        await impl.aclose()


# ----------------------------------------------------------------------------- the full flow


async def close_code(sock: websockets.ClientConnection) -> int | None:
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(sock.recv(), 10)
    return sock.close_code


@pytest.fixture
def operators(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[OperatorConfig, list[Any]]]:
    cluster.flush()
    config = OperatorConfig(tmp_path / "cluster-ops", redis_url=cluster.url)
    path = config.write()
    procs = [OperatorProcess(path), OperatorProcess(path)]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: p.start(), procs))
        yield config, procs
    finally:
        for proc in procs:
            proc.stop()


async def test_full_flow_across_two_operator_processes_on_the_cluster(
    operators: tuple[OperatorConfig, list[OperatorProcess]], cluster: Cluster
) -> None:
    config, procs = operators
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for proc in procs:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=proc.url, timeout=10))
            rp = RelyingParty(http, service_id="shop", issuer=config.issuer_url, audience=AUDIENCE)
            nodes.append(Node(proc, http, rp))
        a, b = nodes

        # Several tokens, so that sessions and channels live on every master.
        for token_id in tokens_on_every_node(cluster):
            token_id = f"{token_id}-{uuid.uuid4().hex[:6]}"
            device = Device(a.http, device_id=f"dev-{token_id}")
            await device.enroll(config.issuers[0].mint(token_id, given_name="Ada"))

            # Initiate on A, socket on B, approve on A: the decision crosses instances.
            started = await a.rp.initiate(token_id, ["identity:name"], nonce="n-cluster")
            async with websockets.connect(b.rp.socket_url(started), compression=None) as sock:
                assert (await recv_json(sock))["type"] == "otp_ready"
                resp = await device.approve(
                    started.session_id, started.auto_password, ["identity:name"]
                )
                assert resp.status_code == 200, resp.text
                approved = await recv_json(sock)
                assert approved["type"] == "approved"
                assert b.rp.hash_ok(started, approved)
                assert await close_code(sock) == 1000
            claims = await a.rp.verify_jwt(
                approved["jwt"], session_id=started.session_id, nonce="n-cluster"
            )
            assert claims["sub"] == token_id
            assert claims["idtoken"] == {"tokenId": token_id, "givenName": "Ada"}
            for node in (a, b):  # approved once, anywhere
                again = await node.device(device).approve(
                    started.session_id, started.auto_password, ["identity:name"]
                )
                assert again.status_code == 409, again.text

            # Initiate on B, a socket on A replaced by a newer one on B (4009), reject on A.
            started = await b.rp.initiate(token_id)
            first = await websockets.connect(a.rp.socket_url(started), compression=None)
            try:
                assert (await recv_json(first))["type"] == "otp_ready"
                async with websockets.connect(b.rp.socket_url(started), compression=None) as second:
                    assert (await recv_json(second))["type"] == "otp_ready"
                    assert await close_code(first) == 4009
                    resp = await a.device(device).reject(started.session_id)
                    assert resp.status_code == 200, resp.text
                    assert await recv_json(second) == {
                        "type": "rejected",
                        "reason": "User rejected",
                    }
                    assert await close_code(second) == 1000
            finally:
                await first.close()

            # A late socket on the other instance gets a decision at once.
            started = await a.rp.initiate(token_id)
            resp = await b.device(device).approve(
                started.session_id, started.auto_password, ["identity:name"]
            )
            assert resp.status_code == 200, resp.text
            message = await b.rp.wait_result(started, timeout=5)
            assert message["type"] == "approved"
