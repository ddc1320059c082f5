"""The lean pipelined Redis connection (``idtoken.store.resp``) against a real redis-server.

The store contract suite already runs every script through it; these tests cover what is
particular to one shared, pipelined connection: replies matched to callers in order (also
when callers are cancelled), the script cache, credentials and database from the URL, and
every way the connection can fail — killed, stuck, server gone, failed over to a replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from idtoken.store.connect import open_connections
from idtoken.store.resp import LinkDown, RespClient, RespError, Script, pack
from support import RedisServer, redis_server


async def _lane(url: str) -> AsyncIterator[RespClient]:
    conn = open_connections(url)
    assert conn.lane is not None
    try:
        yield conn.lane
    finally:
        await conn.aclose()


@pytest.fixture
async def lane(redis_url: str) -> AsyncIterator[RespClient]:
    async for client in _lane(redis_url):
        yield client


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop, restart or make a replica."""
    with redis_server() as server:
        yield server


async def client_id(lane: RespClient) -> int:
    ident: int = await lane.execute("CLIENT", "ID")
    return ident


# ----------------------------------------------------------------------------- encoding
def test_pack_is_resp_bulk_strings() -> None:
    assert pack(["SET", "k", b"a\r\nb", 7, 0.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$1\r\n7\r\n$3\r\n0.5\r\n"
    )


@pytest.mark.parametrize("bad", [True, None, ["x"], {"a": 1}])
def test_pack_refuses_what_is_not_a_redis_argument(bad: Any) -> None:
    with pytest.raises(TypeError):
        pack(["SET", "k", bad])


async def test_values_round_trip_exactly(lane: RespClient) -> None:
    values = {"text": "Zoë — 東京", "crlf": "a\r\n$3\r\nb", "empty": "", "int": 42, "float": 1.25}
    for key, value in values.items():
        assert await lane.execute("SET", key, value) == "OK"
    got = [await lane.execute("GET", key) for key in values]
    assert got == ["Zoë — 東京", "a\r\n$3\r\nb", "", "42", "1.25"]
    assert await lane.execute("GET", "missing") is None
    assert await lane.execute("HSET", "h", "a", "1", "b", "2") == 2
    assert await lane.execute("HGETALL", "h") == ["a", "1", "b", "2"]


# ----------------------------------------------------------------------------- pipelining
async def test_concurrent_commands_share_one_connection_and_get_their_own_replies(
    lane: RespClient,
) -> None:
    first = await client_id(lane)
    await asyncio.gather(*(lane.execute("SET", f"k{i}", f"v{i}") for i in range(2000)))
    got = await asyncio.gather(*(lane.execute("GET", f"k{i}") for i in range(2000)))
    assert got == [f"v{i}" for i in range(2000)]
    ids = await asyncio.gather(*(client_id(lane) for _ in range(50)))
    assert set(ids) == {first}


async def test_a_cancelled_caller_does_not_shift_anyone_elses_reply(lane: RespClient) -> None:
    for i in range(200):
        await lane.execute("SET", f"c{i}", f"v{i}")
    tasks = [asyncio.create_task(lane.execute("GET", f"c{i}")) for i in range(200)]
    await asyncio.sleep(0)  # sent, replies not yet read
    for task in tasks[::2]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(done):
        if i % 2:
            assert result == f"v{i}"
        else:
            assert isinstance(result, asyncio.CancelledError) or result == f"v{i}"
    assert await lane.execute("GET", "c7") == "v7"


async def test_an_error_reply_fails_only_its_command(lane: RespClient) -> None:
    first = await client_id(lane)
    await lane.execute("SET", "s", "text")
    results = await asyncio.gather(
        lane.execute("INCR", "s"), lane.execute("GET", "s"), return_exceptions=True
    )
    assert isinstance(results[0], RespError) and str(results[0]).startswith("ERR")
    assert results[1] == "text"
    assert await client_id(lane) == first


# ----------------------------------------------------------------------------- scripts
async def test_evalsha_loads_the_script_when_the_server_lacks_it(lane: RespClient) -> None:
    script = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    await lane.execute("SCRIPT", "FLUSH")
    assert await lane.execute("SCRIPT", "EXISTS", script.sha) == [0]
    assert await lane.evalsha(script, ["k"], ["a", 41]) == ["k", "a", 42]
    assert await lane.execute("SCRIPT", "EXISTS", script.sha) == [1]
    # Concurrent first calls each fall back once and all succeed.
    await lane.execute("SCRIPT", "FLUSH")
    got = await asyncio.gather(*(lane.evalsha(script, ["k"], ["b", i]) for i in range(20)))
    assert got == [["k", "b", i + 1] for i in range(20)]


async def test_a_failing_script_is_an_error_reply_not_a_broken_connection(
    lane: RespClient,
) -> None:
    first = await client_id(lane)
    with pytest.raises(RespError, match="boom"):
        await lane.evalsha(Script("return redis.error_reply('boom')"), [], [])
    assert await client_id(lane) == first


# ----------------------------------------------------------------------------- failures
async def test_a_killed_connection_fails_what_waits_on_it_and_the_next_command_reconnects(
    own_redis: RedisServer,
) -> None:
    async for lane in _lane(own_redis.url):
        first = await client_id(lane)
        blocked = asyncio.create_task(lane.execute("BLPOP", "never", "5"))
        queued = asyncio.create_task(lane.execute("PING"))  # pipelined behind the BLPOP
        await asyncio.sleep(0.1)
        own_redis.cli("CLIENT", "KILL", "ID", str(first))
        for task in (blocked, queued):
            with pytest.raises(LinkDown):
                await asyncio.wait_for(task, 2)
        assert await client_id(lane) != first
        assert await lane.execute("PING") == "PONG"


async def test_a_stuck_reply_times_out_and_frees_the_connection(own_redis: RedisServer) -> None:
    async for lane in _lane(own_redis.url):
        lane._command_timeout = 0.3  # the production value is seconds; same mechanism
        first = await client_id(lane)
        blocked = asyncio.create_task(lane.execute("BLPOP", "never", "5"))
        behind = asyncio.create_task(lane.execute("PING"))
        for task in (blocked, behind):
            # Our timeout, not wait_for's (whose TimeoutError carries no message).
            with pytest.raises(TimeoutError, match=r"no reply from Redis within 0\.3 s"):
                await asyncio.wait_for(task, 4)
        assert await client_id(lane) != first  # a fresh connection, not the stuck one


async def test_server_down_fails_fast_and_recovers_when_it_returns(
    own_redis: RedisServer,
) -> None:
    async for lane in _lane(own_redis.url):
        assert await lane.execute("SET", "x", "1") == "OK"
        own_redis.stop()
        for _ in range(3):
            with pytest.raises(OSError):
                await lane.execute("GET", "x")
        own_redis.restart()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await lane.execute("PING") == "PONG"
                break
            except (OSError, RespError):  # not up yet, or still loading
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)


