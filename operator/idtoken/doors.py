"""The front doors onto the login engine.

``/auth/initiate`` (the IDToken protocol) is the engine's own door. OpenID Connect's hosted
login page and OpenID CIBA start the same sessions through :meth:`LoginService.initiate
<idtoken.login.LoginService.initiate>` with a :class:`Door`, and say what an approval stores
for them with a :class:`GrantMaker`; the push, the phone's signed approval, the limits and the
store's atomic state changes are the same for every door.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from idtoken.enrollment.credential import Credential
from idtoken.settings import ServiceSettings
from idtoken.store.base import SessionKind, SessionRecord


@dataclass(frozen=True)
class Door:
    """How a front door other than ``/auth/initiate`` shapes the session it starts."""

    kind: SessionKind
    front: str | None = None  # the door's own request, as text only it reads
    binding_message: str | None = None
    min_trust_level: int = 0
    grant_hash: str | None = None


IDTOKEN_DOOR = Door("idtoken")


@dataclass(frozen=True)
class Approval:
    """What an approval stores: the browser socket's terminal message and, for the doors
    that collect the result later (code exchange, CIBA), the fields kept with it."""

    final: str
    grant: Mapping[str, str] = field(default_factory=dict)


class GrantMaker(Protocol):
    """Builds the approval of one kind of session (OpenID Connect, CIBA)."""

    def approval(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
    ) -> Approval: ...
