"""The authorization request's errors, against a real operator (uvicorn, Redis).

RFC 6749 §4.1.2.1 and OpenID Connect Core §3.1.2.6: an unknown client, or a redirect URI that is
not registered exactly, gets an error page and is never redirected to (open redirect: prefixes,
fragments, user information, other clients' URIs, repeats); every other error goes back to the
redirect URI with ``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207), by GET and
by POST alike. A refused request leaves the store as it was.
"""

from __future__ import annotations

from conftest import OperatorFactory
from oidc_support import (
    OIDC_CLIENT,
    PUBLIC_CLIENT,
    REDIRECT_URI,
    Pairs,
    assert_error_page,
    assert_redirect,
    authorize_pairs,
    error_redirect,
    pkce_pair,
    send_authorize,
    store_keys,
)
from support import DEFAULT_SERVICE, RedisServer

SERVICES = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), dict(PUBLIC_CLIENT)]
QUERY_URI = "https://app.example/cb?x=1"  # the web client's other registered URI
NOT_REGISTERED = "redirect_uri is missing or not registered for this client"
VSCHARS = "".join(chr(c) for c in range(0x20, 0x7F))  # RFC 6749 Appendix A: state, nonce
CHALLENGE = pkce_pair()[1]


# ----------------------------------------------------------------------------- open redirect
UNTRUSTED: list[tuple[str, Pairs, str]] = [
    ("unknown client", authorize_pairs(client_id="nosuch"), "unknown client_id"),
    ("no client_id", authorize_pairs(client_id=None), "unknown client_id"),
    ("malformed client_id", authorize_pairs(client_id="web app"), "unknown client_id"),
    (
        "a service with no redirect URIs",
        authorize_pairs(client_id="shop"),
        "this client is not registered for the authorization code flow",
    ),
    ("no redirect_uri", authorize_pairs(redirect_uri=None), NOT_REGISTERED),
    ("unregistered", authorize_pairs(redirect_uri="https://evil.example/callback"), NOT_REGISTERED),
    (
        "registered one as a prefix",
        authorize_pairs(redirect_uri=REDIRECT_URI + "/evil"),
        NOT_REGISTERED,
    ),
    ("longer last segment", authorize_pairs(redirect_uri=REDIRECT_URI + "x"), NOT_REGISTERED),
    (
        "a prefix of the registered one",
        authorize_pairs(redirect_uri="http://127.0.0.1:9/call"),
        NOT_REGISTERED,
    ),
    ("trailing slash", authorize_pairs(redirect_uri=REDIRECT_URI + "/"), NOT_REGISTERED),
    (
        "dot segments",
        authorize_pairs(redirect_uri="http://127.0.0.1:9/x/../callback"),
        NOT_REGISTERED,
    ),
    ("scheme case", authorize_pairs(redirect_uri="HTTP://127.0.0.1:9/callback"), NOT_REGISTERED),
    ("path case", authorize_pairs(redirect_uri="http://127.0.0.1:9/Callback"), NOT_REGISTERED),
    ("another port", authorize_pairs(redirect_uri="http://127.0.0.1:99/callback"), NOT_REGISTERED),
    (
        "https for http",
        authorize_pairs(redirect_uri="https://127.0.0.1:9/callback"),
        NOT_REGISTERED,
    ),
    (
        "percent-encoded",
        authorize_pairs(redirect_uri="http://127.0.0.1:9/%63allback"),
        NOT_REGISTERED,
    ),
    (
        "query added",
        authorize_pairs(redirect_uri=QUERY_URI + "&next=https://evil.example"),
        NOT_REGISTERED,
    ),
    ("query left out", authorize_pairs(redirect_uri="https://app.example/cb"), NOT_REGISTERED),
    ("fragment", authorize_pairs(redirect_uri=REDIRECT_URI + "#@evil.example"), NOT_REGISTERED),
    ("empty fragment", authorize_pairs(redirect_uri=REDIRECT_URI + "#"), NOT_REGISTERED),
    (
        "userinfo before the host",
        authorize_pairs(redirect_uri="http://evil.example@127.0.0.1:9/callback"),
        NOT_REGISTERED,
    ),
    (
        "the registered host as userinfo",
        authorize_pairs(redirect_uri="http://127.0.0.1:9@evil.example/callback"),
        NOT_REGISTERED,
    ),
    (
        "another client's URI",
        authorize_pairs(redirect_uri="http://localhost:9/spa"),
        NOT_REGISTERED,
    ),
    (
        "redirect_uri twice, registered first",
        [*authorize_pairs(), ("redirect_uri", "https://evil.example/cb")],
        "client_id and redirect_uri must each be given once",
    ),
    (
        "redirect_uri twice, registered last",
        [("redirect_uri", "https://evil.example/cb"), *authorize_pairs()],
        "client_id and redirect_uri must each be given once",
    ),
    (
        "client_id twice",
        [*authorize_pairs(), ("client_id", "spa")],
        "client_id and redirect_uri must each be given once",
    ),
    # Another error in the same request does not make the redirect URI trustworthy.
    (
        "unregistered, and response_type=token",
        authorize_pairs(redirect_uri="https://evil.example/cb", response_type="token"),
        NOT_REGISTERED,
    ),
    (
        "unregistered, and a request object",
        authorize_pairs(redirect_uri="https://evil.example/cb", request="eyJhbGciOiJub25lIn0.e30."),
        NOT_REGISTERED,
    ),
    (
        "unknown client, with prompt=none",
        authorize_pairs(client_id="nosuch", prompt="none"),
        "unknown client_id",
    ),
]


