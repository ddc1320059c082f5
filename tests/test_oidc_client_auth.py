"""Client authentication at the token endpoint, against real operators (uvicorn, Redis).

Errors follow RFC 6749 §5.2 (``invalid_client`` is 401 with ``WWW-Authenticate``) and change
nothing. Secret guesses are counted per client and address, at the token endpoint and at
``/auth/initiate`` alike (the same secret): past the limit the client gets 429 from that
address, right secret or not, until the window passes; the metric counts every failure.
"""

from __future__ import annotations

import base64
import secrets
import time

import httpx

from conftest import Operator, OperatorFactory
from idtoken.clock import ManualClock
from idtoken.oidc.clients import FAILURE_LIMIT, FAILURE_WINDOW
from oidc_support import (
    CLIENT_SECRET,
    OIDC_CLIENT,
    OTHER_CLIENT,
    OTHER_SECRET,
    PUBLIC_CLIENT,
    REDIRECT_URI,
    assert_issued,
    assert_refused,
    code_login,
    redeem,
)
from support import DEFAULT_SERVICE

SERVICES = [dict(DEFAULT_SERVICE), dict(OIDC_CLIENT), dict(OTHER_CLIENT), dict(PUBLIC_CLIENT)]
NOT_VALID = "the code is not valid"
METRICS_TOKEN = "metrics-token-0123456789"


# ----------------------------------------------------------------------------- brute force
async def metric(op: Operator, name: str) -> float:
    text = (
        await op.http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    ).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, text
    return float(values[0])


