"""Writes whose reply is lost, against real operator processes and a stalled Redis (issue 13).

A Redis stopped with ``SIGSTOP`` keeps the commands sent to it in its sockets and runs them
when it resumes, after the operator's command timeout (2 s) has answered the caller 503. The
tests show what the operator does about that:

- a lost initiate: the session the script wrote is cancelled as soon as Redis answers again,
  so it never reaches the phone (push or ``/auth/pending``) and gives back its pending slot
  and its place in the push window;
- the same cancel overtaking the create (a stalled network path that delivers the create
  late): the cancel leaves a tombstone and the late create writes nothing;
- a lost approval or rejection: the browser still gets the decision, and the logs of all the
  instances together hold its audit line exactly once (``after_lost_reply``);
- decisions taken normally, and an expiry noticed by several instances, are logged once.

Every instance is a real ``idtoken-operator serve`` process. They reach Redis through
:class:`Relay`, a TCP relay on 127.0.0.1 that passes every byte through and can hold back one
chosen command: it is how a test puts a stall exactly between two commands of one request
(a reject reads the device, then runs its script) or lets a later command overtake an
earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from idtoken.client import Device, RelyingParty
from idtoken.store import lua
from idtoken.store.resp import Script
from pushreceiver import PushReceiver, SubscriptionHandle
from support import DEFAULT_SERVICE, OperatorConfig, RedisServer, otp_ready, redis_server
from test_faults import (
    SCOPES,
    Fleet,
    Instance,
    Node,
    _start_all,
    assert_503,
    enroll,
    new_token_id,
    nodes,
    recorders,
    stored_jwt,
    token_of,
)

BRIEF = {**DEFAULT_SERVICE, "id": "brief", "name": "Brief Shop", "session_ttl": 10}
MAX_PENDING = 2
PUSHES = 3
LIMITS = {
    "enroll_per_ip_per_hour": 10_000,
    "max_pending_per_token": MAX_PENDING,
    "pushes_per_token_per_10min": PUSHES,
}
CANCELLED = "session cancelled after a lost store reply"
PENDING_FULL = "the token has the maximum number of pending sessions"
PUSH_RATE = "too many login requests for this token; try again later"


# ----------------------------------------------------------------------------- the relay
def split_commands(buf: bytearray) -> list[tuple[bytes, list[bytes]]]:
    """Take the complete RESP commands off the front of ``buf``: (raw bytes, arguments)."""
    out = []
    while True:
        parsed = _one_command(buf)
        if parsed is None:
            return out
        size, args = parsed
        out.append((bytes(buf[:size]), args))
        del buf[:size]


def _one_command(buf: bytearray) -> tuple[int, list[bytes]] | None:
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    if buf[:1] != b"*":  # an inline command
        return end + 2, bytes(buf[:end]).split()
    pos, args = end + 2, []
    for _ in range(int(buf[1:end])):
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        start = line_end + 2
        stop = start + int(buf[pos + 1 : line_end])  # after the '$'
        if len(buf) < stop + 2:
            return None
        args.append(bytes(buf[start:stop]))
        pos = stop + 2
    return pos, args


@dataclass(eq=False)
class Pipe:
    """One client connection and its own connection to Redis."""

    client: socket.socket
    server: socket.socket
    holding: bool = False
    held: bytearray = field(default_factory=bytearray)
    client_gone: bool = False
    released: bool = False
    late_replies: bytearray = field(default_factory=bytearray)  # what Redis sent after release


class Relay:
    """A TCP relay on 127.0.0.1 in front of Redis. It passes every byte through, except that
    :meth:`hold` makes it keep back the next command that matches, and everything after it on
    the same connection, as a stalled network path would, until :meth:`release`. A client
    that gives up meanwhile (the operator aborts the connection after its command timeout)
    does not drop what was held: it reaches Redis on release, and Redis's replies are kept in
    :attr:`Pipe.late_replies`."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._match: Callable[[list[bytes]], bool] | None = None
        self._holding: Pipe | None = None
        self._pipes: list[Pipe] = []
        self.held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self, match: Callable[[list[bytes]], bool]) -> None:
        with self._lock:
            assert self._holding is None and self._match is None
            self.held.clear()
            self._match = match

    def release(self) -> Pipe:
        """Send what was held to Redis (and the client's end of stream, if it has gone)."""
        with self._lock:
            pipe, self._holding, self._match = self._holding, None, None
            assert pipe is not None, "nothing is held"
            pipe.holding, pipe.released = False, True
            with contextlib.suppress(OSError):
                pipe.server.sendall(bytes(pipe.held))
                if pipe.client_gone:
                    pipe.server.shutdown(socket.SHUT_WR)
            return pipe

    def reset(self) -> None:
        """Let through whatever a failed test left held, and hold nothing more."""
        with self._lock:
            self._match = None
            holding = self._holding is not None
        if holding:
            self.release()

    def late_replies(self, pipe: Pipe) -> bytes:
        with self._lock:
            return bytes(pipe.late_replies)

    def close(self) -> None:
        with self._lock:
            if self._holding is not None:  # nothing is left waiting for a release
                self._holding.holding = False
            self._match = self._holding = None
            pipes = list(self._pipes)
        for sock in [self._listener] + [s for p in pipes for s in (p.client, p.server)]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:
                client.close()
                continue
            pipe = Pipe(client, server)
            with self._lock:
                self._pipes.append(pipe)
            threading.Thread(target=self._up, args=(pipe,), daemon=True).start()
            threading.Thread(target=self._down, args=(pipe,), daemon=True).start()

    def _up(self, pipe: Pipe) -> None:
        buf = bytearray()
        while True:
            try:
                data = pipe.client.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                if not data:
                    pipe.client_gone = True
                    if not pipe.holding:
                        with contextlib.suppress(OSError):
                            pipe.server.shutdown(socket.SHUT_WR)
                    return
                buf += data
                for raw, args in split_commands(buf):
                    if not pipe.holding and self._match is not None and self._match(args):
                        self._match, self._holding = None, pipe
                        pipe.holding = True
                        self.held.set()
                    if pipe.holding:
                        pipe.held += raw
                        continue
                    with contextlib.suppress(OSError):
                        pipe.server.sendall(raw)

    def _down(self, pipe: Pipe) -> None:
        while True:
            try:
                data = pipe.server.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    pipe.client.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                if pipe.released:
                    pipe.late_replies += data
            with contextlib.suppress(OSError):
                pipe.client.sendall(data)


