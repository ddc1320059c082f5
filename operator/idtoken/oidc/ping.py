"""CIBA ping mode (CIBA Core §10.2): tell the client its request is decided.

The notification is ``POST`` of ``{"auth_req_id": …}`` with ``Authorization: Bearer
<client_notification_token>`` to the client's registered endpoint: https (plain http on
loopback only), its addresses judged by the push address policy (``push.allow_private_networks``)
where the connection is made, no redirects followed, each attempt bounded by ``[oidc]
ping_timeout``. Any 2xx is delivered; anything else is retried with backoff until ``[oidc]
ping_retry_seconds`` after the decision.

It survives the instance that took the decision: every ping-mode request is in the store's
outbox from its creation (:meth:`Store.schedule_ping <idtoken.store.base.Store.schedule_ping>`),
and every instance sweeps the outbox. A pending request is looked at again every few seconds;
a decided one is delivered by whichever instance claims it first (a lease of one attempt), so a
killed instance's delivery is taken over once its lease ends. The instance that takes the
decision delivers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlsplit

import aiohttp

from idtoken.clock import Clock
from idtoken.login import LoginService
from idtoken.metrics import Metrics
from idtoken.oidc.ciba import PENDING_RECHECK, Backchannel, BackchannelRequest
from idtoken.oidc.secret import SealError
from idtoken.push.webpush import PolicyResolver, RefusedAddress
from idtoken.settings import Settings
from idtoken.store.base import SessionRecord, Store, StoreUnavailable
from idtoken.urls import AddressPolicy

log = logging.getLogger("idtoken.oidc")

SWEEP_SECONDS = 1.0
_BATCH = 50


def backoff(since_decision: float) -> float:
    """Seconds to the next attempt: as long as the time since the decision (so the gaps
    double), from 1 s to at most 30 s."""
    return min(30.0, max(1.0, since_decision))


class PingDelivery:
    """Delivers the ping outbox; see the module docstring. One per instance."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        login: LoginService,
        backchannel: Backchannel,
        metrics: Metrics,
        policy: AddressPolicy,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._login = login
        self._backchannel = backchannel
        self._metrics = metrics
        self._policy = policy
        self._timeout = settings.oidc.ping_timeout
        self._lease = settings.oidc.ping_timeout + 5.0
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._resolver: PolicyResolver | None = None
        login.decisions.watch(self._decided)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def aclose(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sweeper = None
        if self._http is not None:
            await self._http.close()
        if self._resolver is not None:
            await self._resolver.close()

    # ---- when this instance decides ---------------------------------------------------------
    def _decided(self, session: SessionRecord) -> None:
        if session.kind != "ciba" or session.front is None:
            return
        if BackchannelRequest.from_json(session.front).mode != "ping":
            return
        task = asyncio.get_running_loop().create_task(self._now(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _now(self, session: SessionRecord) -> None:
        with contextlib.suppress(StoreUnavailable):  # the sweep will find it
            now = self._clock.now()
            await self._store.schedule_ping(
                session.token_id, session.session_id, at=now, queued_only=True
            )
            await self.attempt(session.token_id, session.session_id)

    # ---- the outbox -------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.sweep()
            await asyncio.sleep(SWEEP_SECONDS)

    async def sweep(self) -> None:
        """Attempt every ping that is due now."""
        for token_id, session_id in await self._store.due_pings(
            now=self._clock.now(), limit=_BATCH
        ):
            await self.attempt(token_id, session_id)

    async def attempt(self, token_id: str, session_id: str) -> None:
        """Deliver the session's ping if this instance claims it; reschedule otherwise."""
        now = self._clock.now()
        if not await self._store.claim_ping(token_id, session_id, now=now, until=now + self._lease):
            return
        session = await self._store.get_session(token_id, session_id)
        if session is None or session.kind != "ciba" or session.front is None:
            await self._store.ping_done(token_id, session_id)
            return
        request = BackchannelRequest.from_json(session.front)
        if session.state == "pending" and now >= session.expires_at:
            # The expiry is a decision: whoever took it delivers (``_decided``), else a sweep
            # once this lease ends. Delivering here too would ping twice.
            await self._login.expire(session)
            return
        if session.state == "pending":
            again = min(session.expires_at, now + PENDING_RECHECK)
            await self._store.schedule_ping(token_id, session_id, at=again, queued_only=True)
            return
        client = self._settings.services.get(request.client_id)
        endpoint = client.backchannel_client_notification_endpoint if client else None
        try:
            notification = self._backchannel.notification_of(session_id, request)
        except SealError:
            notification = None
        if endpoint is None or notification is None:
            await self._store.ping_done(token_id, session_id)
            return
        since = now - (session.decided_at or now)
        if await self._post(endpoint, *notification):
            await self._store.ping_done(token_id, session_id)
            self._metrics.pings.labels("delivered").inc()
            log.info(
                "ping delivered",
                extra={"session_id": session_id, "client_id": client.id if client else ""},
            )
        elif since >= self._settings.oidc.ping_retry_seconds:
            await self._store.ping_done(token_id, session_id)
            self._metrics.pings.labels("gave_up").inc()
            log.warning("ping not delivered; gave up", extra={"session_id": session_id})
        else:
            await self._store.schedule_ping(
                token_id, session_id, at=now + backoff(since), queued_only=True
            )
            self._metrics.pings.labels("retried").inc()

    async def _post(self, endpoint: str, auth_req_id: str, token: str) -> bool:
        if self._http is None:  # on first use, so that it belongs to the running loop
            self._resolver = PolicyResolver(self._policy)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
            )
        if self._policy.refuses_literal(urlsplit(endpoint).hostname or ""):
            log.warning("ping refused: the endpoint is not an address the push policy allows")
            return False
        body = json.dumps({"auth_req_id": auth_req_id}, separators=(",", ":"))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.post(
                    endpoint, data=body, headers=headers, allow_redirects=False
                ) as response:
                    return 200 <= response.status < 300  # the body is not read
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                log.warning("ping refused: the endpoint resolves to no allowed address")
            return False
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
