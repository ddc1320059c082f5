"""Fire-and-track pushes: the HTTP response never waits for a push service.

``/auth/initiate`` must answer within a second whatever the push service does (catalogue P06),
so a push runs as a background task. The dispatcher keeps a strong reference to every task
(the event loop only keeps weak ones, so an unreferenced task can vanish mid-flight), logs
what the task raises instead of letting it disappear as "exception never retrieved", and at
shutdown waits briefly, then cancels and awaits what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from idtoken.push.base import Notifier, PushResult, PushSubscription

logger = logging.getLogger("idtoken.push")

ResultCallback = Callable[[str, PushSubscription, PushResult], Awaitable[None]]


class PushDispatcher:
    """Runs pushes as tracked background tasks so a slow push service never delays an HTTP
    response."""

    def __init__(self, notifier: Notifier, *, on_result: ResultCallback | None = None) -> None:
        self._notifier = notifier
        self._on_result = on_result
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def dispatch(
        self,
        key: str,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        deadline: float,
    ) -> None:
        """Start a push and return at once; must be called from the running event loop.

        ``key`` (the session id) names the push in logs and is passed to ``on_result``, which
        is awaited once the push has ended (for example to mark a dead subscription). After
        :meth:`aclose` the push is dropped with a warning.
        """
        if self._closed:
            logger.warning("push for %s dropped: the dispatcher is closed", key)
            return
        # Copy now: the caller may reuse its dict while the task is still waiting to run.
        task = asyncio.get_running_loop().create_task(
            self._run(key, subscription, dict(payload), ttl=ttl, topic=topic, deadline=deadline),
            name=f"idtoken-push:{key}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def in_flight(self) -> int:
        """Pushes started and not yet finished (including their ``on_result`` callback)."""
        return len(self._tasks)

    async def _run(
        self,
        key: str,
        subscription: PushSubscription,
        payload: Mapping[str, Any],
        *,
        ttl: int,
        topic: str,
        deadline: float,
    ) -> None:
        try:
            result = await self._notifier.send(
                subscription, payload, ttl=ttl, topic=topic, deadline=deadline
            )
        except Exception:
            logger.exception("push for %s to %s crashed", key, subscription.origin)
            return
        if self._on_result is None:
            return
        try:
            await self._on_result(key, subscription, result)
        except Exception:
            logger.exception("push result handler for %s failed", key)

    # The name `timeout` is part of the API other modules call; it bounds a wait, not the call.
    async def aclose(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` seconds for pushes in flight, cancel the rest, close the notifier.

        Every task has finished when this returns; none is left pending on the loop.
        """
        self._closed = True
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            logger.info("cancelled %d push(es) at shutdown", len(pending))
        await self._notifier.aclose()