def script_call(name: str, mentioning: str) -> Callable[[list[bytes]], bool]:
    """Matches a call of the store's Lua script ``name`` (by SHA-1 or in full) whose keys or
    arguments contain ``mentioning``."""
    script = Script(getattr(lua, name))
    forms = {script.sha.encode(), script.text.encode()}
    needle = mentioning.encode()

    def match(args: list[bytes]) -> bool:
        return (
            len(args) > 2
            and args[0].upper() in (b"EVALSHA", b"EVAL")
            and args[1] in forms
            and any(needle in a for a in args[2:])
        )

    return match


# ----------------------------------------------------------------------------- the fleet
@dataclass
class Stage:
    """Three instances on a Redis of their own, through the relay."""

    fleet: Fleet
    relay: Relay

    @property
    def redis(self) -> RedisServer:
        return self.fleet.redis

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """Redis stopped (SIGSTOP) inside the block, resumed (SIGCONT) when it ends."""
        self.redis.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.redis.process.send_signal(signal.SIGCONT)

    def key(self, token_id: str, suffix: str) -> str:
        return f"idtoken:{{t:{token_id}}}:{suffix}"

    def members(self, token_id: str, zset: str) -> list[str]:
        return self.redis.cli("ZRANGE", self.key(token_id, zset), "0", "-1").split()


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    directory = tmp_path_factory.mktemp("lost")
    with redis_server() as redis:
        # Redis has every script of the store cached, as after each one's first use. (A call
        # that finds its script missing is refused with NOSCRIPT and sent again in full; a
        # stall that loses the refusal loses a call that never ran, a case of its own.)
        for name, text in vars(lua).items():
            if name.isupper() and not name.startswith("_") and isinstance(text, str):
                redis.cli("SCRIPT", "LOAD", text)
        relay = Relay(redis.port)
        config = OperatorConfig(
            directory, redis_url=relay.url, services=[dict(DEFAULT_SERVICE), BRIEF], limits=LIMITS
        )
        path = config.write()
        procs = [Instance(path) for _ in range(3)]
        try:
            _start_all(procs)
            yield Stage(Fleet(redis, config, path, procs), relay)
        finally:
            for proc in procs:
                proc.stop()
            relay.close()


