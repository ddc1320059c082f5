"""A lean, pipelined Redis connection for the login path (standalone and ``unix://`` Redis).

redis-py spends about 0.2 ms of CPU per awaited command in its pool, retry, encoder and
stream-reader layers; a login needs one script call per request and nothing more. This
client keeps **one connection per process**, shared by every request: commands issued in the
same event-loop iteration leave in one write (pipelining across concurrent requests) and
replies, which Redis sends in order, are matched to their callers by a FIFO of futures and
parsed by hiredis.

Failure semantics are those of any single command: when the connection drops, every command
still waiting fails with :class:`LinkDown` (the caller answers 503; whether Redis ran the
command is unknown, exactly as with redis-py), and the next command reconnects. A reply that
does not come within the command timeout aborts the connection, failing everything waiting
on it. ``READONLY`` (the endpoint now points at a replica after a failover) also drops the
connection, so the next command resolves the address again.

Nothing here retries: the store turns every failure into ``StoreUnavailable`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis

Arg = str | bytes | int | float
Opener = Callable[["Link"], Awaitable[object]]


class RespError(Exception):
    """Redis answered the command with an error reply (the text is Redis's own)."""


class LinkDown(ConnectionError):
    """The connection failed before the reply arrived."""


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP (an array of bulk strings), encoded by hiredis: UTF-8 for text,
    ``repr`` for numbers; anything else (``bool`` and ``None`` included) is a TypeError."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


@dataclass(frozen=True)
class Script:
    """A Lua script called by its SHA-1, sent whole only when the server lacks it."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())  # noqa: S324


class Link(asyncio.Protocol):
    """One connection: a write buffer flushed once per loop iteration, and the futures of
    the commands sent on it, oldest first."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._reader = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failure: BaseException | None = None
        self.closed = False

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass; both have write/abort.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not self._waiting:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                future, _ = self._waiting.popleft()
                if future.done():  # the caller was cancelled; the reply is dropped in order
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    text = str(reply)
                    if text.startswith("READONLY"):
                        self.abort(LinkDown("the server is a read-only replica"))
                    future.set_exception(RespError(text))
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.abort(LinkDown(f"protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failure = self._failure or LinkDown("the connection to Redis closed")
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                # One instance per caller: a shared one would collect every caller's traceback.
                future.set_exception(type(failure)(*failure.args))
                future.exception()  # retrieved: a cancelled caller must not log it

    # ---- commands
    def send(self, payload: bytes) -> asyncio.Future[Any]:
        if self.closed:
            raise LinkDown("the connection to Redis closed")
        future = self._loop.create_future()
        now = self._loop.time()
        self._waiting.append((future, now))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(payload)
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._check)
        return future

    def _flush(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    def _check(self) -> None:
        """The oldest command has waited the whole timeout: Redis is stuck or gone."""
        self._timer = None
        if not self._waiting:
            return
        due = self._waiting[0][1] + self._timeout
        if self._loop.time() >= due:
            self.abort(TimeoutError(f"no reply from Redis within {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_at(due, self._check)

    def abort(self, failure: BaseException) -> None:
        """Drop the connection; every waiting command fails with ``failure``."""
        if self._failure is None:
            self._failure = failure
        self.closed = True  # no command is sent on it any more
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, on the loop
        else:
            self.connection_lost(None)


class RespClient:
    """The shared connection of one process, (re)opened on demand.

    ``opener(link)`` connects a transport to ``link`` (TCP, TLS or a unix socket);
    ``handshake`` holds the commands every new connection sends first (``AUTH``,
    ``SELECT``), each of which must answer ``OK``.
    """

    def __init__(
        self,
        opener: Opener,
        *,
        handshake: Sequence[Sequence[Arg]] = (),
        command_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._opener = opener
        self._handshake = [pack(cmd) for cmd in handshake]
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._link: Link | None = None
        self._attempt: asyncio.Future[Link] | None = None

    async def execute(self, *args: Arg) -> Any:
        link = self._link
        if link is None or link.closed:
            link = await self._connect()
        return await link.send(pack(args))

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.text, len(keys), *keys, *args)

    async def _connect(self) -> Link:
        """Join the connection attempt in progress, or start one. Callers that arrive
        while it runs share its outcome, so an unreachable server costs every waiting
        request one connect timeout, not one each in turn."""
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = asyncio.ensure_future(self._open())
            attempt.add_done_callback(self._opened)
        # A caller that gives up (its request was cancelled) does not cancel the attempt.
        return await asyncio.shield(attempt)

    async def _open(self) -> Link:
        link = Link(self._command_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._opener(link)
                replies = await asyncio.gather(
                    *(link.send(cmd) for cmd in self._handshake), return_exceptions=True
                )
        except BaseException:
            link.abort(LinkDown("connection setup did not finish"))
            raise
        for reply in replies:
            if reply != "OK":
                link.abort(LinkDown("connection setup refused"))
                if isinstance(reply, BaseException):
                    raise reply
                raise LinkDown(f"unexpected handshake reply {reply!r}")
        return link

    def _opened(self, attempt: asyncio.Future[Link]) -> None:
        self._attempt = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._link = attempt.result()

    async def aclose(self) -> None:
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
        link, self._link = self._link, None
        if link is not None and not link.closed:
            link.abort(LinkDown("the store is closing"))
            await asyncio.sleep(0)  # let connection_lost run
