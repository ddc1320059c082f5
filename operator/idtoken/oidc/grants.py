"""The approvals of OpenID Connect and CIBA sessions (:class:`idtoken.doors.GrantMaker`).

Both store the token response sealed with the session's decision; neither puts anything on the
browser socket but ``{"type": "approved"}``. An OpenID Connect approval also mints the
authorization code: single use, for ``code_ttl`` seconds (at most 60), bound through the
session to the client, its redirect URI and its PKCE challenge. The code the hosted page
collects is kept sealed too; the store itself holds only its SHA-256.
"""

from __future__ import annotations

from idtoken.doors import Approval
from idtoken.enrollment.credential import Credential
from idtoken.oidc.secret import OperatorSecret
from idtoken.oidc.tokens import FOR_CODE, TokenIssuer, grant_hash
from idtoken.settings import ServiceSettings
from idtoken.store.base import SessionRecord

APPROVED = '{"type":"approved"}'
_FOR_PAGE = "code for the page"


class CodeGrants:
    """Approvals of sessions started at ``/authorize``."""

    def __init__(self, tokens: TokenIssuer, secret: OperatorSecret, code_ttl: int) -> None:
        self._tokens = tokens
        self._secret = secret
        self._code_ttl = code_ttl

    def approval(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
    ) -> Approval:
        code = self._tokens.locator(FOR_CODE, session.token_id, session.session_id, service.id)
        return Approval(
            APPROVED,
            {
                **self._tokens.kept_grant(
                    session, service, credential, granted, now, backchannel=False
                ),
                "gh": grant_hash(code),
                "gexp": repr(now + self._code_ttl),
                "code": self._secret.seal(f"{_FOR_PAGE}:{session.session_id}", code.encode()),
            },
        )

    def code_for_page(self, session_id: str, sealed: str) -> str:
        """The code of an approved session, for the hosted page's redirect."""
        return self._secret.open(f"{_FOR_PAGE}:{session_id}", sealed).decode("ascii")


class CibaGrants:
    """Approvals of sessions started at ``/bc-authorize`` (the ``auth_req_id``'s hash is the
    session's grant hash from its creation)."""

    def __init__(self, tokens: TokenIssuer) -> None:
        self._tokens = tokens

    def approval(
        self,
        session: SessionRecord,
        service: ServiceSettings,
        credential: Credential,
        granted: list[str],
        now: float,
    ) -> Approval:
        return Approval(
            APPROVED,
            self._tokens.kept_grant(session, service, credential, granted, now, backchannel=True),
        )