@pytest.fixture
async def ring(stage: Stage) -> AsyncIterator[list[Node]]:
    async with nodes(stage.fleet) as out:
        try:
            yield out
        finally:
            stage.redis.process.send_signal(signal.SIGCONT)  # if a failed test left it stopped
            stage.relay.reset()


# ----------------------------------------------------------------------------- helpers
def log_lines_of(proc: Instance, session_id: str) -> list[dict[str, Any]]:
    """The JSON lines of one instance's log that mention ``session_id``."""
    out = []
    for raw in proc.logs().splitlines():
        if session_id in raw:
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
    return out


def log_entries(fleet: Fleet, msg: str, session_id: str) -> list[dict[str, Any]]:
    """The log lines ``msg`` about ``session_id``, from every instance's log."""
    return [
        entry
        for proc in fleet.procs
        for entry in log_lines_of(proc, session_id)
        if entry.get("msg") == msg and entry.get("session_id") == session_id
    ]


async def first_entry(fleet: Fleet, msg: str, session_id: str) -> dict[str, Any]:
    """Wait (at most 15 s) for the first line ``msg`` about ``session_id``."""
    async with asyncio.timeout(15):
        while not (found := log_entries(fleet, msg, session_id)):
            await asyncio.sleep(0.05)
    return found[0]


async def enroll_with_push(
    fleet: Fleet, node: Node, receiver: PushReceiver
) -> tuple[Device, SubscriptionHandle]:
    disco = (await node.http.get("/.well-known/openid-configuration")).json()
    subscription, handle = receiver.new_subscription(
        application_server_key=disco["push_vapid_public_key"]
    )
    token_id = new_token_id()
    device = Device(node.http, device_id=f"dev-{token_id}")
    await device.enroll(
        fleet.config.issuers[0].mint(token_id), push_subscription=subscription.to_json()
    )
    return device, handle


def expires_in(expires_at: str) -> float:
    """Seconds until an ISO 8601 ``expiresAt`` (UTC, with Z)."""
    return datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp() - time.time()


def initiate_body(device: Device) -> dict[str, Any]:
    return {"tokenId": token_of(device), "serviceId": "shop", "scopes": SCOPES}


def refused(resp: httpx.Response, description: str) -> bool:
    body = resp.json()
    return (
        resp.status_code == 429
        and body["error"] == "too_many_requests"
        and body["error_description"] == description
    )


async def the_one_session_written(stage: Stage, token_id: str) -> str:
    """The id of the one session key of ``token_id`` (waiting up to 15 s for it)."""
    pattern = stage.key(token_id, "sess:*")
    async with asyncio.timeout(15):
        while not (keys := stage.redis.cli("KEYS", pattern).split()):
            await asyncio.sleep(0.05)
    (key,) = keys
    return key.rsplit(":", 1)[1]


