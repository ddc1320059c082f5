"""OpenID CIBA test support: registered clients (poll and ping mode), the client's two calls,
and a real loopback receiver for ping notifications (CIBA Core §10.2).

The client is plain httpx with ``client_secret_basic``, as a relying party's back end would
call the operator; nothing here reaches into the operator's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from support import DEFAULT_SERVICE

CIBA_GRANT = "urn:openid:params:grant-type:ciba"
POLL_SECRET = "poll-client-secret-0123456789-abcdefgh"
PING_SECRET = "ping-client-secret-0123456789-abcdefgh"
SCOPE = "openid profile"
GRANTED = ["identity:name"]
# An auth_req_id is a sealed handle: base64url, its length set by the tokenId's.
AUTH_REQ_ID = re.compile(r"\A[A-Za-z0-9_-]{40,400}\Z")

POLL_CLIENT: dict[str, Any] = {
    **DEFAULT_SERVICE,
    "id": "desk",
    "name": "Help Desk",
    "client_secret_sha256": hashlib.sha256(POLL_SECRET.encode()).hexdigest(),
    "backchannel_token_delivery_mode": "poll",
    "session_ttl": 120,
}


def ping_client(port: int, **overrides: Any) -> dict[str, Any]:
    """A ping-mode client whose notification endpoint is ``http://127.0.0.1:<port>/cb``."""
    return {
        **DEFAULT_SERVICE,
        "id": "kiosk",
        "name": "Kiosk",
        "client_secret_sha256": hashlib.sha256(PING_SECRET.encode()).hexdigest(),
        "backchannel_token_delivery_mode": "ping",
        "backchannel_client_notification_endpoint": f"http://127.0.0.1:{port}/cb",
        "session_ttl": 120,
        **overrides,
    }


def error_of(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error", "error_description"}, body
    return str(body["error"])


class CibaClient:
    """A CIBA client's back end: ``/bc-authorize``, then the CIBA grant at ``/token``."""

    def __init__(self, http: httpx.AsyncClient, client_id: str, secret: str) -> None:
        self.http = http
        self.client_id = client_id
        self.auth = httpx.BasicAuth(client_id, secret)

    async def request(self, login_hint: str | None, **params: str) -> httpx.Response:
        data = {"scope": SCOPE, **params}
        if login_hint is not None:
            data["login_hint"] = login_hint
        return await self.http.post("/bc-authorize", data=data, auth=self.auth)

    async def start(self, login_hint: str, **params: str) -> dict[str, Any]:
        """A request the operator accepts: its ``auth_req_id``, ``expires_in``, ``interval``."""
        resp = await self.request(login_hint, **params)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        assert set(body) == {"auth_req_id", "expires_in", "interval"}, body
        return body

    async def poll(self, auth_req_id: str) -> httpx.Response:
        return await self.http.post(
            "/token",
            data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id},
            auth=self.auth,
        )


# ----------------------------------------------------------------------------- ping receiver
@dataclass
class ReceivedPing:
    method: str
    path: str
    authorization: str | None
    content_type: str | None
    body: Any  # the JSON body (None if it was not JSON)
    status: int | None = None  # what the receiver answered (None while held, or cut off)


@dataclass(frozen=True)
class Hold:
    """Hold the request until :meth:`PingReceiver.release` (or the receiver stops, or the
    sender goes away), then answer ``status``."""

    status: int = 204


Behaviour = int | Hold


class PingReceiver:
    """The client's notification endpoint: an aiohttp server on 127.0.0.1 that records every
    request and answers from a script (the last behaviour repeats, e.g. ``[503, 204]``).

    It can be stopped and started again on the same port (the endpoint down, then up)."""

    def __init__(self, port: int, *behaviours: Behaviour) -> None:
        self.port = port
        self.requests: list[ReceivedPing] = []
        self.arrived = asyncio.Event()  # set by every request as it arrives
        self._behaviours: list[Behaviour] = list(behaviours) or [204]
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> PingReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def script(self, *behaviours: Behaviour) -> None:
        self._behaviours = list(behaviours) or [204]

    def release(self) -> None:
        self._released.set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        # handler_cancellation: a sender that goes away (killed) frees a held handler.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._released = asyncio.Event()

    @property
    def delivered(self) -> list[ReceivedPing]:
        """The requests answered with 2xx."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    async def wait_delivered(self, count: int = 1, timeout: float = 30.0) -> list[ReceivedPing]:
        async with asyncio.timeout(timeout):
            while len(self.delivered) < count:
                await asyncio.sleep(0.02)
        return self.delivered

    async def wait_arrived(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                await asyncio.sleep(0.02)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        received = ReceivedPing(
            method=request.method,
            path=request.path,
            authorization=request.headers.get("Authorization"),
            content_type=request.headers.get("Content-Type"),
            body=body,
        )
        self.requests.append(received)
        self.arrived.set()
        behaviour = self._behaviours.pop(0) if len(self._behaviours) > 1 else self._behaviours[0]
        if isinstance(behaviour, Hold):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 120)
            status = behaviour.status
        else:
            status = behaviour
        received.status = status
        return web.Response(status=status)
