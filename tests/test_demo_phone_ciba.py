"""The demo phone page answers a backchannel (OpenID CIBA) request, in headless Chromium.

The demo operator runs as in test_demo_browser.py, with one more service in its configuration:
a CIBA poll-mode client. The client's back end (plain httpx, ``client_secret_basic``) posts
``/bc-authorize`` naming the phone's token ID and a binding message; the phone page shows that
message in place of a code to compare, the user approves (WebCrypto signs the binding message's
SHA-256 into the approval, docs/mobile-app.md §7) or rejects, and the client's poll of ``/token``
gets the tokens or ``access_denied``.

Screenshots of the phone card go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import Locator, Page, expect

from ciba_support import AUTH_REQ_ID, CIBA_GRANT, POLL_CLIENT, POLL_SECRET, SCOPE, error_of
from support import OperatorProcess, toml_value
from test_demo_browser import (
    SHOTS,
    WAIT,
    Pages,
    assert_fits,
    browser,
    enroll,
    pages,
    start_demo_operator,
)

__all__ = ["browser", "pages"]  # fixtures; `pages` uses this module's `demo`

BINDING = "Call 4711 – Café"  # an en dash and a precomposed é
# The same client once more with typed codes: a backchannel request has no page to read a code
# from, so its phone shows the binding message all the same and never asks for a code.
CLIENTS = [POLL_CLIENT, {**POLL_CLIENT, "id": "desk-typed", "otp_mode": "typed"}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The demo operator with a CIBA poll client added to the configuration ``demo init``
    wrote. The first start, on the embedded store, holds nothing yet: it is restarted on the
    extended configuration."""
    proc = start_demo_operator(tmp_path_factory.mktemp("demo-ciba"))
    proc.stop()
    with proc.config_file.open("a") as fh:
        for client in CLIENTS:
            service = "\n".join(f"{k} = {toml_value(v)}" for k, v in client.items())
            fh.write(f"\n[[services]]\n{service}\n")
    try:
        yield proc.start()
    finally:
        proc.stop()


class Poller:
    """The CIBA client's back end, polling no sooner than the interval it was given."""

    def __init__(self, base_url: str, client_id: str) -> None:
        self.client_id = client_id
        self.http = httpx.Client(
            base_url=base_url, auth=httpx.BasicAuth(client_id, POLL_SECRET), timeout=10
        )
        self.auth_req_id = ""
        self.interval = 0
        self.last_poll = 0.0

    def close(self) -> None:
        self.http.close()

    def start(self, login_hint: str, binding_message: str) -> None:
        resp = self.http.post(
            "/bc-authorize",
            data={"scope": SCOPE, "login_hint": login_hint, "binding_message": binding_message},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"auth_req_id", "expires_in", "interval"}, body
        assert AUTH_REQ_ID.match(body["auth_req_id"])
        self.auth_req_id, self.interval = body["auth_req_id"], body["interval"]

    def poll(self) -> httpx.Response:
        wait = self.last_poll + self.interval - time.monotonic()
        if self.last_poll and wait > 0:
            time.sleep(wait)  # a compliant client (CIBA Core §7.3), never slow_down
        resp = self.http.post(
            "/token", data={"grant_type": CIBA_GRANT, "auth_req_id": self.auth_req_id}
        )
        # Counted from the answer: the operator saw the poll before it, never after.
        self.last_poll = time.monotonic()
        return resp


@pytest.fixture
def client(demo: OperatorProcess, request: pytest.FixtureRequest) -> Iterator[Poller]:
    """The display-mode client, or the one a test names by indirect parametrisation."""
    poller = Poller(demo.url, getattr(request, "param", str(POLL_CLIENT["id"])))
    try:
        yield poller
    finally:
        poller.close()


def backchannel_card(phone: Page, shown: str) -> Locator:
    """The request on the phone: the client's name and the binding message, no code."""
    card = phone.locator("article.request")
    expect(card).to_have_count(1, timeout=WAIT)
    expect(card.locator(".service")).to_have_text(str(POLL_CLIENT["name"]))
    expect(card.locator(".eyebrow")).to_have_text("Check that the caller or terminal shows")
    binding = card.locator(".binding")
    expect(binding).to_have_text(shown)
    assert binding.inner_text() == shown  # exactly, not only after whitespace normalisation
    # Nothing to compare or type: no code in the card, not even as an attribute.
    expect(card.locator(".code, [data-otp], input.code-input")).to_have_count(0)
    expect(card.locator("input[data-scope]")).to_have_count(2)  # profile: name, date of birth
    return card


def shoot(pages: Pages, card: Locator, step: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(path=str(SHOTS / f"{pages.name}-{step}.png"))


@pytest.mark.parametrize(
    ("sent", "client"),
    [
        (BINDING, "desk"),
        # Decomposed, the operator normalises the message to NFC: the phone shows and signs that.
        (unicodedata.normalize("NFD", BINDING), "desk"),
        (BINDING, "desk-typed"),
    ],
    ids=["precomposed", "decomposed", "typed-service"],
    indirect=["client"],
)
def test_ciba_approval_on_the_demo_phone(pages: Pages, client: Poller, sent: str) -> None:
    pages.name = "ciba-approve-" + pages.name.partition("-")[2]
    phone, token = enroll(pages)
    client.start(token, sent)
    pending = client.poll()
    assert pending.status_code == 400 and error_of(pending) == "authorization_pending"

    card = backchannel_card(phone, BINDING)
    assert_fits(phone)
    shoot(pages, card, "1-phone-card")
    pages.shot(phone, "2-phone-request")
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(phone.locator("#history")).to_contain_text("Approved")
    expect(phone.locator("article.request")).to_have_count(0)
    pages.shot(phone, "3-phone-approved")

    tokens = client.poll()
    assert tokens.status_code == 200, tokens.text
    body: dict[str, Any] = tokens.json()
    jwks = KeySet.import_key_set(client.http.get("/.well-known/jwks.json").json())
    claims = jwt.decode(body["id_token"], jwks, algorithms=["ES256"]).claims
    assert claims["sub"] == token
    assert claims["aud"] == client.client_id
    assert claims["amr"] == ["pop", "user"]
    assert claims["given_name"] == "Marie"  # the demo identity the phone enrolled with


def test_ciba_rejection_on_the_demo_phone(pages: Pages, client: Poller) -> None:
    pages.name = "ciba-reject"
    phone, token = enroll(pages)
    client.start(token, BINDING)
    card = backchannel_card(phone, BINDING)
    card.get_by_role("button", name="Reject", exact=True).click()
    expect(phone.locator("#history")).to_contain_text("Rejected")
    pages.shot(phone, "1-phone-rejected")

    denied = client.poll()
    assert denied.status_code == 400 and error_of(denied) == "access_denied"
