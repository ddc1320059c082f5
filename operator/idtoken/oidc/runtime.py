"""Everything the OpenID Connect and CIBA endpoints use, built once by the app factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from idtoken.clock import Clock
from idtoken.doors import GrantMaker
from idtoken.errors import TemporarilyUnavailable
from idtoken.keys.signing import SigningKeys
from idtoken.login import LoginService
from idtoken.metrics import Metrics
from idtoken.oidc.clients import ClientAuthenticator
from idtoken.oidc.exchange import TokenExchange
from idtoken.oidc.grants import CibaGrants, CodeGrants
from idtoken.oidc.hosted import HostedLogin
from idtoken.oidc.secret import OperatorSecret
from idtoken.oidc.tokens import TokenIssuer
from idtoken.settings import Settings
from idtoken.store.base import SessionKind, Store, StoreUnavailable

log = logging.getLogger("idtoken.oidc")

FINGERPRINT_NAME = "operator"
_CHECK_RETRY = 5.0


class OidcGrants:
    """The first half, which the login engine needs before it exists: the grant makers."""

    def __init__(self, settings: Settings, keys: SigningKeys, secret: OperatorSecret) -> None:
        self.secret = secret
        self.tokens = TokenIssuer(settings.issuer, keys, secret)
        self.codes = CodeGrants(self.tokens, secret, settings.oidc.code_ttl)
        self.ciba = CibaGrants(self.tokens)

    def makers(self) -> dict[SessionKind, GrantMaker]:
        return {"oidc": self.codes, "ciba": self.ciba}


class OidcRuntime:
    """The second half: the endpoints' collaborators, on top of the login engine."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        grants: OidcGrants,
        login: LoginService,
        metrics: Metrics,
    ) -> None:
        self.grants = grants
        self.tokens = grants.tokens
        self.clients = ClientAuthenticator(settings.services, store, clock, metrics)
        self.exchange = TokenExchange(settings, store, clock, grants.tokens, metrics)
        self.hosted = HostedLogin(settings, login, store, grants.secret, grants.codes, clock)
        self._store = store
        # None until the store answered; then whether the secret is the one others use.
        self._shared: bool | None = None
        self._checker: asyncio.Task[None] | None = None

    # ---- the operator secret is the same on every instance ---------------------------------
    async def start(self) -> None:
        """Check the operator secret against the one the other instances use; if the store
        does not answer, keep trying in the background."""
        if not await self._check_once():
            self._checker = asyncio.get_running_loop().create_task(self._keep_checking())

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker

    async def _check_once(self) -> bool:
        try:
            recorded = await self._store.register_secret(
                FINGERPRINT_NAME, self.grants.secret.fingerprint
            )
        except StoreUnavailable:
            return False
        self._shared = recorded == self.grants.secret.fingerprint
        if not self._shared:
            log.error(
                "the operator secret differs from the one the other instances use: copy their "
                "oidc.secret_key_file here (or, to change it on purpose, run "
                "'idtoken-operator secret adopt'); OpenID Connect and CIBA answer 503 meanwhile"
            )
        return True

    async def _keep_checking(self) -> None:
        checked = False
        while not checked:
            await asyncio.sleep(_CHECK_RETRY)
            checked = await self._check_once()

    def require_secret(self) -> None:
        """Refuse to hand out or read sealed values under a secret other instances do not
        share: pairwise subjects would differ from one instance to the next."""
        if self._shared is False:
            raise TemporarilyUnavailable("the service is misconfigured", retry_after=60)
