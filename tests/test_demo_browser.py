"""The demo pages in a real browser: headless Chromium (Debian's, driven by Playwright) against
``idtoken-operator serve`` started as a child process on a configuration written by
``idtoken-operator demo init``.

The phone page makes its key with WebCrypto and signs every request itself; the relying-party
page starts the login through its backend, listens on the operator's socket and shows what the
backend verified. One browser context holds both pages, as when a user opens both tabs in one
browser: the relying-party page's token ID is prefilled from the phone's enrollment.

Screenshots of both pages at each step go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from conftest import Operator, OperatorFactory
from idtoken.client import Initiation, RelyingParty
from support import REPO, Issuer, OperatorProcess, toml_value

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "test-output" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
WAIT = 10_000  # ms: the phone polls every 1.5 s
OTP = re.compile(r"^\d{6}$")


# ----------------------------------------------------------------------------- without [demo]
async def test_demo_is_not_served_when_the_configuration_does_not_enable_it(
    operator: Operator,
) -> None:
    assert not operator.settings.demo.enabled
    for path in ("/demo/", "/demo", "/demo/phone", "/demo/static/phone.js", "/demo/api/config"):
        resp = await operator.http.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["error"] == "not_found"
    resp = await operator.http.post("/demo/api/enrollment-token", json={})
    assert resp.status_code == 404


# ----------------------------------------------------------------------------- fixtures
def start_demo_operator(directory: Path, *, session_ttl: int | None = None) -> OperatorProcess:
    """``demo init`` for the port the process will listen on, then ``serve`` on the embedded
    store (whatever the environment of the test run says)."""
    proc = OperatorProcess(directory / "demo.toml")
    proc.env.pop("IDTOKEN_REDIS_URL", None)
    proc.env.pop("IDTOKEN_CONFIG", None)
    proc.env["IDTOKEN_ISSUER"] = proc.url
    subprocess.run(
        [
            sys.executable,
            "-m",
            "idtoken",
            "demo",
            "init",
            "--dir",
            str(directory),
            "--issuer",
            proc.url,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    if session_ttl is not None:
        config = proc.config_file.read_text()
        proc.config_file.write_text(
            config.replace("session_ttl = 120", f"session_ttl = {session_ttl}")
        )
    return proc.start()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = start_demo_operator(tmp_path_factory.mktemp("demo"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    # Per test, not per module: while Playwright's sync driver is alive its event loop counts
    # as running, and the async tests of this module (pytest-asyncio) could not start.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Pages:
    """One browser context (shared storage, as two tabs of one browser) and its page errors."""

    def __init__(self, context: BrowserContext, base_url: str, name: str) -> None:
        self.context = context
        self.base_url = base_url
        self.name = name
        self.errors: list[str] = []

    def open(self, path: str, viewport: dict[str, int]) -> Page:
        page = self.context.new_page()
        page.set_viewport_size(viewport)  # type: ignore[arg-type]
        page.on("pageerror", lambda exc: self.errors.append(f"{path}: {exc}"))
        page.on("console", lambda msg: self._console(path, msg))
        page.goto(self.base_url + path)
        return page

    def _console(self, path: str, msg: ConsoleMessage) -> None:
        # A refused request (the 400 of a mistyped code) is logged by the browser; a script
        # error or a Content-Security-Policy violation is a bug.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"{path}: {msg.text}")

    def shot(self, page: Page, step: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{self.name}-{step}.png"), full_page=True)


@pytest.fixture
def pages(
    browser: Browser, demo: OperatorProcess, request: pytest.FixtureRequest
) -> Iterator[Pages]:
    context = browser.new_context()
    context.set_default_timeout(WAIT)
    # test_display_mode_… -> "display"; test_rejection_…[not-me] -> "rejection-not-me"
    test_name, _, param = request.node.name.removeprefix("test_").partition("[")
    name = "-".join(filter(None, [test_name.split("_")[0], param.rstrip("]")]))
    p = Pages(context, demo.url, name)
    try:
        yield p
    finally:
        context.close()
    assert not p.errors, p.errors


# ----------------------------------------------------------------------------- steps
def enroll(pages: Pages, token_id: str | None = None, **identity: str) -> tuple[Page, str]:
    """Open the phone page, enroll (optionally with a chosen token ID and identity)."""
    phone = pages.open("/demo/phone", PHONE)
    button = phone.get_by_role("button", name="Enroll", exact=True)
    expect(button).to_be_visible()
    if token_id is not None:
        phone.locator("#enroll-token-id").fill(token_id)
    if identity:
        phone.locator("summary", has_text="Demo identity").click()
        for field, value in identity.items():
            phone.locator(f"#{field}").fill(value)
    pages.shot(phone, "1-phone-enroll")
    button.click()
    shown = phone.locator("#token-id")
    expect(shown).to_have_text(re.compile(r"^[A-Za-z0-9._:@-]{1,128}$"))
    expect(phone.locator("#conn")).to_have_text("Online")
    token = shown.inner_text()
    if token_id is not None:
        assert token == token_id
    pages.shot(phone, "2-phone-enrolled")
    return phone, token


def start_login(pages: Pages, token: str, service: str, scopes: tuple[str, ...] = ()) -> Page:
    """Open the relying-party page, log in with ``token``; returns the page showing the code."""
    rp = pages.open("/demo/", DESKTOP)
    # Each service once, its code mode said once.
    expect(rp.locator("#service option")).to_have_text(
        ["Demo Shop (code on phone)", "Demo Bank (typed code)"]
    )
    # Prefilled from the phone's enrollment (same browser, localStorage) — typed anyway.
    expect(rp.locator("#token-id")).to_have_value(token)
    rp.locator("#token-id").fill(token)
    rp.locator("#service").select_option(service)
    for scope in scopes:
        rp.locator(f'#scopes input[value="{scope}"]').check()
    pages.shot(rp, "3-rp-form")
    rp.get_by_role("button", name="Log in with IDToken", exact=True).click()
    expect(rp.locator("#otp")).to_have_attribute("data-otp", OTP)
    return rp


def request_card(phone: Page, service_name: str) -> None:
    """Wait for the phone's poll to show the login request."""
    card = phone.locator("article.request")
    expect(card).to_have_count(1, timeout=WAIT)
    expect(card.locator(".service")).to_have_text(service_name)