async def assert_nothing_left(
    stage: Stage, node: Node, device: Device, handle: SubscriptionHandle, lost: str
) -> None:
    """The lost session is nowhere: not on the phone, not in the token's pending slots or push
    window (the whole allowance of each is still there), never pushed."""
    token_id = token_of(device)
    assert lost not in stage.members(token_id, "pending")
    assert lost not in stage.members(token_id, "pushes")
    assert stage.redis.cli("EXISTS", f"idtoken:sessref:{{{lost}}}") == "0"
    assert await device.pending() == []

    # max_pending_per_token new sessions fit, and not one more.
    phone = node.device(device)
    first = [await node.http.post("/auth/initiate", json=initiate_body(device)) for _ in "ab"]
    assert [r.status_code for r in first] == [201] * MAX_PENDING, [r.text for r in first]
    over = await node.http.post("/auth/initiate", json=initiate_body(device))
    assert refused(over, PENDING_FULL), over.text
    # The push window holds PUSHES sessions: room for one more once a slot is free, no more.
    resp = await phone.reject(first[0].json()["sessionId"])
    assert resp.status_code == 200, resp.text
    third = await node.http.post("/auth/initiate", json=initiate_body(device))
    assert third.status_code == 201, third.text
    resp = await phone.reject(first[1].json()["sessionId"])
    assert resp.status_code == 200, resp.text
    over = await node.http.post("/auth/initiate", json=initiate_body(device))
    assert refused(over, PUSH_RATE), over.text

    # Each acknowledged session was pushed, the lost one never.
    acknowledged = [r.json()["sessionId"] for r in (*first, third)]
    async with asyncio.timeout(10):
        while len(handle.payloads) < len(acknowledged):
            await asyncio.sleep(0.02)
    assert [p["sessionId"] for p in handle.payloads] == acknowledged
    assert lost not in {p["sessionId"] for p in handle.payloads}


# ----------------------------------------------------------------------------- initiate
async def test_initiate_answered_503_while_redis_stalls_leaves_no_session(
    stage: Stage, ring: list[Node]
) -> None:
    """Redis is stopped during POST /auth/initiate: 503 after the command timeout; once Redis
    resumes, the create script it had queued runs, and the follow-up cancels that session:
    the phone never sees it and the token's limits are whole."""
    a, _, _ = ring
    async with PushReceiver() as receiver:
        device, handle = await enroll_with_push(stage.fleet, a, receiver)
        token_id = token_of(device)
        with stage.stalled():
            resp = await a.http.post("/auth/initiate", json=initiate_body(device))
        assert_503(resp)

        lost = await the_one_session_written(stage, token_id)
        line = await first_entry(stage.fleet, CANCELLED, lost)
        assert line["service_id"] == "shop"
        assert len(log_entries(stage.fleet, CANCELLED, lost)) == 1
        # The create did run (the whole session was written), then the cancel ended it.
        assert stage.fleet.session_field(token_id, lost, "sid") == lost
        assert stage.fleet.session_field(token_id, lost, "state") == "expired"
        assert json.loads(stage.fleet.session_field(token_id, lost, "result")) == {
            "type": "expired"
        }
        await assert_nothing_left(stage, a, device, handle, lost)


async def test_cancel_that_overtakes_the_lost_create_makes_it_write_nothing(
    stage: Stage, ring: list[Node]
) -> None:
    """The create is held on its way to Redis (a stalled network path), the caller gets 503,
    and the follow-up's cancel reaches Redis first: it leaves a tombstone. The create, let
    through afterwards, runs and answers ``exists``, writing nothing."""
    a, _, _ = ring
    async with PushReceiver() as receiver:
        device, handle = await enroll_with_push(stage.fleet, a, receiver)
        token_id = token_of(device)
        stage.relay.hold(script_call("CREATE", mentioning=stage.key(token_id, "device")))
        resp = await a.http.post("/auth/initiate", json=initiate_body(device))
        assert_503(resp)
        assert stage.relay.held.is_set()

        lost = await the_one_session_written(stage, token_id)
        await first_entry(stage.fleet, CANCELLED, lost)
        tombstone = stage.key(token_id, f"sess:{lost}")
        assert stage.redis.cli("HGETALL", tombstone).split() == ["state", "expired"]

        pipe = stage.relay.release()
        async with asyncio.timeout(10):
            while b"exists" not in stage.relay.late_replies(pipe):
                await asyncio.sleep(0.02)
        assert stage.redis.cli("HGETALL", tombstone).split() == ["state", "expired"]
        assert int(stage.redis.cli("TTL", tombstone)) > 0
        await assert_nothing_left(stage, a, device, handle, lost)


