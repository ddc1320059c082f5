"""The operator on a Sentinel-managed Redis: a master, a replica and three sentinels on loopback.

The failover test kills the master in the middle of a login. While the sentinels have not
promoted the replica, every call that needs Redis answers 503 with ``Retry-After`` (it fails
explicitly, never half-done); once they have, the operators follow the new master without a
restart, the waiting browser socket re-reads the session after its event connection comes
back, and the approval is accepted exactly once however many times the phones retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import websockets

from idtoken.client import Device, Initiation, RelyingParty
from idtoken.clock import ManualClock
from idtoken.store.base import Outcome, StoreUnavailable
from idtoken.store.redis import RedisStore
from support import (
    Node,
    OperatorConfig,
    OperatorProcess,
    RedisServer,
    free_port,
    recv_json,
    redis_binary,
    redis_server,
)
from test_redis_tls import OPERATOR_ACL, PASSWORD
from test_store_contract import Inbox, approve, approved_message, create, enroll

SERVICE = "mymaster"
AUDIENCE = "shop-audience"


# ----------------------------------------------------------------------------- the deployment
@dataclass
class Sentinels:
    master: RedisServer
    replica: RedisServer
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The operator's URL: the three sentinels, and the restricted ACL user for the
        master (the sentinels themselves have no password here)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://idtoken:{quote(PASSWORD, safe='')}@{hosts}/{SERVICE}/0"

    def ask(self, port: int, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, check=True, timeout=10
        )
        return out.stdout.decode().strip()

    def master_port(self) -> int:
        """The master port every sentinel agrees on (0 while they disagree)."""
        answers = {
            self.ask(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).splitlines()[-1]
            for p in self.ports
        }
        return int(answers.pop()) if len(answers) == 1 else 0

    def settled(self) -> bool:
        for port in self.ports:
            fields = self.ask(port, "SENTINEL", "MASTER", SERVICE).splitlines()
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            if info.get("num-slaves") != "1" or info.get("num-other-sentinels") != "2":
                return False
        return True


def _spawn_sentinel(directory: Path, port: int, master_port: int) -> subprocess.Popen[bytes]:
    if shutil.which("redis-cli") is None:  # a failure, never a skip
        raise RuntimeError("redis-cli is not installed: ./scripts/test installs it (redis-tools)")
    conf = directory / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f'dir "{directory}"\n'
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )
    # `redis-server <conf> --sentinel` is what the redis-sentinel binary does; no extra package.
    proc = subprocess.Popen(
        [redis_binary(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server --sentinel exited with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("sentinel did not start")


@pytest.fixture(scope="module")
def sentinels() -> Iterator[Sentinels]:
    directory = Path(tempfile.mkdtemp(prefix="idtoken-sentinel-"))
    acl = ("--user", "idtoken", "on", f">{PASSWORD}", *OPERATOR_ACL.split())
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        master = stack.enter_context(redis_server("--repl-diskless-sync-delay", "0", *acl))
        replica = stack.enter_context(
            redis_server("--replicaof", "127.0.0.1", str(master.port), *acl)
        )
        deployment = Sentinels(master, replica, [free_port() for _ in range(3)])
        stack.callback(_stop_all, deployment.procs)
        for port in deployment.ports:
            deployment.procs.append(_spawn_sentinel(directory, port, master.port))
        deadline = time.monotonic() + 30
        while not deployment.settled() or "master_link_status:up" not in replica.cli(
            "INFO", "replication"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not discover each other")
            time.sleep(0.1)
        yield deployment


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- store level
async def test_sentinel_store_serves_the_contract_basics(sentinels: Sentinels) -> None:
    """Runs before the failover test (file order): the store finds the master through the
    sentinels, runs scripts there and receives the published events."""
    sentinels.master.cli("FLUSHALL")
    store = RedisStore(sentinels.url, ManualClock(1_800_000_000.5))
    await store.start()
    try:
        assert store.mode == "sentinel" and store.events_connected
        await store.ping()
        await enroll(store)
        await create(store, "sess_a")
        inbox = Inbox()
        store.listen("tok-1", "sess_a", inbox)
        assert (await approve(store, "sess_a")).outcome is Outcome.APPROVED
        assert (await inbox.next_event()).final == approved_message("sess_a")
        found = await store.find_session("sess_a")
        assert found is not None and found.state == "approved"
        # Written on the master, replicated (asynchronously) to the replica.
        deadline = time.monotonic() + 5
        while sentinels.replica.cli("EXISTS", "idtoken:sessref:{sess_a}") != "1":
            assert time.monotonic() < deadline, "not replicated"
            await asyncio.sleep(0.02)
    finally:
        await store.aclose()


async def test_sentinel_store_without_reachable_sentinels_is_unavailable() -> None:
    ports = [free_port() for _ in range(3)]
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    store = RedisStore(f"redis+sentinel://{hosts}/{SERVICE}", ManualClock(0))
    try:
        for call in (store.ping(), store.find_session("sess_a")):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.aclose()


# ----------------------------------------------------------------------------- failover


async def approve_until_answered(
    phone: Device, started: Initiation, deadline: float
) -> list[tuple[int, str | None]]:
    """Approve, retrying only on 503 (honouring Retry-After, capped for the test), until the
    operator answers something else. Returns every (status, Retry-After) seen."""
    seen: list[tuple[int, str | None]] = []
    loop = asyncio.get_running_loop()
    while True:
        try:
            resp = await phone.approve(started.session_id, started.auto_password, ["identity:name"])
        except httpx.TransportError:
            seen.append((0, None))
        else:
            seen.append((resp.status_code, resp.headers.get("retry-after")))
            if resp.status_code != 503:
                return seen
            assert resp.json()["error"] == "temporarily_unavailable", resp.text
        if loop.time() > deadline:
            raise AssertionError(f"no answer but 503 before the deadline: {seen[-5:]}")
        await asyncio.sleep(0.1)


async def test_master_fails_over_mid_flow_and_the_approval_is_accepted_once(
    sentinels: Sentinels, tmp_path: Path
) -> None:
    sentinels.master.cli("FLUSHALL")
    old_master = sentinels.master.port
    assert sentinels.master_port() == old_master
    config = OperatorConfig(tmp_path / "ops", redis_url=sentinels.url)
    path = config.write()
    procs = [OperatorProcess(path), OperatorProcess(path)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: p.start(), procs))
    try:
        async with contextlib.AsyncExitStack() as stack:
            nodes = []
            for proc in procs:
                http = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=proc.url, timeout=10)
                )
                rp = RelyingParty(
                    http, service_id="shop", issuer=config.issuer_url, audience=AUDIENCE
                )
                nodes.append(Node(proc, http, rp))
            a, b = nodes
            device = Device(a.http, device_id="dev-failover")
            await device.enroll(config.issuers[0].mint("user-failover", given_name="Ada"))
            started = await a.rp.initiate("user-failover", ["identity:name"], nonce="n-fo")

            sock = await stack.enter_async_context(
                websockets.connect(b.rp.socket_url(started), compression=None)
            )
            assert (await recv_json(sock, 5))["type"] == "otp_ready"
            # The session is on the replica too (asynchronous replication, made explicit).
            assert sentinels.master.cli("WAIT", "1", "5000") == "1"

            sentinels.master.process.kill()  # the master dies mid-flow
            sentinels.master.process.wait()

            # While the sentinels fail over, calls fail explicitly with 503 + Retry-After.
            deadline = asyncio.get_running_loop().time() + 40
            # Both phones (one per instance) keep approving until they get an answer.
            answers = await asyncio.gather(
                approve_until_answered(a.device(device), started, deadline),
                approve_until_answered(b.device(device), started, deadline),
            )
            finals = [seen[-1][0] for seen in answers]
            unavailable = [s for seen in answers for s in seen if s[0] == 503]
            assert sorted(finals) == [200, 409], answers  # accepted exactly once
            assert unavailable, "the failover was expected to be visible as 503s"
            assert all(retry == "2" for _, retry in unavailable)

            # The operator followed whichever sentinel answered first; all three agree a
            # moment later (their views converge through gossip).
            new_master = 0
            for _ in range(100):
                new_master = sentinels.master_port()
                if new_master:
                    break
                await asyncio.sleep(0.1)
            assert new_master == sentinels.replica.port != old_master

            # The browser's socket on B hears the decision (event connection reconnected to the
            # new master, then the session was re-read or the event received).
            approved = await recv_json(sock, 20)
            assert approved["type"] == "approved"
            assert b.rp.hash_ok(started, approved)
            claims = await a.rp.verify_jwt(
                approved["jwt"], session_id=started.session_id, nonce="n-fo"
            )
            assert claims["sub"] == "user-failover"
            for node in (a, b):  # and it stays accepted once
                again = await node.device(device).approve(
                    started.session_id, started.auto_password, ["identity:name"]
                )
                assert again.status_code == 409, again.text

            # After the failover a whole new login works, across both instances.
            started = await b.rp.initiate("user-failover")
            async with websockets.connect(a.rp.socket_url(started), compression=None) as sock2:
                assert (await recv_json(sock2, 5))["type"] == "otp_ready"
                resp = await b.device(device).approve(
                    started.session_id, started.auto_password, ["identity:name"]
                )
                assert resp.status_code == 200, resp.text
                assert (await recv_json(sock2, 10))["type"] == "approved"
    finally:
        for proc in procs:
            proc.stop()