def assert_fits(page: Page) -> None:
    """No horizontal scrolling at this viewport."""
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# ----------------------------------------------------------------------------- the demo
def test_display_mode_login_shows_verified_claims(pages: Pages) -> None:
    phone, token = enroll(pages)
    expect(phone.locator("#who")).to_have_text("Marie Dupont")
    rp = start_login(pages, token, "demo-shop", ("identity:age_over_18", "identity:trust_level"))
    code = rp.locator("#otp").get_attribute("data-otp")
    assert code is not None and OTP.match(code)
    expect(rp.locator("#waiting-title")).to_have_text("Approve on your phone")
    # The demo's phone is a browser tab, not an app.
    expect(rp.locator("#waiting-text")).to_have_text(
        "Open the phone page: Demo Shop asks you to sign in. Check that it shows the same code,"
        " then approve."
    )
    pages.shot(rp, "4-rp-code")

    request_card(phone, "Demo Shop")
    card = phone.locator("article.request")
    # display mode: the phone shows the same code; no input to type it.
    expect(card.locator(".code")).to_have_attribute("data-otp", code)
    expect(card.locator("input.code-input")).to_have_count(0)
    expect(card.locator("input[data-scope]")).to_have_count(3)
    assert_fits(phone)
    pages.shot(phone, "5-phone-request")
    card.get_by_role("button", name="Approve", exact=True).click()

    expect(rp.locator("#status-title")).to_have_text("Signed in")
    claims = rp.locator("#claims")
    expect(claims).to_be_visible()
    expect(claims).to_contain_text("Marie")
    expect(claims).to_contain_text("Dupont")
    expect(claims).to_contain_text(token)
    expect(claims.locator("tr", has_text="age_over_18")).to_contain_text("Yes")
    expect(rp.locator("#trust")).to_contain_text("Trust level 1")
    title_box = rp.locator("#status-title").bounding_box()
    claims_box = claims.bounding_box()
    assert title_box is not None and claims_box is not None
    assert title_box["y"] < claims_box["y"], "'Signed in' must be above the claims"
    expect(rp.locator("#jwt-header")).to_contain_text('"alg": "ES256"')
    payload = rp.locator("#jwt-payload")
    expect(payload).to_contain_text('"aud": "demo-shop"')
    expect(payload).to_contain_text(f'"sub": "{token}"')
    expect(payload).to_contain_text(
        '"scope": "identity:name identity:age_over_18 identity:trust_level"'
    )
    pages.shot(rp, "6-rp-signed-in")
    rp.set_viewport_size(PHONE)  # type: ignore[arg-type]
    assert_fits(rp)
    pages.shot(rp, "7-rp-signed-in-phone-size")

    expect(phone.locator("#history")).to_contain_text("Approved")
    expect(phone.locator("article.request")).to_have_count(0)
    pages.shot(phone, "8-phone-approved")


