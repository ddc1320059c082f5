"""The hosted login page (``/authorize``) in headless Chromium against a real operator on a
real Redis; the phone is the reference device (``idtoken.client.Device``) and the client's
redirect target a real loopback HTTP server (tests/oidc_browser_support.py).

Every request the browser makes, its console, its Content-Security-Policy violations and its
WebSockets are recorded. Screenshots (a 360 × 640 phone) go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from playwright.async_api import Page, Route, expect

from conftest import Operator, OperatorFactory
from idtoken.client import Device
from oidc_browser_support import PHONE, Cable, Callback, Tab, chromium, until
from oidc_support import OIDC_CLIENT, assert_issued, id_token_claims, pkce_pair, query_of, redeem
from support import DEFAULT_SERVICE

CODE = re.compile(r"^\d{6}$")
STATE = "st 1/&=?#+%~"  # printable ASCII that every layer must keep exactly
SCOPE = "openid profile identity:age_over_18"
ASKED = ["Full name", "Date of birth", "Over 18 (yes/no)"]  # the page's words for SCOPE


@pytest.fixture
def callback() -> Iterator[Callback]:
    with Callback.serving() as client:
        yield client


@pytest.fixture
async def tab() -> AsyncIterator[Tab]:
    async with chromium() as browser, Tab.opened(browser) as opened:
        yield opened


@contextlib.asynccontextmanager
async def operator_for(
    make_operator: OperatorFactory, callback: Callback, **client: Any
) -> AsyncIterator[Operator]:
    """An operator whose client ``webapp`` (``client`` over OIDC_CLIENT) redirects to the
    callback server only."""
    webapp = {**OIDC_CLIENT, "redirect_uris": [callback.redirect_uri], **client}
    async with make_operator(services=[dict(DEFAULT_SERVICE), webapp]) as op:
        yield op


async def enrolled(op: Operator) -> Device:
    return await op.enrolled(
        "user-1", given_name="Marie", family_name="Dupont", birthdate="1990-05-01"
    )


def authorize_url(origin: str, callback: Callback, **params: str) -> tuple[str, str]:
    """The authorization request with state, nonce and a fresh PKCE pair: (url, verifier)."""
    verifier, challenge = pkce_pair()
    query = {
        "response_type": "code",
        "client_id": "webapp",
        "redirect_uri": callback.redirect_uri,
        "scope": SCOPE,
        "state": STATE,
        "nonce": "n-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **params,
    }
    return f"{origin}/authorize?{urlencode(query)}", verifier


# ----------------------------------------------------------------------------- steps
async def type_token_id(page: Page, token_id: str) -> str:
    """Answer the page's question; the code it then shows."""
    await page.locator("#token-id").fill(token_id)
    await page.get_by_role("button", name="Continue", exact=True).click()
    return await shown_code(page)


async def shown_code(page: Page) -> str:
    await expect(page.locator("#code")).to_have_text(CODE)
    await expect(page.locator("#start")).to_be_hidden()
    return await page.locator("#code").inner_text()


async def landed(tab: Tab, callback: Callback) -> dict[str, str]:
    """Wait for the browser to reach the redirect URI; its query, as the client got it."""
    await tab.page.wait_for_url(lambda url: url.startswith(callback.redirect_uri + "?"))
    await expect(tab.page.locator("#arrived")).to_have_text("/callback")
    query = query_of(tab.page.url)
    assert callback.arrivals() == [query]
    return query


def load_refused(status: str) -> str:
    """The console line Chromium writes for a response with an error status."""
    return f"error: Failed to load resource: the server responded with a status of {status}"


async def approve(device: Device, code: str, granted: list[str]) -> None:
    [view] = await device.pending()
    resp = await device.approve(view["sessionId"], code, granted)
    assert resp.status_code == 200, resp.text


