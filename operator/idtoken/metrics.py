"""Prometheus metrics.

Each app owns a :class:`Metrics` with its own registry, so tests can run several operators in
one process. With several workers (``serve --workers N``) the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start; prometheus-client then keeps values in
shared files and ``/metrics`` aggregates every worker's.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_HUMAN = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.initiated = Counter(
            "idtoken_sessions_initiated_total", "Sessions created", ["service"], registry=r
        )
        self.approved = Counter(
            "idtoken_sessions_approved_total", "Sessions approved", ["service"], registry=r
        )
        self.rejected = Counter(
            "idtoken_sessions_rejected_total",
            "Sessions rejected, by reason",
            ["service", "reason"],
            registry=r,
        )
        self.expired = Counter(
            "idtoken_sessions_expired_total",
            "Sessions that expired undecided",
            ["service"],
            registry=r,
        )
        self.initiate_seconds = Histogram(
            "idtoken_initiate_seconds",
            "POST /auth/initiate handling time",
            buckets=_LATENCY,
            registry=r,
        )
        self.verify_seconds = Histogram(
            "idtoken_verify_seconds",
            "POST /auth/verify handling time",
            buckets=_LATENCY,
            registry=r,
        )
        self.decision_seconds = Histogram(
            "idtoken_decision_seconds",
            "Time from initiate to the user's decision",
            ["service"],
            buckets=_HUMAN,
            registry=r,
        )
        self.open_sockets = Gauge(
            "idtoken_open_sockets",
            "Browser sockets currently open",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pushes = Counter(
            "idtoken_push_total", "Web Push deliveries, by outcome", ["outcome"], registry=r
        )
        self.push_seconds = Histogram(
            "idtoken_push_seconds",
            "Time from initiate to the push service's final answer",
            buckets=(*_LATENCY, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.enrollments = Counter(
            "idtoken_enrollments_total",
            "Enrollment attempts, by issuer and outcome",
            ["issuer", "outcome"],
            registry=r,
        )
        self.store_errors = Counter(
            "idtoken_store_errors_total",
            "Requests that failed because the store was unreachable",
            registry=r,
        )
        self.client_auth_failures = Counter(
            "idtoken_client_auth_failures_total",
            "Failed client authentications (initiate, token and backchannel endpoints)",
            registry=r,
        )
        self.tokens_issued = Counter(
            "idtoken_oidc_tokens_total",
            "Token responses handed out at the token endpoint, by grant type",
            ["grant_type"],
            registry=r,
        )
        self.pings = Counter(
            "idtoken_ciba_pings_total",
            "CIBA ping notifications, by outcome (delivered, retried, gave_up)",
            ["outcome"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text format of every metric (of every worker in multi-process mode)."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
