"""Every decision on a session, with its audit line exactly once.

A decision (approved, rejected, expired) is taken by one atomic store operation; the call that
takes it writes the log line an auditor counts ("session approved", "session rejected",
"session expired"). Two things can come between a decision and its line:

- the store's reply is lost (a stalled Redis runs the script after the caller gave up): the
  caller gave the operation a fresh nonce, recorded with the decision as ``decided_by``, and
  leaves a follow-up that reads the session once the store answers and writes the line if the
  decision carries its nonce. Only the caller knows the nonce, so the line is written once
  across every instance;
- the creation's reply is lost: nobody was told of the session, so a follow-up cancels it
  (:meth:`Store.cancel_session <idtoken.store.base.Store.cancel_session>`) before it can reach
  a phone or count against the limits.

See docs/architecture.md, "Lost replies".
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from idtoken import logs
from idtoken.clock import Clock
from idtoken.followups import Followups
from idtoken.metrics import Metrics
from idtoken.store.base import (
    RESULT_KEEP,
    Outcome,
    SessionRecord,
    Store,
    StoreUnavailable,
    Transition,
)

log = logging.getLogger("idtoken.login")
security = logging.getLogger("idtoken.security")

_LINES = {
    "approved": "session approved",
    "rejected": "session rejected",
    "expired": "session expired",
}


class Decisions:
    """Runs the store operations that decide sessions and writes their lines and figures."""

    def __init__(self, store: Store, clock: Clock, metrics: Metrics) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self.followups = Followups(clock)
        self._watchers: list[Callable[[SessionRecord], None]] = []

    def watch(self, watcher: Callable[[SessionRecord], None]) -> None:
        """Call ``watcher`` with every session this instance decides (CIBA pings)."""
        self._watchers.append(watcher)

    def _decided(self, session: SessionRecord) -> None:
        for watcher in self._watchers:
            watcher(session)

    async def decide(
        self, session: SessionRecord, op: Callable[[str], Awaitable[Transition]]
    ) -> Transition:
        """Run a store operation that may decide ``session``, giving it a fresh nonce to
        record as ``decided_by``. A lost reply leaves a follow-up that writes the decision's
        line if the operation did run; an expiry the operation made is logged here. The
        caller writes the line of the approval or rejection it asked for."""
        nonce = secrets.token_hex(8)
        try:
            t = await op(nonce)
        except StoreUnavailable:
            self._audit_later(session, nonce)
            raise
        if t.outcome is Outcome.EXPIRED and t.decided:
            self.expired(session)
        return t

    async def expire(self, session: SessionRecord) -> SessionRecord | None:
        """Expire ``session`` if its lifetime has passed (a socket's timer); returns the
        session as it now stands. The call that expired it writes the line."""
        nonce = secrets.token_hex(8)
        try:
            current = await self._store.expire(
                session.token_id, session.session_id, now=self._clock.now(), decided_by=nonce
            )
        except StoreUnavailable:
            self._audit_later(session, nonce)
            raise
        if current is not None and current.state == "expired" and current.decided_by == nonce:
            self.expired(current)
        return current

    def approved(self, session: SessionRecord, now: float) -> None:
        self._decided(session)
        self._metrics.approved.labels(session.service_id).inc()
        self._metrics.decision_seconds.labels(session.service_id).observe(now - session.created_at)
        logs.event(
            log, _LINES["approved"], session_id=session.session_id, service_id=session.service_id
        )

    def rejected(self, session: SessionRecord, reason: str, now: float, **fields: Any) -> None:
        self._decided(session)
        self._metrics.rejected.labels(session.service_id, reason).inc()
        self._metrics.decision_seconds.labels(session.service_id).observe(now - session.created_at)
        logs.event(
            log,
            _LINES["rejected"],
            session_id=session.session_id,
            service_id=session.service_id,
            reason=reason,
            **fields,
        )

    def ended_with(self, session_id: str, service_id: str, reason: str, *, ended_by: str) -> None:
        """The line of a session a fraud report ended along with its own (``ended_by``)."""
        self._metrics.rejected.labels(service_id, reason).inc()
        logs.event(
            log,
            _LINES["rejected"],
            session_id=session_id,
            service_id=service_id,
            reason=reason,
            ended_by=ended_by,
        )

    def expired(self, session: SessionRecord) -> None:
        self._decided(session)
        self._metrics.expired.labels(session.service_id).inc()
        logs.event(
            log, _LINES["expired"], session_id=session.session_id, service_id=session.service_id
        )

    def cancel_later(self, session: SessionRecord) -> None:
        """The creation's reply was lost, so it may have run. End the session, or forbid it,
        as soon as the store answers."""
        keep = int(session.expires_at - session.created_at) + RESULT_KEEP

        async def cancel() -> None:
            if await self._store.cancel_session(session.token_id, session.session_id, keep=keep):
                log.info(
                    "session cancelled after a lost store reply",
                    extra={"session_id": session.session_id, "service_id": session.service_id},
                )

        self.followups.spawn("cancel_session", cancel, until=session.expires_at)

    def _audit_later(self, session: SessionRecord, nonce: str) -> None:
        async def check() -> None:
            found = await self._store.get_session(session.token_id, session.session_id)
            if found is None or found.decided_by != nonce or found.state not in _LINES:
                return
            fields: dict[str, Any] = {}
            if found.state == "rejected" and found.result is not None:
                fields["reason"] = json.loads(found.result).get("reason")
                if fields["reason"] == "Not me":
                    security.warning(
                        "fraud report: user says the login was not theirs",
                        extra={
                            "session_id": session.session_id,
                            "service_id": session.service_id,
                            "after_lost_reply": True,
                        },
                    )
            self._decided(found)
            logs.event(
                log,
                _LINES[found.state],
                session_id=session.session_id,
                service_id=session.service_id,
                after_lost_reply=True,
                **fields,
            )

        self.followups.spawn("audit", check, until=session.expires_at + RESULT_KEEP)