async def assert_code_redeems(
    op: Operator, query: dict[str, str], verifier: str, callback: Callback
) -> dict[str, Any]:
    """The code, state and iss at the redirect URI; the code's ID token's claims."""
    assert set(query) == {"code", "state", "iss"}
    assert query["state"] == STATE
    assert query["iss"] == op.settings.issuer
    resp = await redeem(op.http, query["code"], verifier, redirect_uri=callback.redirect_uri)
    claims = await id_token_claims(op.http, assert_issued(resp)["id_token"])
    assert (claims["iss"], claims["aud"], claims["sub"]) == (op.settings.issuer, "webapp", "user-1")
    assert claims["nonce"] == "n-1"
    return claims


# ----------------------------------------------------------------------------- logins
async def test_login_lands_on_the_redirect_uri_with_a_code_that_redeems(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback) as op:
        device = await enrolled(op)
        url, verifier = authorize_url(op.base_url, callback)
        await tab.page.goto(url)
        await expect(tab.page.locator("h1")).to_have_text("Log in to Web App")
        await expect(tab.page.locator("ul.claims li")).to_have_text(ASKED)
        await expect(tab.page.locator("#waiting")).to_be_hidden()
        code = await type_token_id(tab.page, "user-1")
        await expect(tab.page.locator("#status")).to_have_text(
            "Check that your phone shows the same code, then approve."
        )
        await tab.shot("display-code")

        [view] = await device.pending()
        assert view["autoPassword"] == code  # display mode: the phone shows the same code
        assert view["scopes"] == ["identity:name", "identity:date_of_birth", "identity:age_over_18"]
        resp = await device.approve(view["sessionId"], code, ["identity:name"])
        assert resp.status_code == 200, resp.text

        claims = await assert_code_redeems(op, await landed(tab, callback), verifier, callback)
        assert (claims["given_name"], claims["family_name"]) == ("Marie", "Dupont")
        assert claims["amr"] == ["pop", "user", "mca"]
        assert "birthdate" not in claims and "age_over_18" not in claims["idtoken"]
        tab.assert_clean(op.base_url, callback)


async def test_login_hint_starts_at_once_without_the_question(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback) as op:
        device = await enrolled(op)
        url, verifier = authorize_url(op.base_url, callback, login_hint="user-1")
        # The start is held until the page has been looked at: no question, even meanwhile.
        held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def hold(route: Route) -> None:
            await held
            await route.continue_()

        await tab.page.route("**/authorize/session", hold)
        async with tab.page.expect_request("**/authorize/session") as starting:
            await tab.page.goto(url)
        body = (await starting.value).post_data_json
        assert body is not None and body["tokenId"] == "user-1"
        await expect(tab.page.locator("#start")).to_be_hidden()
        await expect(tab.page.locator("#token-id")).to_be_hidden()
        held.set_result(None)
        code = await shown_code(tab.page)
        await approve(device, code, ["identity:name"])
        await assert_code_redeems(op, await landed(tab, callback), verifier, callback)
        tab.assert_clean(op.base_url, callback)


async def test_a_hint_that_is_nobody_asks_for_the_token_id(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback) as op:
        device = await enrolled(op)
        url, verifier = authorize_url(op.base_url, callback, login_hint="nobody")
        await tab.page.goto(url)
        await expect(tab.page.locator("#problem")).to_have_text(
            "no device is enrolled for this tokenId"
        )
        await expect(tab.page.locator("#token-id")).to_have_value("nobody")
        code = await type_token_id(tab.page, "user-1")
        await approve(device, code, [])
        await assert_code_redeems(op, await landed(tab, callback), verifier, callback)
        # The refused start is the one console line: the browser logs every 4xx it gets.
        assert tab.console == [load_refused("404 (Not Found)")]
        tab.console.clear()
        tab.assert_clean(op.base_url, callback)


async def test_typed_mode_shows_the_code_on_the_page_only(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback, otp_mode="typed") as op:
        device = await enrolled(op)
        url, verifier = authorize_url(op.base_url, callback)
        await tab.page.goto(url)
        code = await type_token_id(tab.page, "user-1")
        await expect(tab.page.locator("#status")).to_have_text(
            "Type this code on your phone to approve."
        )
        await tab.shot("typed-code")
        [view] = await device.pending()
        assert "autoPassword" not in view  # the phone never sees it: the user types it
        await approve(device, code, ["identity:age_over_18"])
        claims = await assert_code_redeems(op, await landed(tab, callback), verifier, callback)
        assert claims["amr"] == ["pop", "user", "mca", "otp"]
        assert claims["idtoken"] == {"tokenId": "user-1", "age_over_18": True}
        tab.assert_clean(op.base_url, callback)