def test_typed_mode_login_with_a_withheld_scope(pages: Pages) -> None:
    token_id = f"typed-{uuid.uuid4().hex[:10]}"
    phone, token = enroll(
        pages,
        token_id,
        **{"given-name": "Ada", "family-name": "Lovelace", "email": "ada@example.org"},
    )
    rp = start_login(pages, token, "demo-typed", ("identity:age_over_18",))
    expect(rp.locator("#waiting-title")).to_have_text("Type this code on your phone")
    code = rp.locator("#otp").get_attribute("data-otp")
    assert code is not None and OTP.match(code)
    pages.shot(rp, "4-rp-code")

    expect(rp.locator("#waiting-text")).to_have_text(
        "Open the phone page: Demo Bank asks you to sign in. Type the code below there, then"
        " approve."
    )
    request_card(phone, "Demo Bank")
    card = phone.locator("article.request")
    expect(card.locator(".label", has_text="Share with")).to_have_text("Share with Demo Bank")
    expect(card.locator(".code")).to_have_count(0)  # typed mode: the phone never sees the code
    field = card.locator("input.code-input")
    # A mistyped code is refused and the request stays open.
    field.fill(f"{(int(code) + 1) % 1_000_000:06d}")
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".error")).to_contain_text("does not match")
    pages.shot(phone, "5-phone-wrong-code")
    # The user withholds "Over 18" and types the right code.
    card.locator("label.switch-row", has_text="identity:age_over_18").click()
    expect(card.locator('input[data-scope="identity:age_over_18"]')).not_to_be_checked()
    field.fill(code)
    pages.shot(phone, "6-phone-code-typed")
    card.get_by_role("button", name="Approve", exact=True).click()

    expect(rp.locator("#status-title")).to_have_text("Signed in")
    claims = rp.locator("#claims")
    expect(claims).to_contain_text("Ada")
    expect(claims).to_contain_text("Lovelace")
    expect(claims).not_to_contain_text("age_over_18")
    expect(rp.locator("#trust")).to_contain_text("Trust level 1")  # identity:basic
    expect(rp.locator("#jwt-payload")).to_contain_text('"aud": "demo-typed"')
    expect(rp.locator("#jwt-payload")).to_contain_text('"scope": "identity:basic"')
    pages.shot(rp, "7-rp-signed-in")
    expect(phone.locator("#history")).to_contain_text("Approved")
    pages.shot(phone, "8-phone-approved")


@pytest.mark.parametrize(
    ("button", "reason", "phone_says"),
    [("Reject", "User rejected", "Rejected"), ("Not me", "Not me", "Reported as not you")],
    ids=["reject", "not-me"],
)
def test_rejection_reaches_the_login_page(
    pages: Pages, button: str, reason: str, phone_says: str
) -> None:
    phone, token = enroll(pages)
    rp = start_login(pages, token, "demo-shop")
    request_card(phone, "Demo Shop")
    phone.locator("article.request").get_by_role("button", name=button, exact=True).click()

    expect(rp.locator("#status-title")).to_have_text("Login rejected")
    expect(rp.locator("#reject-reason")).to_have_text(reason)
    expect(rp.locator("#signed-in")).to_be_hidden()
    pages.shot(rp, "4-rp-rejected")
    expect(phone.locator("#history")).to_contain_text(phone_says)
    pages.shot(phone, "5-phone-rejected")


