"""Time as a dependency: the system clock in production, a settable clock in tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the Unix epoch (float)."""

    def now(self) -> float: ...


class SystemClock:
    """The machine's wall clock. Instances sharing a store are expected to be NTP-synchronised."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def now(self) -> float:
        return self._now

    def set(self, value: float) -> None:
        self._now = value

    def advance(self, seconds: float) -> None:
        self._now += seconds