# The phone's answer (none: the session's lifetime runs out) and what the client is told.
REFUSALS = {
    "reject": ("user_rejected", "the user declined on their phone"),
    "not-me": ("not_me", "the user reported the request as not theirs"),
    "expiry": (None, "the login request expired before it was approved"),
}


@pytest.mark.parametrize("how", list(REFUSALS))
async def test_refusal_and_expiry_land_with_access_denied(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab, how: str
) -> None:
    reason, description = REFUSALS[how]
    async with operator_for(make_operator, callback, session_ttl=10) as op:
        device = await enrolled(op)
        url, _ = authorize_url(op.base_url, callback)
        await tab.page.goto(url)
        await type_token_id(tab.page, "user-1")
        [view] = await device.pending()
        if reason is not None:
            resp = await device.reject(view["sessionId"], reason)
            assert resp.status_code == 200, resp.text
        await tab.page.wait_for_url(callback.redirect_uri + "?**", timeout=30_000)
        assert await landed(tab, callback) == {
            "error": "access_denied",
            "error_description": description,
            "state": STATE,
            "iss": op.settings.issuer,
        }
        tab.assert_clean(op.base_url, callback)


# ----------------------------------------------------------------------------- a lost socket
async def test_a_page_that_lost_its_socket_still_completes(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback) as op, Cable(op.base_url) as cable:
        device = await enrolled(op)
        url, verifier = authorize_url(cable.url, callback)
        await tab.page.goto(url)
        code = await type_token_id(tab.page, "user-1")
        await until(lambda: any('"otp_ready"' in m for m in tab.received[0]), "the socket is up")
        first = tab.sockets[0]

        cable.unplug()  # the page's socket is cut; the phone approves meanwhile
        await until(first.is_closed, "the page's socket is closed")
        await approve(device, code, ["identity:name"])
        await until(lambda: cable.refused > 0, "the page tried to reconnect while cut off")
        cable.plug()

        await assert_code_redeems(op, await landed(tab, callback), verifier, callback)
        assert not any('"approved"' in m for m in tab.received[0])
        assert tab.received[-1] == ['{"type":"approved"}']  # the stored decision, at once
        ws = cable.url.replace("http://", "ws://") + "/ws/session/"
        assert tab.console and all(
            line.startswith(f"error: WebSocket connection to '{ws}") for line in tab.console
        ), tab.console
        tab.console.clear()
        tab.assert_clean(cable.url, callback)