def test_unanswered_request_expires_on_both_pages(
    browser: Browser, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    proc = start_demo_operator(tmp_path, session_ttl=10)
    context = browser.new_context()
    context.set_default_timeout(WAIT)
    pages = Pages(context, proc.url, "expired")
    try:
        phone, token = enroll(pages)
        rp = start_login(pages, token, "demo-shop")
        request_card(phone, "Demo Shop")
        expect(rp.locator("#status-title")).to_have_text("The code expired", timeout=20_000)
        pages.shot(rp, "4-rp-expired")
        expect(phone.locator("#history")).to_contain_text("Request expired")
        expect(phone.locator("article.request")).to_have_count(0)
        pages.shot(phone, "5-phone-expired")
    finally:
        context.close()
        proc.stop()
    assert not pages.errors, pages.errors


def test_the_bare_address_leads_to_the_demo(demo: OperatorProcess) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as http:
        for method in ("GET", "HEAD"):
            resp = http.request(method, "/")
            assert resp.status_code == 302, method
            assert resp.headers["location"] == "/demo/"
        page = http.get("/", follow_redirects=True)
        assert page.status_code == 200 and "Log in with IDToken" in page.text


def test_the_demo_warning_is_logged_once(demo: OperatorProcess) -> None:
    lines = [line for line in demo.logs().splitlines() if "demo pages enabled" in line]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "warning" and entry["logger"] == "idtoken"
    assert "never enable [demo] in production" in entry["msg"]


# ----------------------------------------------------------------------------- the backend
def test_demo_backend_routes(demo: OperatorProcess) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as http:
        minted = http.post("/demo/api/enrollment-token", json={"tokenId": "chosen-1"})
        assert minted.status_code == 201
        claims = minted.json()["claims"]
        assert claims["iss"] == demo.url + "/demo/issuer"
        assert claims["aud"] == "idtoken-operator"
        assert claims["sub"] == "chosen-1"
        assert claims["exp"] - claims["iat"] == 300
        assert len(claims["jti"]) >= 16

        bad = http.post("/demo/api/enrollment-token", json={"tokenId": "a|b"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"

        unknown = http.post("/demo/api/login", json={"tokenId": "nobody", "serviceId": "demo-shop"})
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "unknown_token"

        # A forged Host must not make the demo's backend call another server.
        forged = http.post(
            "/demo/api/login",
            json={"tokenId": "nobody", "serviceId": "demo-shop"},
            headers={"Host": "attacker.example"},
        )
        assert forged.status_code == 400

        # A result whose hash was not made with this page's wsToken is refused.
        bad_hash = http.post(
            "/demo/api/verify",
            json={
                "serviceId": "demo-shop",
                "sessionId": "sess_x",
                "wsToken": "t",
                "jwt": "a.b.c",
                "hash": "00" * 32,
                "random": "0123456789abcdef",
            },
        )
        assert bad_hash.status_code == 400 and bad_hash.json()["error"] == "bad_hash"


async def test_demo_backend_in_process_logs_in_and_verifies(
    make_operator: OperatorFactory, tmp_path: Path
) -> None:
    """The JSON routes without a browser: mint, enroll (reference device), log in through the
    demo's backend, approve, then let the backend check the hash and verify the JWT."""
    demo_issuer = Issuer(issuer="http://127.0.0.1:8000/demo/issuer", kind="EC")
    key_file = tmp_path / "demo-issuer.key.pem"
    key_file.write_bytes(
        demo_issuer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    extra = f"\n[demo]\nenabled = true\nissuer_private_key_file = {toml_value(str(key_file))}\n"
    async with make_operator(store="memory", issuers=[demo_issuer], extra=extra) as op:
        config = (await op.http.get("/demo/api/config")).json()
        assert [s["id"] for s in config["services"]] == ["shop"]

        minted = await op.http.post(
            "/demo/api/enrollment-token", json={"givenName": "Grace", "familyName": "Hopper"}
        )
        assert minted.status_code == 201
        device = op.device()
        enrolled = await device.enroll(minted.json()["enrollmentToken"])
        assert enrolled.token_id == minted.json()["tokenId"]

        for _ in range(2):  # twice: the second verification uses the cached JWKS
            resp = await op.http.post(
                "/demo/api/login",
                json={
                    "tokenId": enrolled.token_id,
                    "serviceId": "shop",
                    "scopes": ["identity:name"],
                },
            )
            assert resp.status_code == 201
            login = resp.json()
            started = Initiation(
                session_id=login["sessionId"],
                auto_password=login["autoPassword"],
                ws_token=login["wsToken"],
                expires_at=login["expiresAt"],
                random=login["random"],
            )
            rp = RelyingParty(op.http, service_id="shop", issuer=op.settings.issuer)
            approval = await device.approve(
                started.session_id, started.auto_password, ["identity:name"]
            )
            assert approval.status_code == 200
            message = await rp.wait_result(started, timeout=10)
            body = {
                "serviceId": "shop",
                "sessionId": started.session_id,
                "wsToken": started.ws_token,
                "jwt": message["jwt"],
                "hash": message["hash"],
                "random": message["random"],
            }
            verified = await op.http.post("/demo/api/verify", json=body)
            assert verified.status_code == 200, verified.text
            result = verified.json()
            assert result["claims"] == {
                "tokenId": enrolled.token_id,
                "givenName": "Grace",
                "familyName": "Hopper",
            }
            assert result["header"]["alg"] == "ES256"
            assert result["payload"]["aud"] == "shop-audience"
            assert result["trustLevel"] is None

            wrong_page = await op.http.post("/demo/api/verify", json={**body, "wsToken": "other"})
            assert wrong_page.status_code == 400 and wrong_page.json()["error"] == "bad_hash"
