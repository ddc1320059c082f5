"""Work left for when the store answers again, after a write whose reply was lost.

A store call that fails with :class:`~idtoken.store.base.StoreUnavailable` may still have run:
a stalled Redis executes the queued script once it resumes, after the caller gave up. The
caller cannot wait for that (it has answered 503), so it leaves a follow-up here: a small task
that retries one idempotent store operation with backoff until it succeeds or its deadline
passes (after which what it would settle has expired on its own). Follow-ups are bounded in
number: beyond the bound a new one is dropped with an error line, so a long outage cannot
grow memory without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from idtoken.clock import Clock
from idtoken.store.base import StoreUnavailable

log = logging.getLogger("idtoken.store")

MAX_FOLLOWUPS = 10_000
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0


class Followups:
    """Background retries of idempotent store operations (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, what: str, op: Callable[[], Awaitable[None]], *, until: float) -> None:
        """Run ``op`` until it returns without :class:`StoreUnavailable`, or ``until``."""
        if len(self._tasks) >= MAX_FOLLOWUPS:
            log.error(
                "too many follow-ups after lost store replies; dropped one", extra={"op": what}
            )
            return
        task = asyncio.get_running_loop().create_task(self._run(what, op, until))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, what: str, op: Callable[[], Awaitable[None]], until: float) -> None:
        delay = _FIRST_DELAY
        while True:
            await asyncio.sleep(delay)
            try:
                await op()
                return
            except StoreUnavailable:
                if self._clock.now() >= until:
                    log.warning("follow-up after a lost store reply gave up", extra={"op": what})
                    return
                delay = min(delay * 2, _MAX_DELAY)

    async def drain(self, timeout: float) -> None:
        """Give running follow-ups ``timeout`` seconds (at shutdown), then cancel them."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __len__(self) -> int:
        return len(self._tasks)