# ----------------------------------------------------------------------------- the page itself
async def test_the_page_allows_only_itself_and_no_frame(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    async with operator_for(make_operator, callback) as op:
        url, _ = authorize_url(op.base_url, callback)
        response = await tab.page.goto(url)
        assert response is not None and response.status == 200
        headers = await response.all_headers()
        csp = headers["content-security-policy"]
        policy = dict(d.strip().partition(" ")[::2] for d in csp.split(";"))
        assert policy["default-src"] == "'none'"
        assert policy["frame-ancestors"] == "'none'"
        assert (policy["script-src"], policy["style-src"]) == ("'self'", "'self'")
        assert "unsafe" not in csp and "*" not in csp and "data:" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        await expect(tab.page.locator("#token-id")).to_be_visible()
        assert not tab.console and not tab.violations, (tab.console, tab.violations)
        assert {urlsplit(u).netloc for u in tab.requests} == {urlsplit(op.base_url).netloc}

        # Chromium enforces it, and the listener hears it: inline script and other origins.
        elsewhere = callback.origin + "/elsewhere.png"
        await tab.page.evaluate(
            """(src) => {
              const script = document.createElement("script");
              script.textContent = "window.ran = true";
              document.head.append(script);
              document.body.append(Object.assign(new Image(), {src}));
            }""",
            elsewhere,
        )
        await until(lambda: len(tab.violations) == 2, "two violations")
        assert sorted(tab.violations) == ["img-src " + elsewhere, "script-src-elem inline"]
        assert await tab.page.evaluate("window.ran") is None
        assert callback.requests == []  # refused before it was sent

        # Framed by another origin (the client's): Chromium refuses to show it.
        tab.console.clear()
        frame_url = f"{callback.origin}/frame?src={quote(url, safe='')}"
        async with tab.page.expect_console_message(lambda m: "frame-ancestors" in m.text):
            await tab.page.goto(frame_url)
        await expect(tab.page.frame_locator("#own").locator("#arrived")).to_have_text("/own")
        framed = tab.page.frame_locator("#login")
        await expect(framed.locator("#token-id, #login-config")).to_have_count(0)
        await expect(framed.locator("body")).not_to_contain_text("Log in to Web App")
        frame = await (await tab.page.locator("#login").element_handle()).content_frame()
        assert frame is not None and frame.url == "chrome-error://chromewebdata/"
        await tab.shot("framed")


async def test_the_page_fits_a_phone(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab
) -> None:
    name = "Ministère de l'Économie et des Finances — Espace Particulier Authentification"
    async with operator_for(make_operator, callback, name=name) as op:
        await enrolled(op)
        url, _ = authorize_url(op.base_url, callback)
        await tab.page.goto(url)
        await expect(tab.page.locator("h1")).to_have_text(f"Log in to {name}")
        await assert_fits(tab.page, "#token-id", "#continue")
        await tab.shot("phone-form")
        await tab.page.locator("#token-id").fill("not a token id")
        await tab.page.locator("#continue").click()
        await expect(tab.page.locator("#problem")).to_have_text(
            "Enter your token ID as your phone shows it."
        )
        await assert_fits(tab.page, "#token-id", "#continue", "#problem")
        await tab.shot("phone-problem")
        await type_token_id(tab.page, "user-1")
        await assert_fits(tab.page, "#code", "#status")
        await tab.shot("phone-code")
        tab.assert_quiet()


async def assert_fits(page: Page, *selectors: str) -> None:
    """No horizontal scrolling at 360 px, and each element visible on the first screen."""
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    for selector in selectors:
        await expect(page.locator(selector)).to_be_visible()
        box = await page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (selector, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (selector, box)


# The parameter that is wrong ({client}: the client's origin) and the page's words for it.
UNTRUSTED = {
    "unknown-client": ("client_id", "nobody", "unknown client_id"),
    "unregistered-redirect-uri": (
        "redirect_uri",
        "{client}/elsewhere",  # the client's own origin, but not a registered URI
        "redirect_uri is missing or not registered for this client",
    ),
}


@pytest.mark.parametrize("what", list(UNTRUSTED))
async def test_an_untrusted_request_gets_the_error_page(
    make_operator: OperatorFactory, redis_url: str, callback: Callback, tab: Tab, what: str
) -> None:
    name, value, description = UNTRUSTED[what]
    params = {name: value.format(client=callback.origin)}
    async with operator_for(make_operator, callback) as op:
        url, _ = authorize_url(op.base_url, callback, **params)
        response = await tab.page.goto(url)
        assert response is not None and response.status == 400
        assert "frame-ancestors 'none'" in (await response.all_headers())["content-security-policy"]
        await expect(tab.page.locator("h1")).to_have_text("This login cannot continue")
        await expect(tab.page.locator("p.error")).to_have_text(description)
        await expect(tab.page.locator("form, input, button")).to_have_count(0)
        await assert_fits(tab.page, "p.error")
        await tab.shot(f"error-{what}")
        assert tab.page.url == url
        assert callback.requests == []  # never a redirect
        # The one console line is the browser's note of the page's own 400.
        assert tab.console == [load_refused("400 (Bad Request)")]
        assert not tab.violations, tab.violations