# ----------------------------------------------------------------------------- decisions
async def test_approval_answered_503_while_redis_stalls_is_logged_once(
    stage: Stage, ring: list[Node]
) -> None:
    """Redis is stopped during a valid POST /auth/verify on the instance that created the
    session (its facts are cached there, so the approve script is the first command): 503;
    once Redis resumes the script runs, the browser on another instance gets the JWT, and
    the logs of all instances hold exactly one "session approved" line for it."""
    a, b, c = ring
    device = await enroll(stage.fleet, a)
    started = await a.rp.initiate(token_of(device), SCOPES)
    async with recorders([b.socket_url(started)]) as (browser,):
        assert await browser.until("otp_ready", 5) == otp_ready(started)
        phone = a.device(device)
        with stage.stalled():
            resp = await phone.approve(started.session_id, started.auto_password, SCOPES)
        assert_503(resp)

        approved = await browser.until("approved", 10)
        assert RelyingParty.hash_ok(started, approved)
        assert approved["jwt"] == stored_jwt(stage.fleet, token_of(device), started.session_id)
        await c.rp.verify_jwt(approved["jwt"], session_id=started.session_id)
        assert await browser.finished() == 1000

    line = await first_entry(stage.fleet, "session approved", started.session_id)
    # The phone, not knowing, tries again: the session is over, and that is no decision.
    again = await phone.approve(started.session_id, started.auto_password, SCOPES)
    assert again.status_code == 409, again.text
    assert log_entries(stage.fleet, "session approved", started.session_id) == [line]
    assert line["after_lost_reply"] is True
    assert line["service_id"] == "shop"


async def test_rejection_answered_503_while_redis_stalls_is_logged_once(
    stage: Stage, ring: list[Node]
) -> None:
    """A reject reads the device key, then runs its script. The relay holds the script,
    Redis is stopped, the script is let into the stopped Redis's socket: the phone gets 503,
    Redis resumes and runs it, the browser gets `rejected`, and exactly one "session
    rejected" line is logged."""
    a, b, _ = ring
    device = await enroll(stage.fleet, a)
    started = await a.rp.initiate(token_of(device), SCOPES)
    async with recorders([b.socket_url(started)]) as (browser,):
        assert await browser.until("otp_ready", 5) == otp_ready(started)
        phone = a.device(device)
        stage.relay.hold(script_call("REJECT", mentioning=started.session_id))
        rejecting = asyncio.create_task(phone.reject(started.session_id, "user_rejected"))
        assert await asyncio.to_thread(stage.relay.held.wait, 10)
        with stage.stalled():
            stage.relay.release()
            resp = await rejecting
        assert_503(resp)

        assert await browser.until("rejected", 10) == {
            "type": "rejected",
            "reason": "User rejected",
        }
        assert await browser.finished() == 1000

    line = await first_entry(stage.fleet, "session rejected", started.session_id)
    again = await phone.reject(started.session_id, "user_rejected")
    assert again.status_code == 409, again.text
    assert log_entries(stage.fleet, "session rejected", started.session_id) == [line]
    assert line["after_lost_reply"] is True
    assert line["reason"] == "User rejected"
    assert stage.fleet.session_field(token_of(device), started.session_id, "state") == "rejected"


