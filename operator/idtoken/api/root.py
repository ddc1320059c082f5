"""GET / : where to go from the operator's bare address.

Not an error: whoever opens the address learns where to go. A server that runs the demo leads
to the demo's login page; any other answers a short document naming the discovery document,
the OpenAPI document and the documentation.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idtoken.api.responses import json_response
from idtoken.api.runtime import runtime

DOCUMENTATION = (
    "docs/ in the IDToken Operator source: relying-party.md to log users in, mobile-app.md for "
    "phone apps, operator-guide.md to run the operator"
)


async def root(request: Request) -> Response:
    settings = runtime(request).settings
    if settings.demo.enabled:
        # Temporary (302): the demo is there only while the configuration enables it.
        return RedirectResponse("/demo/", status_code=302, headers={"Cache-Control": "no-store"})
    base = settings.issuer
    return json_response(
        {
            "service": "IDToken Operator",
            "issuer": base,
            "openid_configuration": f"{base}/.well-known/openid-configuration",
            "openapi": f"{base}/openapi.json",
            "documentation": DOCUMENTATION,
        }
    )
