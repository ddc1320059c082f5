"""OpenID Connect's names for what the engine knows: scopes, claims, acr and amr.

Scopes. ``openid`` is required. The standard scopes stand for the identity scopes that carry
their claims (OpenID Connect Core §5.4), as far as the service allows them; a standard scope
none of whose identity scopes the service allows is ignored, as RFC 6749 §3.3 lets a server
do (the response's ``scope`` says what was granted). An ``identity:*`` scope is requested as
it is and must be allowed, exactly as on ``/auth/initiate``; any other scope is
``invalid_scope``.

Claims. The consented claims appear twice: as standard claims where one exists
(:data:`STANDARD_CLAIMS`) and, all of them, in the ``idtoken`` object the IDToken protocol's
JWT carries. Derived claims (``age_over_18``...) have no standard name and never release
their source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from idtoken.scopes import KNOWN_SCOPES

OPENID = "openid"

STANDARD_SCOPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "profile": ("identity:name", "identity:date_of_birth"),
        "email": ("identity:email",),
        "phone": ("identity:phone",),
        # Asked for by some clients by default; nothing of ours answers them.
        "address": (),
        "offline_access": (),
    }
)
"""Standard scopes and the identity scopes they stand for."""

STANDARD_CLAIMS: Mapping[str, str] = MappingProxyType(
    {
        "givenName": "given_name",
        "familyName": "family_name",
        "dateOfBirth": "birthdate",
        "email": "email",
        "phoneNumber": "phone_number",
    }
)
"""``idtoken`` claim -> the OpenID Connect standard claim that carries the same value."""

ACR_PREFIX = "urn:idtoken:trust_level:"
ACR_VALUES: tuple[str, ...] = tuple(f"{ACR_PREFIX}{level}" for level in (1, 2, 3))
"""``acr`` for trust levels 1, 2 and 3 (docs/oidc.md, "Trust levels as acr")."""

ID_TOKEN_CLAIMS: tuple[str, ...] = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "at_hash",
    "name",
    *STANDARD_CLAIMS.values(),
    "idtoken",
)
"""Every top-level claim an ID token or a userinfo answer may carry."""


class ScopeRequestError(ValueError):
    """The ``scope`` parameter asks for something the client may not have."""


def identity_scopes(scope: str, allowed: Iterable[str]) -> tuple[str, ...]:
    """The identity scopes a ``scope`` parameter asks for, first occurrence first.

    :class:`ScopeRequestError` when ``openid`` is missing, or a scope is unknown or an
    ``identity:*`` scope not in ``allowed``."""
    allowed = frozenset(allowed)
    requested = scope.split(" ")
    if OPENID not in requested:
        raise ScopeRequestError("the scope must include openid")
    out: dict[str, None] = {}
    for name in requested:
        if name in ("", OPENID):
            continue
        if name in STANDARD_SCOPES:
            out.update((s, None) for s in STANDARD_SCOPES[name] if s in allowed)
        elif name in KNOWN_SCOPES and name in allowed:
            out[name] = None
        else:
            raise ScopeRequestError("a requested scope is unknown or not allowed for this client")
    return tuple(out)


def granted_scope(granted: Iterable[str]) -> str:
    """The ``scope`` of a token response: ``openid`` and the identity scopes granted."""
    return " ".join((OPENID, *granted))


def standard_claims(idtoken: Mapping[str, Any]) -> dict[str, Any]:
    """The standard claims for the ``idtoken`` object's consented claims (``name`` when both
    names were released)."""
    out = {STANDARD_CLAIMS[k]: v for k, v in idtoken.items() if k in STANDARD_CLAIMS}
    if "given_name" in out and "family_name" in out:
        out["name"] = f"{out['given_name']} {out['family_name']}"
    return out


def acr_for(trust_level: int) -> str:
    return f"{ACR_PREFIX}{trust_level}"


def min_trust_level(acr_values: str) -> int:
    """The lowest trust level ``acr_values`` accepts: the lowest of the values we know (a
    client lists what it would take); 0 when it names none of ours (nothing is required)."""
    levels = [int(v.removeprefix(ACR_PREFIX)) for v in acr_values.split(" ") if v in ACR_VALUES]
    return min(levels, default=0)


def amr_for(otp_mode: str, *, backchannel: bool = False) -> list[str]:
    """RFC 8176 methods that are true of an approval: proof of possession of the device key
    (``pop``: hardware or software is not attested) and a user presence test (``user``: the
    user acted on the phone); with a browser, two channels (``mca``: the browser and the
    phone) and ``otp`` when the user typed the code the browser showed. A CIBA approval has
    no browser: ``pop`` and ``user``."""
    if backchannel:
        return ["pop", "user"]
    return ["pop", "user", "mca", *(["otp"] if otp_mode == "typed" else [])]