async def test_a_normal_approval_is_logged_once_across_instances(
    stage: Stage, ring: list[Node]
) -> None:
    """Initiated on A, watched on B, approved on C, tried again on A: one line, C's."""
    a, b, c = ring
    device = await enroll(stage.fleet, a)
    started = await a.rp.initiate(token_of(device), SCOPES)
    async with recorders([b.socket_url(started)]) as (browser,):
        await browser.until("otp_ready", 5)
        resp = await c.device(device).approve(started.session_id, started.auto_password, SCOPES)
        assert resp.status_code == 200, resp.text
        await browser.until("approved", 5)
        assert await browser.finished() == 1000
    again = await a.device(device).approve(started.session_id, started.auto_password, SCOPES)
    assert again.status_code == 409, again.text

    lines = log_entries(stage.fleet, "session approved", started.session_id)
    assert len(lines) == 1, lines
    assert "after_lost_reply" not in lines[0]
    assert [p for p in stage.fleet.procs if lines[0] in log_lines_of(p, started.session_id)] == [
        c.proc
    ]


async def test_an_expiry_seen_by_several_instances_is_logged_once(
    stage: Stage, ring: list[Node]
) -> None:
    """A 10 s session watched on B: B's timer expires it; a late approval on C and a browser
    reconnecting on A find it expired and decide nothing. One "session expired" line."""
    a, b, c = ring
    device = await enroll(stage.fleet, a)
    brief = RelyingParty(a.http, service_id="brief", issuer=stage.fleet.config.issuer_url)
    started = await brief.initiate(token_of(device), SCOPES)
    async with recorders([b.socket_url(started)]) as (browser,):
        await browser.until("otp_ready", 5)
        # expiresAt is in whole seconds, truncated: the true expiry is within a second.
        await asyncio.sleep(max(0.0, expires_in(started.expires_at) + 1))
        late = await c.device(device).approve(started.session_id, started.auto_password, SCOPES)
        assert late.status_code == 410, late.text
        assert await browser.until("expired", 5) == {"type": "expired"}
        assert await browser.finished() == 1000
    async with recorders([a.socket_url(started)]) as (again,):
        assert await again.until("expired", 5) == {"type": "expired"}

    lines = log_entries(stage.fleet, "session expired", started.session_id)
    assert len(lines) == 1, lines
    assert lines[0]["service_id"] == "brief"


async def test_an_expiry_whose_reply_is_lost_is_logged_once(stage: Stage, ring: list[Node]) -> None:
    """At the expiry of a 10 s session, B's socket timer runs the expire script. The relay
    holds it, Redis is stopped and the script let into its socket; B gives up on it after the
    command timeout and tries again. Once Redis resumes, the first script expires the session:
    the browser gets `expired` and the logs hold one "session expired" line."""
    a, b, _ = ring
    device = await enroll(stage.fleet, a)
    brief = RelyingParty(a.http, service_id="brief", issuer=stage.fleet.config.issuer_url)
    started = await brief.initiate(token_of(device), SCOPES)
    async with recorders([b.socket_url(started)]) as (browser,):
        await browser.until("otp_ready", 5)
        # The call made at or after the expiry (ARGV[1] is its time): the timer may fire a
        # moment early, and that call decides nothing.
        exp = float(stage.fleet.session_field(token_of(device), started.session_id, "exp"))
        expiring = script_call("EXPIRE", mentioning=started.session_id)
        stage.relay.hold(lambda args: expiring(args) and float(args[5]) >= exp)
        assert await asyncio.to_thread(stage.relay.held.wait, BRIEF["session_ttl"] + 5)
        with stage.stalled():
            pipe = stage.relay.release()
            async with asyncio.timeout(10):  # B drops the connection: the reply is lost
                while not pipe.client_gone:
                    await asyncio.sleep(0.02)
        assert await browser.until("expired", 10) == {"type": "expired"}
        assert await browser.finished() == 1000

    line = await first_entry(stage.fleet, "session expired", started.session_id)
    async with recorders([a.socket_url(started)]) as (again,):
        assert await again.until("expired", 5) == {"type": "expired"}
    assert log_entries(stage.fleet, "session expired", started.session_id) == [line]
    assert line["after_lost_reply"] is True
