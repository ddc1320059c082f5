"""In-process fan-out of session events to the sockets this process serves."""

from __future__ import annotations

import logging
from collections.abc import Callable

from idtoken.store.base import Event, EventCallback

log = logging.getLogger("idtoken.store")


class LocalListeners:
    """Session id -> callbacks. Callbacks run synchronously and must not block."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[EventCallback]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_session.values())

    def add(self, session_id: str, callback: EventCallback) -> Callable[[], None]:
        self._by_session.setdefault(session_id, set()).add(callback)

        def remove() -> None:
            callbacks = self._by_session.get(session_id)
            if callbacks is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._by_session[session_id]

        return remove

    def dispatch(self, event: Event) -> None:
        for callback in list(self._by_session.get(event.session_id, ())):
            self._call(callback, event.session_id, event)

    def resync_all(self) -> None:
        """Tell every listener that events may have been missed and state must be re-read."""
        for session_id, callbacks in list(self._by_session.items()):
            for callback in list(callbacks):
                self._call(callback, session_id, None)

    @staticmethod
    def _call(callback: EventCallback, session_id: str, event: Event | None) -> None:
        try:
            callback(session_id, event)
        except Exception:  # a broken listener must not starve the others
            log.exception("session event listener failed", extra={"session_id": session_id})