async def test_an_untrusted_client_or_redirect_uri_gets_an_error_page_never_a_redirect(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator(services=SERVICES) as op:
        before = store_keys(redis_srv)
        for label, params, description in UNTRUSTED:
            for method in ("GET", "POST"):
                resp = await send_authorize(op.http, method, params)
                assert_error_page(resp, description, (label, method))
                assert "evil.example" not in resp.text, (label, method)
        assert store_keys(redis_srv) == before


# ----------------------------------------------------------------------------- redirected errors
TOO_MANY_STATE = "state must be given once, at most 1024 printable ASCII characters"
REDIRECTED: list[tuple[str, Pairs, str, str, str | None]] = [
    # label, request, error, error_description, the state echoed (None: left out)
    (
        "no response_type",
        authorize_pairs(response_type=None),
        "invalid_request",
        "response_type is required",
        "st-1",
    ),
    *[
        (
            f"response_type={value}",
            authorize_pairs(response_type=value),
            "unsupported_response_type",
            "only response_type=code is supported",
            "st-1",
        )
        for value in ("token", "id_token", "code id_token", "code token", "none")
    ],
    *[
        (
            f"response_mode={mode}",
            authorize_pairs(response_mode=mode),
            "invalid_request",
            "only response_mode=query is supported",
            "st-1",
        )
        for mode in ("fragment", "form_post", "web_message")
    ],
    (
        "no scope",
        authorize_pairs(scope=None),
        "invalid_scope",
        "the scope must include openid",
        "st-1",
    ),
    (
        "no openid",
        authorize_pairs(scope="profile"),
        "invalid_scope",
        "the scope must include openid",
        "st-1",
    ),
    *[
        (
            f"scope {scope!r}",
            authorize_pairs(scope=scope),
            "invalid_scope",
            "a requested scope is unknown or not allowed for this client",
            "st-1",
        )
        for scope in ("openid admin", "openid identity:phone", "openid identity:Name")
    ],
    (
        "prompt=none",
        authorize_pairs(prompt="none"),
        "login_required",
        "the user must approve on their phone",
        "st-1",
    ),
    (
        "prompt=none login",
        authorize_pairs(prompt="none login"),
        "invalid_request",
        "prompt=none cannot be combined with other values",
        "st-1",
    ),
    *[
        (
            f"max_age={value}",
            authorize_pairs(max_age=value),
            "invalid_request",
            "max_age must be a non-negative integer",
            "st-1",
        )
        for value in ("-1", "1.5", "1e3", "99999999999")
    ],
    *[
        (
            f"nonce {label}",
            authorize_pairs(nonce=nonce),
            "invalid_request",
            "nonce must be 1 to 255 printable characters",
            "st-1",
        )
        for label, nonce in (("too long", "n" * 256), ("not ASCII", "n\u00e9"), ("tab", "a\tb"))
    ],
    (
        "request object",
        authorize_pairs(request="eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9."),
        "request_not_supported",
        "request objects are not supported",
        "st-1",
    ),
    (
        "request_uri",
        authorize_pairs(request_uri="https://evil.example/request.jwt"),
        "request_uri_not_supported",
        "request_uri is not supported",
        "st-1",
    ),
    (
        "registration",
        authorize_pairs(registration='{"redirect_uris":["https://evil.example/cb"]}'),
        "registration_not_supported",
        "the registration parameter is not supported",
        "st-1",
    ),
    # PKCE: S256 only (RFC 9700 §2.1.1); a missing method would mean plain (RFC 7636 §4.3).
    (
        "code_challenge_method=plain",
        authorize_pairs(code_challenge=CHALLENGE, code_challenge_method="plain"),
        "invalid_request",
        "code_challenge_method must be S256",
        "st-1",
    ),
    (
        "code_challenge without a method",
        authorize_pairs(code_challenge=CHALLENGE),
        "invalid_request",
        "code_challenge_method must be S256",
        "st-1",
    ),
    (
        "code_challenge_method without a challenge",
        authorize_pairs(code_challenge_method="S256"),
        "invalid_request",
        "code_challenge_method without code_challenge",
        "st-1",
    ),
    *[
        (
            f"code_challenge {label}",
            authorize_pairs(code_challenge=challenge, code_challenge_method="S256"),
            "invalid_request",
            "code_challenge must be 43 base64url characters",
            "st-1",
        )
        for label, challenge in (
            ("too short", CHALLENGE[:42]),
            ("too long", CHALLENGE + "A"),
            ("not base64url", CHALLENGE[:42] + "+"),
        )
    ],
    (
        "a public client without PKCE",
        authorize_pairs(client_id="spa", redirect_uri="http://localhost:9/spa"),
        "invalid_request",
        "a public client must use PKCE (code_challenge, S256)",
        "st-1",
    ),
    (
        "scope twice",
        [*authorize_pairs(), ("scope", "openid profile")],
        "invalid_request",
        "parameters given more than once: scope",
        "st-1",
    ),
    (
        "nonce and code_challenge twice",
        [
            *authorize_pairs(code_challenge=CHALLENGE, code_challenge_method="S256"),
            ("nonce", "x"),
            ("code_challenge", CHALLENGE),
        ],
        "invalid_request",
        "parameters given more than once: code_challenge, nonce",
        "st-1",
    ),
    # A state that cannot be trusted is not echoed.
    (
        "state twice",
        [*authorize_pairs(), ("state", "st-2")],
        "invalid_request",
        TOO_MANY_STATE,
        None,
    ),
    ("state too long", authorize_pairs(state="s" * 1025), "invalid_request", TOO_MANY_STATE, None),
    (
        "state not ASCII",
        authorize_pairs(state="caf\u00e9"),
        "invalid_request",
        TOO_MANY_STATE,
        None,
    ),
    (
        "state with a newline",
        authorize_pairs(state="a\nb"),
        "invalid_request",
        TOO_MANY_STATE,
        None,
    ),
    # No state asked: none comes back.
    (
        "no state",
        authorize_pairs(state=None, response_type="token"),
        "unsupported_response_type",
        "only response_type=code is supported",
        None,
    ),
]


async def test_every_other_authorization_error_redirects_with_description_state_and_iss(
    make_operator: OperatorFactory, redis_url: str, redis_srv: RedisServer
) -> None:
    async with make_operator(services=SERVICES) as op:
        before = store_keys(redis_srv)
        for label, params, error, description, state in REDIRECTED:
            uri = dict(params).get("redirect_uri", REDIRECT_URI)
            expected = error_redirect(uri, error, description, state)
            for method in ("GET", "POST"):
                assert_redirect(
                    await send_authorize(op.http, method, params), expected, (label, method)
                )
        # The registered URI's own query is kept, the error added after it (RFC 6749 §3.1.2).
        params = authorize_pairs(redirect_uri=QUERY_URI, response_type="token", state=VSCHARS)
        assert_redirect(
            await send_authorize(op.http, "GET", params),
            error_redirect(
                QUERY_URI,
                "unsupported_response_type",
                "only response_type=code is supported",
                VSCHARS,
            ),
        )
        assert store_keys(redis_srv) == before


async def test_request_objects_are_refused_clearly_and_discovery_says_so(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        meta = (await op.http.get("/.well-known/openid-configuration")).json()
        assert meta["request_parameter_supported"] is False
        assert meta["request_uri_parameter_supported"] is False
        signed = "eyJhbGciOiJFUzI1NiJ9.eyJyZWRpcmVjdF91cmkiOiJodHRwczovL2V2aWwuZXhhbXBsZSJ9.c2ln"
        resp = await send_authorize(op.http, "GET", authorize_pairs(request=signed, state="s-9"))
        assert_redirect(
            resp,
            error_redirect(
                REDIRECT_URI, "request_not_supported", "request objects are not supported", "s-9"
            ),
        )
        resp = await send_authorize(
            op.http, "GET", authorize_pairs(request_uri="urn:ietf:params:oauth:request_uri:x")
        )
        assert_redirect(
            resp,
            error_redirect(
                REDIRECT_URI, "request_uri_not_supported", "request_uri is not supported", "st-1"
            ),
        )