async def test_credentials_and_database_come_from_the_url() -> None:
    with redis_server() as server:
        server.cli("CONFIG", "SET", "requirepass", "s3cret pass")
        async for lane in _lane(f"redis://:s3cret%20pass@127.0.0.1:{server.port}/3"):
            assert await lane.execute("SET", "where", "db3") == "OK"
        assert server.cli("-a", "s3cret pass", "--no-auth-warning", "-n", "3", "GET", "where") == (
            "db3"
        )
        async for lane in _lane(f"redis://:wrong@127.0.0.1:{server.port}/0"):
            for _ in range(2):  # refused each time, and no half-open connection is kept
                with pytest.raises(RespError, match=r"WRONGPASS|invalid"):
                    await lane.execute("PING")
            assert lane._link is None


async def test_writes_to_a_server_that_became_a_replica_drop_the_connection(
    own_redis: RedisServer,
) -> None:
    with redis_server() as primary:
        async for lane in _lane(own_redis.url):
            first = await client_id(lane)
            own_redis.cli("REPLICAOF", "127.0.0.1", str(primary.port))
            with pytest.raises(RespError, match="READONLY"):
                await lane.execute("SET", "x", "1")
            assert await client_id(lane) != first  # reconnected: the address is resolved anew
            own_redis.cli("REPLICAOF", "NO", "ONE")


async def test_requests_waiting_for_a_connection_share_one_attempt() -> None:
    """A server that accepts but never answers (a hung Redis, a black-holed proxy): every
    request that arrived during the attempt fails with it, after one connect timeout, instead
    of each trying in turn behind the others (twenty connect timeouts in a row)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1 << 16)  # read the AUTH, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async for lane in _lane(f"redis://:pw@127.0.0.1:{port}/0"):
            lane._connect_timeout = 0.3
            results = await asyncio.gather(
                *(lane.execute("PING") for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, TimeoutError) for r in results), results
            assert len(accepted) == 1  # one shared attempt, not twenty in a row
            assert lane._link is None
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
