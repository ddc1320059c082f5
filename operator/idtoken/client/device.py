"""A phone, in Python: a P-256 key, enrollment, and signed approvals (wire contract §2)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from idtoken.device_messages import (
    enroll_message,
    pending_message,
    reject_message,
    subscription_message,
    verify_message,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Enrollment:
    token_id: str
    device_id: str
    expires_at: str
    credential: str


class Device:
    """An app installation. ``http`` is any httpx.AsyncClient whose base_url is the operator."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        device_id: str = "device-1",
        private_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.http = http
        self.device_id = device_id
        self.private_key = private_key or ec.generate_private_key(ec.SECP256R1())
        self.enrollment: Enrollment | None = None

    @property
    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def sign(self, message: str) -> str:
        """ES256 over the UTF-8 message: base64url (no padding) of the raw 64-byte r||s."""
        der = self.private_key.sign(message.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    # ---- request bodies (public so that tests can tamper with them) ----------------------
    def enroll_body(
        self,
        enrollment_token: str,
        *,
        push_subscription: dict[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        ts = now_ms() if timestamp is None else timestamp
        body: dict[str, Any] = {
            "enrollmentToken": enrollment_token,
            "publicKeyPem": self.public_key_pem,
            "deviceId": self.device_id,
            "timestamp": ts,
            "signature": self.sign(enroll_message(self.device_id, ts, enrollment_token)),
        }
        if push_subscription is not None:
            body["pushSubscription"] = push_subscription
        return body

    def verify_body(
        self,
        session_id: str,
        otp: str,
        granted_scopes: list[str],
        *,
        timestamp: int | None = None,
        token_id: str | None = None,
        credential: str | None = None,
        binding_message: str | None = None,
    ) -> dict[str, Any]:
        """The approval; a CIBA request's ``bindingMessage`` (from the push or
        ``/auth/pending``) enters the signed message."""
        enrolled = self._enrolled()
        ts = now_ms() if timestamp is None else timestamp
        message = verify_message(session_id, otp, ts, granted_scopes, binding_message)
        return {
            "sessionId": session_id,
            "tokenId": token_id or enrolled.token_id,
            "otp": otp,
            "grantedScopes": granted_scopes,
            "timestamp": ts,
            "credential": credential or enrolled.credential,
            "signature": self.sign(message),
        }

    def reject_body(self, session_id: str, reason: str = "user_rejected") -> dict[str, Any]:
        ts = now_ms()
        return {
            "sessionId": session_id,
            "tokenId": self._enrolled().token_id,
            "timestamp": ts,
            "reason": reason,
            "signature": self.sign(reject_message(session_id, ts)),
        }

    def pending_body(self) -> dict[str, Any]:
        ts = now_ms()
        token_id = self._enrolled().token_id
        return {
            "tokenId": token_id,
            "timestamp": ts,
            "signature": self.sign(pending_message(token_id, ts)),
        }

    # ---- calls -----------------------------------------------------------------------------
    async def enroll(
        self, enrollment_token: str, *, push_subscription: dict[str, Any] | None = None
    ) -> Enrollment:
        resp = await self.http.post(
            "/enroll", json=self.enroll_body(enrollment_token, push_subscription=push_subscription)
        )
        _raise_for_status(resp)
        data = resp.json()
        self.enrollment = Enrollment(
            token_id=data["tokenId"],
            device_id=data["deviceId"],
            expires_at=data["expiresAt"],
            credential=data["credential"],
        )
        return self.enrollment

    async def pending(self) -> list[dict[str, Any]]:
        """The pending sessions (the app's fallback when a push is lost)."""
        return list((await self.pending_response())["sessions"])

    async def pending_response(self) -> dict[str, Any]:
        """The whole /auth/pending answer, including ``push`` ("active", "dead", "none")."""
        resp = await self.http.post("/auth/pending", json=self.pending_body())
        _raise_for_status(resp)
        body: dict[str, Any] = resp.json()
        return body

    def subscription_body(self, subscription: dict[str, Any]) -> dict[str, Any]:
        ts = now_ms()
        token_id = self._enrolled().token_id
        message = subscription_message(token_id, str(subscription["endpoint"]), ts)
        return {
            "tokenId": token_id,
            "subscription": subscription,
            "timestamp": ts,
            "signature": self.sign(message),
        }

    async def replace_subscription(self, subscription: dict[str, Any]) -> None:
        """Give the operator a new Web Push subscription."""
        resp = await self.http.post(
            "/device/subscription", json=self.subscription_body(subscription)
        )
        _raise_for_status(resp)

    async def approve(
        self,
        session_id: str,
        otp: str,
        granted_scopes: list[str],
        *,
        binding_message: str | None = None,
    ) -> httpx.Response:
        """Send the approval; returns the response (callers check the status)."""
        body = self.verify_body(session_id, otp, granted_scopes, binding_message=binding_message)
        return await self.http.post("/auth/verify", json=body)

    async def approve_pending(
        self, view: dict[str, Any], granted_scopes: list[str]
    ) -> httpx.Response:
        """Approve a request as ``/auth/pending`` (or the push) shows it: its code, and its
        binding message if it is a backchannel (CIBA) request."""
        return await self.approve(
            view["sessionId"],
            view["autoPassword"],
            granted_scopes,
            binding_message=view.get("bindingMessage"),
        )

    async def reject(self, session_id: str, reason: str = "user_rejected") -> httpx.Response:
        return await self.http.post("/auth/reject", json=self.reject_body(session_id, reason))

    def _enrolled(self) -> Enrollment:
        if self.enrollment is None:
            raise RuntimeError("the device is not enrolled")
        return self.enrollment


class OperatorError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


def _raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        error, description = str(body["error"]), str(body["error_description"])
    except (ValueError, KeyError, TypeError):
        error, description = "http_error", resp.text[:200]
    raise OperatorError(resp.status_code, error, description)
