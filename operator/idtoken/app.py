"""The application factory: settings in, a Starlette app out. No import-time globals."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from idtoken.api import ciba as ciba_api
from idtoken.api import health, mobile, openapi, root, rp, wellknown, ws
from idtoken.api import oidc as oidc_api
from idtoken.api.responses import EXCEPTION_HANDLERS
from idtoken.api.runtime import Runtime
from idtoken.clock import Clock, SystemClock
from idtoken.enrollment.issuers import load_static_issuer
from idtoken.enrollment.kyc import KycIssuer, load_kyc_issuer
from idtoken.enrollment.service import EnrollmentIssuer, EnrollmentService
from idtoken.errors import ConfigError
from idtoken.keys import signing
from idtoken.login import LoginService
from idtoken.logs import install_redaction
from idtoken.metrics import Metrics
from idtoken.oidc.ciba import Backchannel
from idtoken.oidc.ping import PingDelivery
from idtoken.oidc.runtime import OidcGrants, OidcRuntime
from idtoken.oidc.secret import SecretError, load_or_create_secret
from idtoken.push.base import Notifier, PushResult, PushSubscription
from idtoken.push.dispatch import PushDispatcher
from idtoken.push.vapid import load_or_create_vapid_key, vapid_public_key_b64
from idtoken.push.webpush import WebPushNotifier
from idtoken.settings import Settings
from idtoken.store.base import Store
from idtoken.store.factory import open_store

log = logging.getLogger("idtoken")


def load_issuers(
    settings: Settings,
    *,
    now: float | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
) -> Mapping[str, EnrollmentIssuer]:
    """Load every configured issuer; a bad one raises ConfigError naming it.

    Integration servers' keys are read and checked now. KYC providers get a RemoteJwks that
    fetches on first use; ``store`` lets it share keys and its cooldown with other instances
    (without one, as in ``check-config``, it is this process's alone).
    """
    moment = time.time() if now is None else now
    issuers: dict[str, EnrollmentIssuer] = {}
    for i, issuer in enumerate(settings.enrollment_issuers):
        if issuer.format == "uqudo":
            issuers[issuer.issuer] = load_kyc_issuer(
                i, issuer, settings.enrollment, store=store, clock=clock or SystemClock()
            )
        else:
            issuers[issuer.issuer] = load_static_issuer(i, issuer, now=moment)
    return issuers


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    notifier: Notifier | None = None,
    clock: Clock | None = None,
) -> Starlette:
    """Build the operator. Keys and issuer keys are loaded here, so a bad configuration fails
    before the server listens; connections open in the lifespan."""
    install_redaction()
    clock = clock or SystemClock()
    store = store or open_store(settings, clock)
    keys = signing.load_or_create(
        settings.keys_dir, clock=clock, keep_after_retire=signing.keep_after_retire(settings)
    )
    issuers = load_issuers(settings, now=clock.now(), store=store, clock=clock)
    vapid_key = load_or_create_vapid_key(settings.push.vapid_private_key_file)
    if notifier is None:
        notifier = WebPushNotifier(
            vapid_key,
            settings.push.vapid_subject,
            clock=clock,
            endpoint_policy=settings.push.endpoint_policy,
        )

    async def on_push_result(
        session_id: str, subscription: PushSubscription, result: PushResult
    ) -> None:
        await login.push_finished(session_id, subscription, result)

    metrics = Metrics()
    dispatcher = PushDispatcher(notifier, on_result=on_push_result)
    try:
        secret = load_or_create_secret(settings.oidc.secret_key_file)
    except SecretError as exc:
        raise ConfigError("oidc.secret_key_file", str(exc)) from None
    grants = OidcGrants(settings, keys, secret)
    login = LoginService(
        settings, store, keys, secret, clock, dispatcher, metrics, grant_makers=grants.makers()
    )
    oidc = OidcRuntime(settings, store, clock, grants, login, metrics)
    ciba = Backchannel(settings, store, clock, login, grants.tokens, secret, metrics)
    pings = PingDelivery(
        settings, store, clock, login, ciba, metrics, settings.push.endpoint_policy
    )
    rt = Runtime(
        settings=settings,
        clock=clock,
        store=store,
        keys=keys,
        login=login,
        enrollment=EnrollmentService(settings, store, keys, issuers, clock, metrics),
        dispatcher=dispatcher,
        vapid_public_key=vapid_public_key_b64(vapid_key),
        metrics=metrics,
        secret=secret,
        oidc=oidc,
        ciba=ciba,
    )
    rt.discovery_body = wellknown.discovery_document(settings, rt.vapid_public_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rt.store.start()
        await oidc.start()
        await pings.start()
        if settings.demo.enabled:  # said as the server starts, not by each build of the app
            log.warning("demo pages enabled at /demo/: never enable [demo] in production")
        try:
            yield
        finally:
            await pings.aclose()
            await oidc.aclose()
            await dispatcher.aclose()
            # Cancellations and audit lines owed after lost store replies get a moment.
            await login.followups.drain(timeout=2.0)
            for issuer in issuers.values():
                if isinstance(issuer, KycIssuer):
                    await issuer.jwks.aclose()
            await rt.store.aclose()

    routes: list[BaseRoute] = [
        Route("/auth/initiate", rp.initiate, methods=["POST"]),
        Route("/enroll", mobile.enroll, methods=["POST"]),
        Route("/auth/verify", mobile.verify, methods=["POST"]),
        Route("/auth/reject", mobile.reject, methods=["POST"]),
        Route("/auth/pending", mobile.pending, methods=["POST"]),
        Route("/device/subscription", mobile.device_subscription, methods=["POST"]),
        Route("/authorize", oidc_api.authorize, methods=["GET", "POST"]),
        Route("/authorize/session", oidc_api.authorize_session, methods=["POST"]),
        Route("/authorize/complete", oidc_api.authorize_complete, methods=["POST"]),
        Route("/authorize/static/{name}", oidc_api.authorize_static, methods=["GET"]),
        Route("/token", oidc_api.with_cors(oidc_api.token), methods=["POST"]),
        Route("/token", oidc_api.preflight, methods=["OPTIONS"]),
        Route("/userinfo", oidc_api.with_cors(oidc_api.userinfo), methods=["GET", "POST"]),
        Route("/userinfo", oidc_api.preflight, methods=["OPTIONS"]),
        Route("/bc-authorize", ciba_api.bc_authorize, methods=["POST"]),
        Route("/.well-known/jwks.json", wellknown.jwks, methods=["GET", "HEAD"]),
        Route(
            "/.well-known/openid-configuration",
            wellknown.openid_configuration,
            methods=["GET", "HEAD"],
        ),
        WebSocketRoute("/ws/session/{session_id}", ws.session_socket),
        Route("/healthz", health.healthz, methods=["GET", "HEAD"]),
        Route("/readyz", health.readyz, methods=["GET", "HEAD"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/", root.root, methods=["GET", "HEAD"]),
    ]
    if settings.demo.enabled:
        # Development only: the demo pages and the demo issuer's token minting.
        from idtoken.demo.routes import demo_routes

        routes += demo_routes()
    app = OperatorApp(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.runtime = rt
    return app


Endpoint = Callable[[Request], Awaitable[Response]]


class OperatorApp(Starlette):
    """Starlette, with two shortcuts taken before its middleware and router:

    - GET/HEAD of the well-known documents (see :func:`idtoken.api.wellknown.serve_fast`);
    - POST to the API's endpoints (``/auth/initiate``, ``/auth/verify``, ...), looked up by
      exact path and run with the same exception handlers. The app has no middleware of its
      own, so the result is the same; what is skipped is the generic machinery (two
      exception-handling wrappers, the route scan, a second ``Request``), a fifth of the
      cost of the busiest requests. Any other method or path goes through Starlette.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._posts: dict[str, Endpoint] = {
            route.path: route.endpoint
            for route in self.router.routes
            if isinstance(route, Route)
            and route.methods == {"POST"}
            and "{" not in route.path
            and inspect.iscoroutinefunction(route.endpoint)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST":
                endpoint = self._posts.get(scope["path"])
                if endpoint is not None:
                    await self._post(endpoint, scope, receive, send)
                    return
            elif await wellknown.serve_fast(self.state.runtime, scope, send):
                return
        await super().__call__(scope, receive, send)

    async def _post(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            # The app's own handlers, looked up by the exception's class as Starlette does.
            handlers = self.exception_handlers
            kind = next((k for k in type(exc).__mro__ if k in handlers), None)
            if kind is None:
                raise
            response = await handlers[kind](request, exc)
        await response(scope, receive, send)
