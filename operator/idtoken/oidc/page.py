"""The hosted login page's HTML: the login form and the error page, from one template.

Every value is HTML-escaped; the page's data travels as a JSON data block (never executed)
whose ``<`` are escaped, so no value can end the block. The page's script, style and icon are
static files of this package served by the operator, under a Content-Security-Policy that
allows nothing else (see :func:`security_headers`).
"""

from __future__ import annotations

import html
import json
from importlib import resources
from string import Template
from typing import Any

from idtoken.scopes import SCOPE_LABELS

STATIC_TYPES = {
    "authorize.js": "text/javascript; charset=utf-8",
    "authorize.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _asset(name: str) -> str:
    return resources.files("idtoken.oidc").joinpath("static", name).read_text(encoding="utf-8")


_TEMPLATE = Template(_asset("authorize.html"))


def static_asset(name: str) -> bytes | None:
    """A static file of the page, or None."""
    return _asset(name).encode("utf-8") if name in STATIC_TYPES else None


def security_headers(ws_origin: str) -> dict[str, str]:
    """Nothing but the page's own script, style and socket; never in a frame."""
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"connect-src 'self' {ws_origin}",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _render(title: str, heading: str, body: str, config: dict[str, Any]) -> str:
    data = json.dumps(config, separators=(",", ":")).replace("<", "\\u003c")
    return _TEMPLATE.substitute(
        title=html.escape(title), heading=html.escape(heading), body=body, config=data
    )


def login_page(
    *, client_name: str, scopes: tuple[str, ...], handle: str, otp_mode: str, login_hint: str | None
) -> str:
    name = html.escape(client_name)
    if scopes:
        items = "".join(f"<li>{html.escape(SCOPE_LABELS.get(s, s))}</li>" for s in scopes)
        asks = (
            f"<p>{name} asks for the following. Your phone lets you choose what to share.</p>"
            f'<ul class="claims">{items}</ul>'
        )
    else:
        asks = f'<p class="muted">{name} asks only to know that it is you: no personal details.</p>'
    hint = html.escape(login_hint or "", quote=True)
    # With a hint the page starts at once: the question is shown only if that start fails.
    body = f"""{asks}
  <form id="start" novalidate{" hidden" if login_hint else ""}>
    <label for="token-id">Your token ID</label>
    <input id="token-id" name="tokenId" value="{hint}" autocomplete="username"
      autocapitalize="off" spellcheck="false" required>
    <button id="continue" type="submit">Continue</button>
  </form>
  <section id="waiting" hidden>
    <p>We sent a login request to your phone.</p>
    <p class="code" id="code" aria-live="polite"></p>
    <p id="status" class="muted"></p>
  </section>
  <p id="problem" class="error" role="alert" hidden></p>"""
    config = {"handle": handle, "otpMode": otp_mode, "loginHint": login_hint}
    return _render(f"Log in to {client_name}", f"Log in to {client_name}", body, config)


def error_page(description: str) -> str:
    body = (
        f'<p class="error" role="alert">{html.escape(description)}</p>'
        '<p class="muted">Go back to the site and start the login again. If this keeps '
        "happening, the site's login settings need fixing.</p>"
    )
    return _render("Login error", "This login cannot continue", body, {})
