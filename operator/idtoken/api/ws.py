"""The browser's socket: /ws/session/{sessionId}?token={wsToken}.

The socket learns of a decision in one of three ways, all of which end in reading the stored
terminal message: an event published by whichever instance took the decision, a re-read after
the event stream reconnects, or its own timer reaching the stored ``expiresAt``. Only one
socket serves a session: a newer one (on any instance) closes the older with 4009.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from idtoken.api.runtime import Runtime, runtime
from idtoken.ids import ID_PATTERN, iso_z, result_hash
from idtoken.issued_jwt import open_final
from idtoken.store.base import RESULT_KEEP, Event, SessionRecord, StoreUnavailable

log = logging.getLogger("idtoken.ws")

MAX_FRAME = 4096
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_TOKEN = 4001
CLOSE_UNKNOWN = 4004
CLOSE_REPLACED = 4009
_DUMMY_DIGEST = hashlib.sha256(b"no-such-session").hexdigest()


async def session_socket(ws: WebSocket) -> None:
    rt = runtime(ws)
    session_id = ws.path_params["session_id"]
    token = ws.query_params.get("token", "")
    session: SessionRecord | None = None
    if ID_PATTERN.match(session_id):
        try:
            session = await rt.store.find_session(session_id)
        except StoreUnavailable:
            await ws.accept()
            await ws.close(CLOSE_INTERNAL)
            return
    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    if session is None:
        # Same work as a token check, so a probe cannot tell the cases apart by timing.
        hmac.compare_digest(digest, _DUMMY_DIGEST)
        await ws.accept()
        await ws.close(CLOSE_UNKNOWN)
        return
    service = rt.settings.services.get(session.service_id)
    allowed = service.allowed_origins if service is not None else None
    if allowed is not None and ws.headers.get("origin") not in allowed:
        await ws.close()  # before accept: the handshake is refused with 403
        return
    if not hmac.compare_digest(digest, session.ws_token_sha256):
        await ws.accept()
        await ws.close(CLOSE_BAD_TOKEN)
        return
    await ws.accept()
    rt.metrics.open_sockets.inc()
    try:
        await SocketSession(rt, ws, session, token).run()
    finally:
        rt.metrics.open_sockets.dec()


class SocketSession:
    """One open socket. While it waits, it costs one coroutine (uvicorn's task for the
    connection) and this object: no queue, no helper task. Events arrive through a callback
    that starts a short task only when there is something to do; the waiting coroutine reads
    the browser's frames under a deadline set at the session's expiry.

    Whoever sets ``finished`` sends the terminal message and closes. When that is an event's
    task, ``run`` waits for it before returning: the server drops the connection without a
    close frame (the browser sees 1006 and no message) once the handler returns."""

    __slots__ = (
        "finished",
        "finisher",
        "newest_claim",
        "rt",
        "seq",
        "session",
        "tasks",
        "token",
        "ws",
    )

    def __init__(self, rt: Runtime, ws: WebSocket, session: SessionRecord, token: str) -> None:
        self.rt = rt
        self.ws = ws
        self.session = session
        self.token = token
        self.seq = 0
        self.newest_claim = 0  # the highest socket claim seen for this session
        self.finished = False  # a terminal message or a close has been started
        self.finisher: asyncio.Task[None] | None = None  # the task that is finishing, if any
        self.tasks: set[asyncio.Task[None]] = set()  # event follow-ups still running

    def _on_event(self, session_id: str, event: Event | None) -> None:
        if self.finished:
            return
        if event is not None and event.claim is not None:
            self.newest_claim = max(self.newest_claim, event.claim)
            if event.claim > self.seq > 0:  # before our own claim returns, run() decides
                self.finished = True
                self.finisher = self._spawn(self._close(CLOSE_REPLACED))
            return
        if event is not None and event.final is not None:
            self.finished = True
            self.finisher = self._spawn(self._deliver(event.final))
            return
        # The event stream reconnected: re-read what may have been missed.
        self._spawn(self._reread_and_deliver())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run an event's follow-up without blocking the event dispatcher; the set keeps a
        reference until it is done, so that it is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(_unless_gone(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _settle(self) -> None:
        """Before the handler returns: let a terminal message being sent by an event's task
        reach the browser, and stop the follow-ups that would only re-read."""
        self.finished = True
        me = asyncio.current_task()
        rereads = [t for t in self.tasks if t is not self.finisher]
        for task in rereads:
            task.cancel()
        waiting = [*rereads, *([self.finisher] if self.finisher not in (None, me) else [])]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def run(self) -> None:
        store = self.rt.store
        # Listen before reading state, so that nothing published in between is missed.
        stop = store.listen(self.session.token_id, self.session.session_id, self._on_event)
        try:
            self.seq = await store.claim_socket(self.session.token_id, self.session.session_id)
            if self.newest_claim > self.seq:
                # A newer socket's claim overtook our own reply.
                await self._finish_with(CLOSE_REPLACED)
                return
            current = await store.get_session(self.session.token_id, self.session.session_id)
            if current is None:
                await self._finish_with(CLOSE_UNKNOWN)
                return
            if current.state == "pending" and self.rt.clock.now() >= current.expires_at:
                # Expired but nobody noticed yet: the browser gets `expired`, not the code.
                current = await self._expire() or current
            if await self._deliver_if_final(current):
                return
            await self._send(
                {
                    "type": "otp_ready",
                    "sessionId": current.session_id,
                    "autoPassword": current.otp,
                    "expiresAt": iso_z(current.expires_at),
                }
            )
            await self._wait()
        except StoreUnavailable:
            await self._finish_with(CLOSE_INTERNAL)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the browser went away
        finally:
            stop()
            await self._settle()

    async def _wait(self) -> None:
        """Read (and ignore) the browser's frames until it goes away, a decision closes the
        socket, or the session's lifetime runs out."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = max(0.0, self.session.expires_at - self.rt.clock.now())
            try:
                async with asyncio.timeout_at(loop.time() + remaining):
                    while True:
                        message = await self.ws.receive()
                        if message["type"] == "websocket.disconnect":
                            return
                        if _frame_size(message) > MAX_FRAME:
                            await self._finish_with(CLOSE_TOO_BIG)
                            return
            except TimeoutError:
                pass
            if self.finished:
                return
            # Our own timer: the session's lifetime has passed unless a decision beat it.
            current = await self._expire()
            if current is None:
                await self._finish_with(CLOSE_UNKNOWN)
                return
            if await self._deliver_if_final(current):
                return

    async def _reread_and_deliver(self) -> None:
        try:
            current = await self._reread()
        except StoreUnavailable:
            return
        if current is not None:
            await self._deliver_if_final(current)

    async def _reread(self) -> SessionRecord | None:
        return await self._retrying(
            lambda: self.rt.store.get_session(self.session.token_id, self.session.session_id)
        )

    async def _expire(self) -> SessionRecord | None:
        return await self._retrying(lambda: self.rt.login.expire(self.session))

    async def _retrying(
        self, op: Callable[[], Awaitable[SessionRecord | None]]
    ) -> SessionRecord | None:
        """Keep the socket open through a store outage; give up when the result would be gone."""
        delay = 0.1
        while True:
            try:
                return await op()
            except StoreUnavailable:
                if self.rt.clock.now() > self.session.expires_at + RESULT_KEEP:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _deliver_if_final(self, session: SessionRecord) -> bool:
        if session.state == "pending" or session.result is None:
            return False
        if not self.finished:
            self.finished = True
            self.finisher = asyncio.current_task()
            await self._deliver(session.result)
        return True

    async def _finish_with(self, code: int) -> None:
        self.finished = True
        await self._close(code)

    async def _deliver(self, final: str) -> None:
        message = json.loads(open_final(self.rt.secret, self.session.session_id, final))
        # The IDToken protocol's approval carries the JWT, and the socket adds its `hash`; an
        # OpenID Connect login's carries nothing (the page collects the code at /authorize).
        if message.get("type") == "approved" and "jwt" in message:
            message = {
                "type": "approved",
                "jwt": message["jwt"],
                "hash": result_hash(
                    self.token, self.session.session_id, message["random"], message["jwt"]
                ),
                "random": message["random"],
                "expiresAt": message["expiresAt"],
            }
        await self._send(message)
        await self._close(CLOSE_NORMAL)

    async def _send(self, message: dict[str, object]) -> None:
        await self.ws.send_text(json.dumps(message, separators=(",", ":")))

    async def _close(self, code: int) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self.ws.close(code)


def _frame_size(message: Message) -> int:
    text = message.get("text")
    if text is not None:
        return len(text.encode("utf-8"))
    return len(message.get("bytes") or b"")


async def _unless_gone(coro: Coroutine[Any, Any, None]) -> None:
    """An event's follow-up ends quietly when the browser has gone away meanwhile."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await coro