async def test_client_secret_brute_force_blocks_the_client_from_that_address(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    t0 = float(int(time.time()))
    clock = ManualClock(t0)
    async with make_operator(
        services=SERVICES,
        clock=clock,
        limits={"timestamp_skew": 120},
        extra=f'\n[metrics]\ntoken = "{METRICS_TOKEN}"\n',
    ) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        bogus = secrets.token_urlsafe(32)
        # Every kind of failure of the client counts in the one window.
        attempts: list[tuple[tuple[str, str] | None, dict[str, str]]] = [
            (("webapp", f"guess-{i}"), {}) for i in range(FAILURE_LIMIT - 6)
        ]
        attempts += [(None, {"client_id": "webapp", "client_secret": CLIENT_SECRET})] * 3
        attempts += [(None, {"client_id": "webapp"})] * 2
        attempts += [(("webapp", "x" * 600), {})]
        assert len(attempts) == FAILURE_LIMIT
        for auth, form in attempts:
            resp = await redeem(op.http, bogus, None, auth=auth, **form)
            assert_refused(resp, 401, "invalid_client", "client authentication failed")
        resp = await redeem(op.http, bogus, None, auth=("webapp", "one-more-guess"))
        assert_refused(resp, 429, "too_many_requests", "too many failed client authentications")
        assert resp.headers["retry-after"] == str(FAILURE_WINDOW)
        # Now even the right secret is refused, before the code is looked at...
        resp = await redeem(op.http, bogus, None)
        assert_refused(resp, 429, "too_many_requests", "too many failed client authentications")
        # ...while another client from the same address is not blocked.
        resp = await redeem(op.http, bogus, None, auth=("other", OTHER_SECRET))
        assert_refused(resp, 400, "invalid_grant", NOT_VALID)

        clock.advance(25)
        login = await code_login(op.http, device, [], token_id="user-1")
        resp = await redeem(op.http, login.code, login.verifier)
        assert_refused(resp, 429, "too_many_requests", "too many failed client authentications")
        wait = int(resp.headers["retry-after"])
        assert 0 < wait <= FAILURE_WINDOW - 25 + 1
        clock.advance(wait - 2)
        resp = await redeem(op.http, login.code, login.verifier)
        assert resp.status_code == 429
        clock.advance(2)
        # The window has passed; the refused attempts did not spend the code.
        assert_issued(await redeem(op.http, login.code, login.verifier))
        assert await metric(op, "idtoken_client_auth_failures_total") == FAILURE_LIMIT + 1


async def test_secret_guesses_at_auth_initiate_count_in_the_same_window(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    """The client secret is also the service's Bearer secret at /auth/initiate: guessing it
    there counts with the token endpoint's failures, and blocks both."""
    async with make_operator(
        services=SERVICES, extra=f'\n[metrics]\ntoken = "{METRICS_TOKEN}"\n'
    ) as op:
        await op.enrolled("user-1", given_name="Ada")

        async def initiate(secret: str) -> httpx.Response:
            return await op.http.post(
                "/auth/initiate",
                json={"tokenId": "user-1", "serviceId": "webapp"},
                headers={"Authorization": f"Bearer {secret}"},
            )

        for i in range(FAILURE_LIMIT):
            resp = await initiate(f"guess-{i}")
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"] == "invalid_client"
        resp = await initiate("one-more-guess")
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == str(FAILURE_WINDOW)
        assert (await initiate(CLIENT_SECRET)).status_code == 429
        resp = await redeem(op.http, secrets.token_urlsafe(32), None)
        assert_refused(resp, 429, "too_many_requests", "too many failed client authentications")
        assert await metric(op, "idtoken_client_auth_failures_total") == FAILURE_LIMIT + 1


# ----------------------------------------------------------------------------- RFC 6749 §5.2
async def test_token_errors_follow_rfc_6749_section_5_2_and_change_nothing(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(services=SERVICES) as op:
        device = await op.enrolled("user-1", given_name="Ada")
        login = await code_login(op.http, device, [], token_id="user-1")
        code, verifier = login.code, login.verifier
        good = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier or "",
        }
        basic = httpx.BasicAuth("webapp", CLIENT_SECRET)

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        cases: list[tuple[str, dict[str, str], dict[str, str], int, str, str]] = [
            # label, form, headers, status, error, description
            (
                "no client authentication",
                good,
                {},
                401,
                "invalid_client",
                "client authentication is required",
            ),
            (
                "a Bearer header",
                good,
                {"Authorization": f"Bearer {CLIENT_SECRET}"},
                401,
                "invalid_client",
                "the Authorization header must be HTTP Basic",
            ),
            (
                "Basic, not base64",
                good,
                {"Authorization": "Basic !!!"},
                401,
                "invalid_client",
                "the Authorization header is not valid Basic credentials",
            ),
            (
                "Basic without a colon",
                good,
                {"Authorization": f"Basic {b64('webapp')}"},
                401,
                "invalid_client",
                "the Authorization header is not valid Basic credentials",
            ),
            (
                "an unknown client",
                good,
                {"Authorization": f"Basic {b64('nosuch:' + CLIENT_SECRET)}"},
                401,
                "invalid_client",
                "client authentication failed",
            ),
            (
                "a confidential client with no secret",
                {**good, "client_id": "webapp"},
                {},
                401,
                "invalid_client",
                "client authentication failed",
            ),
            (
                "the right secret by the wrong method",
                {**good, "client_id": "webapp", "client_secret": CLIENT_SECRET},
                {},
                401,
                "invalid_client",
                "client authentication failed",
            ),
            (
                "a public client with a secret",
                {**good, "client_id": "spa", "client_secret": "anything"},
                {},
                401,
                "invalid_client",
                "client authentication failed",
            ),
        ]
        for label, form, headers, status, error, description in cases:
            resp = await op.http.post("/token", data=form, headers=headers)
            assert resp.status_code == status, label
            assert_refused(resp, status, error, description)

        authenticated = [
            (
                "two methods",
                {**good, "client_secret": CLIENT_SECRET},
                "invalid_request",
                "use one client authentication method, not two",
            ),
            (
                "another client_id than the header's",
                {**good, "client_id": "other"},
                "invalid_request",
                "client_id differs from the authenticated client",
            ),
            (
                "no grant_type",
                {k: v for k, v in good.items() if k != "grant_type"},
                "invalid_request",
                "grant_type is required",
            ),
            (
                "no code",
                {k: v for k, v in good.items() if k != "code"},
                "invalid_request",
                "code is required",
            ),
            ("an empty code", {**good, "code": ""}, "invalid_request", "code is required"),
            *[
                (
                    grant,
                    {**good, "grant_type": grant},
                    "unsupported_grant_type",
                    "this grant type is not supported",
                )
                for grant in (
                    "password",
                    "refresh_token",
                    "client_credentials",
                    "implicit",
                    "urn:ietf:params:oauth:grant-type:device_code",
                    "AUTHORIZATION_CODE",
                )
            ],
        ]
        for label, form, error, description in authenticated:
            resp = await op.http.post("/token", data=form, auth=basic)
            assert resp.status_code == 400, label
            assert_refused(resp, 400, error, description)

        repeated = "&".join(f"{k}={v}" for k, v in good.items()) + f"&code={code}"
        resp = await op.http.post(
            "/token",
            content=repeated,
            auth=basic,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_refused(resp, 400, "invalid_request", "'code' is given more than once")
        resp = await op.http.post("/token", json=good, auth=basic)
        assert_refused(
            resp,
            415,
            "unsupported_media_type",
            "the request body must be application/x-www-form-urlencoded",
        )
        resp = await op.http.post("/token", data={**good, "pad": "x" * 70_000}, auth=basic)
        assert_refused(resp, 413, "request_too_large", "the request body is larger than 64 KiB")

        # Nothing above spent the code.
        assert_issued(await redeem(op.http, code, verifier))
