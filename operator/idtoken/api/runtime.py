"""The collaborators that endpoints use, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from idtoken.clock import Clock
from idtoken.enrollment.service import EnrollmentService
from idtoken.keys.signing import SigningKeys
from idtoken.login import LoginService
from idtoken.metrics import Metrics
from idtoken.oidc.ciba import Backchannel
from idtoken.oidc.runtime import OidcRuntime
from idtoken.oidc.secret import OperatorSecret
from idtoken.push.dispatch import PushDispatcher
from idtoken.settings import Settings
from idtoken.store.base import Store


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    store: Store
    keys: SigningKeys
    login: LoginService
    enrollment: EnrollmentService
    dispatcher: PushDispatcher | None
    vapid_public_key: str
    metrics: Metrics
    secret: OperatorSecret
    oidc: OidcRuntime | None = None
    ciba: Backchannel | None = None
    discovery_body: bytes = b""


def runtime(conn: HTTPConnection) -> Runtime:
    rt: Runtime = conn.app.state.runtime
    return rt
