"""Enrollment: bind a verified identity to a device key and hand the phone its credential."""

from __future__ import annotations

import datetime
import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from idtoken import jose
from idtoken.clock import Clock
from idtoken.device_messages import enroll_message
from idtoken.enrollment.assertion import (
    MAX_TOKEN_LENGTH,
    Assertion,
    invalid,
    issuer_of,
    verify_integration_jwt,
)
from idtoken.enrollment.credential import issue_credential
from idtoken.enrollment.issuers import StaticIssuer
from idtoken.enrollment.kyc import KycIssuer, verify_kyc_jws
from idtoken.errors import (
    InvalidRequest,
    InvalidSignature,
    OperatorError,
    TokenConflict,
    TokenReplayed,
    TokenRevokedAtEnrollment,
    TooManyRequests,
)
from idtoken.keys.device import (
    DeviceKeyError,
    jwk_thumbprint,
    load_device_public_key,
    public_jwk,
    verify_device_signature,
)
from idtoken.keys.signing import SigningKeys
from idtoken.metrics import Metrics
from idtoken.settings import Settings
from idtoken.store.base import DeviceRecord, EnrollStatus, Store

EnrollmentIssuer = StaticIssuer | KycIssuer
"""An issuer that may enroll devices: an integration server (static key) or a KYC provider."""

log = logging.getLogger("idtoken.enrollment")
security = logging.getLogger("idtoken.security")


@dataclass(frozen=True)
class EnrollRequest:
    enrollment_token: str
    public_key_pem: str
    device_id: str
    push_subscription: Mapping[str, Any] | None
    timestamp: int
    signature: str
    client_ip: str


@dataclass(frozen=True)
class Enrolled:
    token_id: str
    device_id: str
    expires_at: int
    credential: str


class EnrollmentService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: SigningKeys,
        issuers: Mapping[str, EnrollmentIssuer],
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._store = store
        self._keys = keys
        self._issuers = issuers
        self._clock = clock

    async def enroll(self, req: EnrollRequest) -> Enrolled:
        """Enroll, counting the outcome per issuer (``idtoken_enrollments_total``)."""
        seen: dict[str, str] = {}
        try:
            done = await self._enroll(req, seen)
        except OperatorError as exc:
            self._metrics.enrollments.labels(seen.get("issuer", "unknown"), exc.code).inc()
            raise
        self._metrics.enrollments.labels(seen["issuer"], seen["outcome"]).inc()
        return done

    async def _enroll(self, req: EnrollRequest, seen: dict[str, str]) -> Enrolled:
        now = self._clock.now()
        limits = self._settings.limits
        wait = await self._store.hit(
            f"enroll:{req.client_ip}", limit=limits.enroll_per_ip_per_hour, window=3600, now=now
        )
        if wait:
            raise TooManyRequests("too many enrollments from this address", retry_after=wait)
        try:
            device_key = load_device_public_key(req.public_key_pem)
        except DeviceKeyError as exc:
            raise InvalidRequest(
                "publicKeyPem must be a P-256 public key in SPKI PEM form", log_detail=exc.reason
            ) from exc
        if abs(now * 1000 - req.timestamp) > limits.timestamp_skew * 1000:
            raise InvalidSignature("timestamp outside the allowed window")
        message = enroll_message(req.device_id, req.timestamp, req.enrollment_token)
        try:
            verify_device_signature(device_key, message, req.signature)
        except DeviceKeyError as exc:
            security.info("enroll signature refused", extra={"reason": exc.reason})
            raise InvalidSignature("the signature does not verify") from exc

        assertion = await self._verify_token(req.enrollment_token, now, seen)
        token_id = assertion.subject or ("tok_" + secrets.token_urlsafe(16))
        exp = int(now) + self._settings.enrollment.credential_max_age
        if assertion.document_expiry is not None:
            doc_end = datetime.datetime.combine(
                assertion.document_expiry, datetime.time.max, tzinfo=datetime.UTC
            )
            exp = min(exp, int(doc_end.timestamp()))
        jwk = public_jwk(device_key)
        credential, cred_jti = issue_credential(
            self._keys,
            issuer=self._settings.issuer,
            token_id=token_id,
            source=assertion.issuer,
            trust_level=assertion.trust_level,
            claims={**assertion.claims, "trustLevel": assertion.trust_level},
            device_jwk=jwk,
            now=now,
            exp=exp,
        )
        record = DeviceRecord(
            token_id=token_id,
            issuer=assertion.issuer,
            device_id=req.device_id,
            public_jwk=jwk,
            key_thumbprint=jwk_thumbprint(jwk),
            credential_jti=cred_jti,
            credential_exp=exp,
            enrolled_at=now,
            push_subscription=req.push_subscription,
        )
        replay_id = hashlib.sha256(f"{assertion.issuer}\n{assertion.jti}".encode()).hexdigest()
        replay_ttl = int(assertion.exp + self._settings.enrollment.leeway - now) + 1
        # Single use is keyed on iss + jti alone (catalogue E01), across every token: the same
        # jti with another `sub`, and every reuse of a KYC result (which gets a fresh tokenId
        # each time), is a replay. store.enroll claims it together with the write, so an
        # enrollment the store could not complete leaves the token usable for a retry.
        status = await self._store.enroll(record, replay_id=replay_id, replay_ttl=replay_ttl)
        if status is EnrollStatus.REPLAYED:
            self._replayed(assertion)
        if status is EnrollStatus.CONFLICT:
            raise TokenConflict("this token is enrolled through another issuer")
        if status is EnrollStatus.REVOKED:
            raise TokenRevokedAtEnrollment("this token has been revoked")
        seen["outcome"] = status.value
        log.info(
            "device enrolled",
            extra={"issuer": assertion.issuer, "replaced": status is EnrollStatus.REPLACED},
        )
        return Enrolled(
            token_id=token_id, device_id=req.device_id, expires_at=exp, credential=credential
        )

    @staticmethod
    def _replayed(assertion: Assertion) -> NoReturn:
        security.warning("enrollment token replayed", extra={"issuer": assertion.issuer})
        raise TokenReplayed("this enrollment token has already been used")

    async def _verify_token(self, token: str, now: float, seen: dict[str, str]) -> Assertion:
        try:
            jws = jose.parse_compact(token, max_length=MAX_TOKEN_LENGTH)
        except jose.JoseError as exc:
            raise invalid(exc.reason) from exc
        iss = issuer_of(jws)
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise invalid("unknown_issuer")
        seen["issuer"] = iss  # a configured issuer: bounded label values
        enrollment = self._settings.enrollment
        if isinstance(issuer, KycIssuer):
            assertion = await verify_kyc_jws(
                jws,
                issuer,
                now=now,
                leeway=enrollment.leeway,
                max_lifetime=enrollment.max_token_lifetime,
            )
        else:
            assertion = verify_integration_jwt(
                jws,
                issuer,
                now=now,
                leeway=enrollment.leeway,
                max_lifetime=enrollment.max_token_lifetime,
            )
        if (
            assertion.document_expiry is not None
            and assertion.document_expiry
            < datetime.datetime.fromtimestamp(now, tz=datetime.UTC).date()
        ):
            raise invalid("document_expired")
        return assertion
