"""The one place that defines what an error looks like on the wire.

Every failure the operator reports to a client is an :class:`OperatorError`: a snake_case
``code``, an HTTP ``status`` and a human ``description``. Descriptions are written for the
client and never carry a secret, an OTP, a library message or a stack trace; the detail that
helps an operator goes to the log through ``log_detail``.
"""

from __future__ import annotations

from collections.abc import Mapping


class OperatorError(Exception):
    """A failure with a stable wire code. Subclasses fix ``code`` and ``status``."""

    code: str = "invalid_request"
    status: int = 400
    quiet: bool = False
    """An expected answer rather than a refusal (a poll's "not yet"): logged at debug only."""

    def __init__(
        self,
        description: str,
        *,
        log_detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.log_detail = log_detail
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


class InvalidRequest(OperatorError):
    code, status = "invalid_request", 400


class RequestTooLarge(OperatorError):
    code, status = "request_too_large", 413


class RequestLineTooLong(OperatorError):
    code, status = "request_line_too_long", 414


class RequestHeaderTooLarge(OperatorError):
    code, status = "request_header_too_large", 431


class UnsupportedMediaType(OperatorError):
    code, status = "unsupported_media_type", 415


class NotFound(OperatorError):
    code, status = "not_found", 404


class MethodNotAllowed(OperatorError):
    code, status = "method_not_allowed", 405


class InvalidScope(OperatorError):
    code, status = "invalid_scope", 400


class InvalidClient(OperatorError):
    code, status = "invalid_client", 401


class UnknownService(OperatorError):
    code, status = "unknown_service", 404


class UnknownToken(OperatorError):
    code, status = "unknown_token", 404


class TokenRevoked(OperatorError):
    code, status = "token_revoked", 403


class _RetryAfter(OperatorError):
    def __init__(self, description: str, *, retry_after: int, log_detail: str | None = None):
        super().__init__(
            description,
            log_detail=log_detail,
            headers={"Retry-After": str(max(1, int(retry_after)))},
        )
        self.retry_after = max(1, int(retry_after))


class TooManyRequests(_RetryAfter):
    code, status = "too_many_requests", 429


class TemporarilyUnavailable(_RetryAfter):
    code, status = "temporarily_unavailable", 503


class TokenRevokedAtEnrollment(TokenRevoked):
    """The contract answers a revoked token with 403 on initiate but 409 on enroll."""

    status = 409


class InvalidEnrollmentToken(OperatorError):
    code, status = "invalid_enrollment_token", 401


class InvalidSignature(OperatorError):
    code, status = "invalid_signature", 401


class DeviceMismatch(OperatorError):
    code, status = "device_mismatch", 403


class UnknownSession(OperatorError):
    code, status = "unknown_session", 404


class SessionNotPending(OperatorError):
    code, status = "session_not_pending", 409


class SessionExpired(OperatorError):
    code, status = "session_expired", 410


class InsufficientTrustLevel(OperatorError):
    code, status = "insufficient_trust_level", 403


class InvalidOtp(OperatorError):
    code, status = "invalid_otp", 400


class TokenReplayed(OperatorError):
    code, status = "token_replayed", 409


class TokenConflict(OperatorError):
    code, status = "token_conflict", 409


class Unauthorized(OperatorError):
    code, status = "unauthorized", 401


class ServerError(OperatorError):
    code, status = "server_error", 500


# ---- OAuth 2.0 / OpenID Connect / CIBA codes (RFC 6749 §5.2, RFC 6750 §3.1, CIBA §11, §13)
class InvalidGrant(OperatorError):
    code, status = "invalid_grant", 400


class UnsupportedGrantType(OperatorError):
    code, status = "unsupported_grant_type", 400


class UnauthorizedClient(OperatorError):
    code, status = "unauthorized_client", 400


class AuthorizationPending(OperatorError):
    code, status = "authorization_pending", 400
    quiet = True


class SlowDown(OperatorError):
    code, status = "slow_down", 400


class ExpiredToken(OperatorError):
    code, status = "expired_token", 400


class AccessDenied(OperatorError):
    code, status = "access_denied", 400


class InvalidToken(OperatorError):
    """A Bearer token refused at ``/userinfo`` (RFC 6750 §3.1): 401 with a challenge."""

    code, status = "invalid_token", 401


class InvalidBindingMessage(OperatorError):
    code, status = "invalid_binding_message", 400


class ConfigError(Exception):
    """A configuration problem found at start-up. The message names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
