"""GET /openapi.json: a valid OpenAPI 3.1 document, in step with the app's routes, and true of
the running server.

The last test loads the document from a live operator (real uvicorn; the embedded store and
Redis) and lets schemathesis check it two ways: a walk through the whole contract with
correctly signed requests, so that every success body and the interesting errors are checked
against their schemas, and generated requests (valid and invalid) for every operation, where
valid ones must be accepted and invalid ones refused. Schemathesis is synchronous, so it runs
in a worker thread while the operator serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from starlette.routing import Mount, Route, WebSocketRoute

import idtoken
from conftest import Operator, OperatorFactory
from idtoken.api.form import FORM
from idtoken.api.oidc_operations import OPERATIONS as OIDC_OPERATIONS
from idtoken.api.openapi import openapi_document
from idtoken.api.operations import WITH_BODIES
from idtoken.client import Device
from idtoken.client.device import Enrollment
from idtoken.errors import OperatorError
from idtoken.ids import ID_PATTERN, OTP_PATTERN
from idtoken.scopes import SCOPE_PATTERN
from idtoken.settings import load_settings, secret_digest
from idtoken.strictjson import loads_strict_json
from idtoken.wire.declare import Body
from oidc_support import page_config, pkce_pair, query_of
from pushreceiver import PushReceiver, Respond
from support import DEFAULT_SERVICE

METRICS_TOKEN = "metrics-token-0123456789"
METRICS = f'\n[metrics]\ntoken = "{METRICS_TOKEN}"\n'
DEMO = "\n[demo]\nenabled = true\n"
BANK_SECRET = "bank-client-secret-for-openapi"
BANK = {
    "id": "bank",
    "name": "Example Bank",
    "allowed_scopes": ["identity:name", "identity:trust_level"],
    "default_scopes": ["identity:name"],
    "client_secret_sha256": secret_digest(BANK_SECRET),
    "otp_mode": "typed",
}
# An OpenID Connect client of the code flow, and a CIBA client (poll mode).
WEBAPP_SECRET = "webapp-client-secret-for-openapi"
REDIRECT_URI = "http://127.0.0.1:9/callback"
WEBAPP = {
    **DEFAULT_SERVICE,
    "id": "webapp",
    "name": "Web App",
    "client_secret_sha256": secret_digest(WEBAPP_SECRET),
    "redirect_uris": [REDIRECT_URI],
}
DESK_SECRET = "desk-client-secret-for-openapi"
DESK = {
    **DEFAULT_SERVICE,
    "id": "desk",
    "name": "Help Desk",
    "client_secret_sha256": secret_digest(DESK_SECRET),
    "backchannel_token_delivery_mode": "poll",
}
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
SERVICES = [dict(DEFAULT_SERVICE), BANK, WEBAPP, DESK]

MAX_EXAMPLES = 30
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# The keywords our schemas may use: a name outside JSON Schema (pydantic's `ge` for `minimum`,
# say) would be ignored by every reader, so the document would promise less than it checks.
KEYWORDS = {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "anyOf",
    "allOf", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "maxItems", "format", "description", "examples",
}  # fmt: skip


async def fetch_document(op: Operator) -> dict[str, Any]:
    resp = await op.http.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    doc: dict[str, Any] = resp.json()
    return doc


def schema_objects(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Schema Object of an OpenAPI document: components.schemas and each `schema`."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if key == "schema" and isinstance(value, dict):
                yield here, value
            elif path == "#/components" and key == "schemas":
                for name, schema in value.items():
                    yield f"{here}/{name}", schema
            else:
                yield from schema_objects(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from schema_objects(value, f"{path}/{i}")


def subschemas(schema: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A schema and every schema inside it (properties, items, branches)."""
    yield where, schema
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key], f"{where}/{key}")
    for name, sub in schema.get("properties", {}).items():
        yield from subschemas(sub, f"{where}/properties/{name}")
    for key in ("anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from subschemas(sub, f"{where}/{key}/{i}")


def values_of(name: str, node: Any) -> Iterator[str]:
    """Every string value of a member called ``name`` anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name and isinstance(value, str):
                yield value
            else:
                yield from values_of(name, value)
    elif isinstance(node, list):
        for value in node:
            yield from values_of(name, value)


def as_json_schema_pattern(compiled: re.Pattern[str]) -> str:
    """``\\A...\\Z`` (Python, whole string) spelled as JSON Schema does (``^...$``)."""
    source = compiled.pattern
    assert source.startswith("\\A") and source.endswith("\\Z")
    return "^" + source[2:-2] + "$"


# ------------------------------------------------------------------------------ the document
async def test_document_is_valid_openapi_3_1(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(extra=METRICS) as op:
        doc = await fetch_document(op)
        again = await op.http.get("/openapi.json")
        assert again.content == json.dumps(doc, separators=(",", ":")).encode()
        assert op.app.state.openapi_body == again.content  # built once, kept per app
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == idtoken.__version__
    assert doc["servers"] == [{"url": op.settings.issuer}]
    assert doc == json.loads(json.dumps(openapi_document(op.settings)))

    # The OpenAPI 3.1 meta-schema (the one schemathesis ships) ...
    schemathesis.openapi.from_dict(doc).validate()
    # ... which leaves Schema Objects alone: each must be valid JSON Schema 2020-12.
    found = 0
    for where, schema in schema_objects(doc):
        try:
            jsonschema_rs.meta.validate({"$schema": JSON_SCHEMA_2020_12, **schema})
        except jsonschema_rs.ValidationError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
        found += 1
    assert found > 30
    for where, schema in schema_objects(doc):
        for name, node in subschemas(schema, where):
            assert set(node) <= KEYWORDS, (name, set(node) - KEYWORDS)
    # Every pattern compiles as a JSON Schema (ECMA-262) regex and as Python's.
    for pattern in values_of("pattern", doc):
        re.compile(pattern)
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern})

    # Every $ref resolves (in the document's own namespace).
    for ref in set(values_of("$ref", doc)):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(target, dict), ref


async def test_request_schemas_use_the_operators_own_rules(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(extra=METRICS) as op:
        doc = await fetch_document(op)
    schemas = doc["components"]["schemas"]
    assert schemas["Id"]["pattern"] == as_json_schema_pattern(ID_PATTERN)
    assert schemas["Scope"]["pattern"] == as_json_schema_pattern(SCOPE_PATTERN)
    assert schemas["Otp"]["pattern"] == as_json_schema_pattern(OTP_PATTERN)
    assert schemas["ScopeList"]["maxItems"] == 32
    assert schemas["Timestamp"]["maximum"] == 2**53 - 1
    assert schemas["Signature"]["maxLength"] == 200
    assert schemas["Timestamp"]["minimum"] == 1
    assert schemas["Timestamp"]["type"] == "integer"
    assert schemas["Error"] == {
        "type": "object",
        "description": "Every error body. Clients branch on `error` and the status code.",
        "properties": {
            "error": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "error_description": {"type": "string"},
        },
        "required": ["error", "error_description"],
        "additionalProperties": False,
    }
    # JSON bodies refuse unknown members; OAuth parameters (forms, the authorization query)
    # ignore them, as RFC 6749 §3.1 requires, and each is one string.
    declared: dict[str, Body[Any]] = {}
    for operation in (*WITH_BODIES, *OIDC_OPERATIONS):
        body = operation.request or operation.query
        if body is not None:
            declared[body.kind.__name__] = body
    assert {name for name in schemas if name.endswith("Request")} == set(declared)
    for name, body in declared.items():
        extra = schemas[name]["additionalProperties"]
        assert extra == (False if body.media_type == "application/json" else {"type": "string"})

    # Every error response is the Error schema; 429 and 503 carry Retry-After; every POST
    # documents 413 and 415.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    response = doc["components"]["responses"][name]
                if "text/html" in response.get("content", {}):  # the page, never JSON
                    assert path == "/authorize", path
                elif int(status) >= 400 and not (path == "/readyz" and status == "503"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}, path
                if status in ("429", "503") and path != "/readyz":
                    assert response["headers"]["Retry-After"]["required"] is True
            if method == "post":
                assert {"400", "413", "415", "503"} <= set(operation["responses"]), path

    initiate = doc["paths"]["/auth/initiate"]["post"]
    assert initiate["security"] == [{}, {"clientSecret": []}]
    assert set(initiate["responses"]) == {
        "201", "400", "401", "403", "404", "413", "415", "429", "503"
    }  # fmt: skip
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert set(doc["paths"]["/metrics"]["get"]["responses"]) == {"200", "401"}
    assert "304" in doc["paths"]["/.well-known/jwks.json"]["get"]["responses"]

    # The OAuth endpoints: the headers their standards require.
    authorize = doc["paths"]["/authorize"]
    assert authorize["get"]["responses"]["303"]["headers"]["Location"]["required"] is True
    assert "requestBody" not in authorize["get"]
    query = {p["name"]: p for p in authorize["get"]["parameters"]}
    assert {p["in"] for p in query.values()} == {"query"}
    assert {name for name, p in query.items() if p["required"]} == {
        "response_type", "client_id", "redirect_uri", "scope"
    }  # fmt: skip
    form = schemas["AuthorizationRequest"]["properties"]
    assert {name: p["schema"] for name, p in query.items()} == {
        name: {k: v for k, v in member.items() if k != "description"}
        for name, member in form.items()
    }
    assert query["state"]["schema"]["maxLength"] == 1024
    assert query["code_challenge"]["schema"]["pattern"] == "^[A-Za-z0-9_-]{43}$"
    for path in ("/token", "/bc-authorize"):
        post = doc["paths"][path]["post"]
        assert set(post["requestBody"]["content"]) == {"application/x-www-form-urlencoded"}
        assert post["responses"]["401"]["headers"]["WWW-Authenticate"]["schema"]["pattern"] == (
            "^Basic "
        )
        assert post["security"] == [{"clientBasic": []}, {}]
    token_ok = doc["paths"]["/token"]["post"]["responses"]["200"]["headers"]
    assert token_ok["Cache-Control"]["schema"] == {"const": "no-store"}
    for method in ("get", "post"):
        refused = doc["paths"]["/userinfo"][method]["responses"]["401"]
        assert refused["headers"]["WWW-Authenticate"]["required"] is True
    # The push keys' patterns are exact: 65 bytes starting 0x04, 16 bytes, both canonical.
    keys = schemas["PushKeys"]["properties"]
    assert re.fullmatch(keys["p256dh"]["pattern"][1:-1], "B" + "A" * 86)
    assert not re.fullmatch(keys["p256dh"]["pattern"][1:-1], "A" + "A" * 86)  # 0x00 first
    assert not re.fullmatch(keys["p256dh"]["pattern"][1:-1], "B" + "A" * 85 + "B")  # bits left
    assert "on the curve" in keys["p256dh"]["description"]


def test_what_the_document_says_follows_the_configuration(tmp_path: Any) -> None:
    """/metrics is documented as it answers with metrics off (404 only) and on (200, 401);
    / as a pointer, or as the redirect to the demo when the demo is on."""
    from support import OperatorConfig

    off = load_settings(OperatorConfig(tmp_path / "off").write())
    on = load_settings(OperatorConfig(tmp_path / "on", extra=METRICS + DEMO).write())
    metrics_off = openapi_document(off)["paths"]["/metrics"]["get"]
    assert set(metrics_off["responses"]) == {"404"}
    assert "security" not in metrics_off
    metrics_on = openapi_document(on)["paths"]["/metrics"]["get"]
    assert set(metrics_on["responses"]) == {"200", "401"}
    root_off = openapi_document(off)["paths"]["/"]["get"]["responses"]
    assert root_off["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Pointer"
    }
    root_on = openapi_document(on)["paths"]["/"]["get"]["responses"]
    assert set(root_on) == {"302"}
    assert root_on["302"]["headers"]["Location"]["schema"] == {"const": "/demo/"}


async def test_every_route_is_documented_and_nothing_else(
    make_operator: OperatorFactory, redis_url: str
) -> None:
    async with make_operator(extra=METRICS) as op:
        doc = await fetch_document(op)
        app = op.app
    served: set[tuple[str, str]] = set()
    sockets: list[str] = []
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            sockets.append(route.path)
            continue
        if isinstance(route, Mount) or route_path(route).startswith("/demo"):
            continue
        assert isinstance(route, Route), route
        # Starlette answers HEAD wherever GET is served; the document says so in its text.
        for method in (route.methods or set()) - {"HEAD"}:
            served.add((route.path, method.lower()))
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == documented
    assert "/openapi.json" in {path for path, _ in served}
    # The WebSocket cannot be an OpenAPI operation: its contract is in the description.
    assert sockets == ["/ws/session/{session_id}"]
    text = doc["info"]["description"]
    assert "/ws/session/{sessionId}?token={wsToken}" in text
    for needle in ("otp_ready", "approved", "rejected", "expired", "4001", "4004", "4009", "1009"):
        assert needle in text


def route_path(route: Any) -> str:
    path: str = getattr(route, "path", "")
    return path


async def test_document_follows_the_issuer(make_operator: OperatorFactory, redis_url: str) -> None:
    async with (
        make_operator(issuer_url="https://auth.example.test") as one,
        make_operator(issuer_url="https://login.example.test/idp") as two,
    ):
        assert (await fetch_document(one))["servers"] == [{"url": "https://auth.example.test"}]
        assert (await fetch_document(two))["servers"] == [{"url": "https://login.example.test/idp"}]


# ------------------------------------------------------------------------------ schemathesis
DECLARED: dict[tuple[str, str], Body[Any]] = {
    (o.method, o.path): body
    for o in (*WITH_BODIES, *OIDC_OPERATIONS)
    if (body := o.request or o.query) is not None
}
"""The declaration each operation's request (body or query) is read by."""


def passes_its_declaration(case: Any) -> bool:
    """Whether the case's request passes the validation the operator declares for it: a JSON
    body as sent (strict JSON, then its declaration), OAuth parameters as the form reader
    gives them (text, an empty one omitted)."""
    body = DECLARED.get((case.method.lower(), case.path))
    if body is None:
        return False
    if body.media_type == "application/json":
        value = case.body
        if value is None:
            return False
        value = loads_strict_json(json.dumps(value).encode())
    else:
        sent = case.query if case.method == "GET" else case.body
        if not isinstance(sent, dict):
            return False
        value = {k: v for k, v in sent.items() if v != ""}
    try:
        body.decode(value)
    except OperatorError:
        return False
    return True


_CLIENT_AUTHENTICATION = (
    "use one client authentication method, not two|client_id differs from the authenticated "
    "client|this client is not registered for CIBA"
)
_SCOPE_PARAMETER = (
    "the scope must include openid|a requested scope is unknown or not allowed for this client"
)
# The refusals of rules that JSON Schema cannot express, per operation; each is stated in a
# description (for /authorize, on its error page).
BEYOND_THE_SCHEMA = {
    operation: re.compile(pattern)
    for operation, pattern in {
        ("post", "/enroll"): "publicKeyPem must be a P-256 public key in SPKI PEM form"
        "|pushSubscription[.](keys[.]p256dh is not a point on P-256|endpoint must "
        "(be an https URL|be a valid URL|name a host|not carry credentials|not have a fragment"
        "|name its host, or give its address in the usual form"
        "|not point at a private, loopback or reserved address))",
        ("post", "/device/subscription"): "subscription[.](keys[.]p256dh is not a point on "
        "P-256|endpoint must (be an https URL|be a valid URL|name a host|not carry credentials"
        "|not have a fragment|name its host, or give its address in the usual form"
        "|not point at a private, loopback or reserved address))",
        ("post", "/auth/initiate"): "a requested scope is not allowed for this service",
        ("post", "/auth/verify"): "grantedScopes must be a subset of the requested scopes",
        **dict.fromkeys(
            (("get", "/authorize"), ("post", "/authorize")),
            "unknown client_id|this client is not registered for the authorization code flow"
            "|redirect_uri is missing or not registered for this client"
            "|the login request is too large",
        ),
        ("post", "/authorize/session"): "this login page (is not valid|has expired); start "
        "again from the site|a requested scope is not allowed for this service",
        ("post", "/token"): f"{_CLIENT_AUTHENTICATION}|code is required|auth_req_id is required"
        "|the code (is not valid|was issued to another client|has already been used"
        "|is not valid or has expired)|redirect_uri differs from the authorization request's"
        "|code_verifier given, but the request had no code_challenge"
        "|code_verifier does not match the code_challenge"
        "|auth_req_id (is not valid|was issued to another client)"
        "|the user has not answered yet|polled too fast: wait at least [0-9]+ seconds between "
        "polls|the user denied the request|the request expired before the user answered"
        "|the tokens of this auth_req_id have been handed out",
        ("post", "/bc-authorize"): f"{_CLIENT_AUTHENTICATION}|{_SCOPE_PARAMETER}"
        "|(request|request_uri|user_code) is not supported"
        "|exactly one of login_hint, login_hint_token, id_token_hint"
        "|(login_hint_token|id_token_hint) is not supported: name the user by login_hint"
        "|binding_message must be 1 to 64 characters, without leading or trailing spaces"
        "|binding_message may hold only letters, digits, punctuation, symbols and spaces"
        "|client_notification_token is required in ping mode",
    }.items()
}
_ERROR_PAGE = re.compile(r'<p class="error" role="alert">(.*?)</p>', re.S)


def refusal_description(response: Any) -> str:
    """The ``error_description`` of a refusal, or the text of an error page."""
    if response.headers.get("content-type", [""])[0].startswith("text/html"):
        found = _ERROR_PAGE.search(response.text)
        return html.unescape(found.group(1)) if found else ""
    description: str = response.json()["error_description"]
    return description


def valid_data_is_accepted(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Schemathesis' ``positive_data_acceptance``, with the one refusal the document allows
    schema-valid data: a 400 for a rule JSON Schema cannot express, which the member's
    description states (a PEM that holds no P-256 key, a push endpoint outside the URL rules
    or the address policy, a point off the curve, scopes the service does not allow, a client
    or a code that is not registered or not valid). The request must pass the declared
    validation, so the refusal came from that later rule, and the refusal must be one of the
    rules of that operation."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Exception:
        beyond = BEYOND_THE_SCHEMA.get((case.method.lower(), case.path))
        if (
            response.status_code == 400
            and beyond is not None
            and passes_its_declaration(case)
            and beyond.fullmatch(refusal_description(response))
        ):
            return None
        raise


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    valid_data_is_accepted,
    negative_data_rejection,
]


@dataclass
class Live:
    """What the worker thread needs to drive the live operator."""

    schema: schemathesis.BaseSchema
    base_url: str
    op: Operator
    receiver: PushReceiver

    def call(
        self,
        method: str,
        path: str,
        expected: int,
        *,
        body: Any = None,
        form: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        path_parameters: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        error: str | None = None,
    ) -> schemathesis.Response:
        """One request through schemathesis, with every check; returns the response. ``body``
        is sent as JSON, ``form`` form-encoded."""
        operation = self.schema[path][method]
        sent: dict[str, Any] = {}
        if body is not None:
            sent = {"body": body, "media_type": "application/json"}
        elif form is not None:
            sent = {"body": form, "media_type": FORM}
        case = operation.Case(headers=headers, query=query, path_parameters=path_parameters, **sent)
        resp = case.call_and_validate(base_url=self.base_url, checks=CHECKS)
        assert resp.status_code == expected, (method, path, resp.status_code, resp.text)
        if error is not None:
            assert resp.json()["error"] == error, (method, path, resp.text)
        return resp

    def raw(self, method: str, path: str, expected: int, **kwargs: Any) -> None:
        """A request schemathesis cannot build (wrong media type, oversized body), checked
        against the document all the same."""
        resp = requests.request(method, self.base_url + path, timeout=10, **kwargs)
        assert resp.status_code == expected, (path, resp.status_code, resp.text)
        case = self.schema[path][method].Case()
        case.validate_response(resp, checks=CHECKS)


def header(resp: schemathesis.Response, name: str) -> str:
    """A header of a schemathesis response (lowercase names, lists of values)."""
    values: list[str] = resp.headers[name.lower()]
    return values[0]


def enrolled(live: Live, device: Device, body: dict[str, Any]) -> Device:
    """The device, enrolled through ``/enroll`` with ``body``."""
    data = live.call("POST", "/enroll", 201, body=body).json()
    device.enrollment = Enrollment(
        token_id=data["tokenId"],
        device_id=data["deviceId"],
        expires_at=data["expiresAt"],
        credential=data["credential"],
    )
    return device


def walk_the_contract(live: Live) -> None:
    """Every endpoint's success and its characteristic errors, signed like a real phone."""
    op = live.op
    for path in ("/", "/openapi.json", "/healthz", "/readyz", "/.well-known/openid-configuration"):
        live.call("GET", path, 200)
    etag = header(live.call("GET", "/.well-known/jwks.json", 200), "ETag")
    live.call("GET", "/.well-known/jwks.json", 304, headers={"If-None-Match": etag})
    if op.settings.metrics.token is None:
        live.call("GET", "/metrics", 404, error="not_found")
    else:
        live.call("GET", "/metrics", 401, error="unauthorized")
        live.call("GET", "/metrics", 200, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})

    # Enrollment, with a push subscription that the push service will declare dead.
    vapid = live.call("GET", "/.well-known/openid-configuration", 200).json()[
        "push_vapid_public_key"
    ]
    dying, _ = live.receiver.new_subscription(Respond(410), application_server_key=vapid)
    device = Device(op.http, device_id="phone-oa")
    token = op.issuer.mint("user-oa")
    enrolled(live, device, device.enroll_body(token, push_subscription=dying.to_json()))
    again = Device(op.http, device_id="phone-oa").enroll_body(token)
    live.call("POST", "/enroll", 409, body=again, error="token_replayed")

    # A login the user approves; the push to the dead subscription marks it dead.
    shop = {"tokenId": "user-oa", "serviceId": "shop", "scopes": ["identity:name"]}
    started = live.call("POST", "/auth/initiate", 201, body={**shop, "nonce": "n-0S6_WzA2Mj"})
    started = started.json()
    pending = poll_pending(live, device, lambda body: body["push"] == "dead")
    (session,) = pending["sessions"]
    assert session["autoPassword"] == started["autoPassword"]  # display mode
    fresh, _ = live.receiver.new_subscription(application_server_key=vapid)
    live.call("POST", "/device/subscription", 200, body=device.subscription_body(fresh.to_json()))
    assert live.call("POST", "/auth/pending", 200, body=device.pending_body()).json()["push"] == (
        "active"
    )
    approve = device.verify_body(started["sessionId"], started["autoPassword"], ["identity:name"])
    live.call("POST", "/auth/verify", 200, body=approve)
    approve = device.verify_body(started["sessionId"], started["autoPassword"], ["identity:name"])
    live.call("POST", "/auth/verify", 409, body=approve, error="session_not_pending")

    # Relying-party errors.
    for change, status, error in (
        ({"serviceId": "nope"}, 404, "unknown_service"),
        ({"tokenId": "nobody"}, 404, "unknown_token"),
        ({"scopes": ["identity:phone"]}, 400, "invalid_scope"),
    ):
        live.call("POST", "/auth/initiate", status, body={**shop, **change}, error=error)
    bank = {"tokenId": "user-oa", "serviceId": "bank"}
    resp = live.call("POST", "/auth/initiate", 401, body=bank, error="invalid_client")
    assert header(resp, "WWW-Authenticate").startswith("Bearer ")
    typed = live.call(
        "POST", "/auth/initiate", 201, body=bank, headers={"Authorization": f"Bearer {BANK_SECRET}"}
    ).json()

    # Typed mode: no code on the phone; three wrong codes end the session, then 429.
    listed = live.call("POST", "/auth/pending", 200, body=device.pending_body()).json()
    assert [s for s in listed["sessions"] if "autoPassword" in s] == []
    wrong = "000000" if typed["autoPassword"] != "000000" else "111111"
    for _ in range(3):
        attempt = device.verify_body(typed["sessionId"], wrong, ["identity:name"])
        live.call("POST", "/auth/verify", 400, body=attempt, error="invalid_otp")
    attempt = device.verify_body(typed["sessionId"], typed["autoPassword"], ["identity:name"])
    resp = live.call("POST", "/auth/verify", 429, body=attempt, error="too_many_requests")
    assert int(header(resp, "Retry-After")) >= 1

    # Rejections, a fraud report, and what follows it.
    started = live.call("POST", "/auth/initiate", 201, body=shop).json()
    live.call("POST", "/auth/reject", 200, body=device.reject_body(started["sessionId"]))
    live.call(
        "POST",
        "/auth/reject",
        409,
        body=device.reject_body(started["sessionId"]),
        error="session_not_pending",
    )
    started = live.call("POST", "/auth/initiate", 201, body=shop).json()
    live.call("POST", "/auth/reject", 200, body=device.reject_body(started["sessionId"], "not_me"))
    resp = live.call("POST", "/auth/initiate", 429, body=shop, error="too_many_requests")
    assert int(header(resp, "Retry-After")) >= 1

    # Mobile errors: another token's session, an unknown one, a stale or malformed request.
    other = Device(op.http, device_id="phone-ob").enroll_body(op.issuer.mint("user-ob"))
    live.call("POST", "/enroll", 201, body=other)
    bank_login = live.call(
        "POST",
        "/auth/initiate",
        201,
        body={"tokenId": "user-ob", "serviceId": "bank"},
        headers={"Authorization": f"Bearer {BANK_SECRET}"},
    ).json()
    theirs = device.verify_body(bank_login["sessionId"], "123456", [], token_id="user-oa")
    live.call("POST", "/auth/verify", 403, body=theirs, error="device_mismatch")
    unknown = device.reject_body("sess_doesnotexist")
    live.call("POST", "/auth/reject", 404, body=unknown, error="unknown_session")
    stale = {**device.pending_body(), "timestamp": 1}
    live.call("POST", "/auth/pending", 401, body=stale, error="invalid_signature")
    live.call("POST", "/auth/pending", 400, body={"tokenId": "user-oa"}, error="invalid_request")
    live.call(
        "POST",
        "/auth/pending",
        400,
        body={**device.pending_body(), "extra": 1},
        error="invalid_request",
    )

    # Media type and size, before any parsing.
    live.raw("POST", "/auth/pending", 415, data=b"{}", headers={"Content-Type": "text/plain"})
    live.raw("POST", "/enroll", 413, json={"pad": "x" * (64 * 1024)})


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def walk_the_standard_doors(live: Live) -> None:
    """OpenID Connect through the hosted page, the token endpoint and userinfo, then CIBA,
    with their characteristic answers: pages, redirects, challenges and the OAuth codes."""
    op = live.op
    device = Device(op.http, device_id="phone-oc")
    enrolled(live, device, device.enroll_body(op.issuer.mint("user-oc")))

    # The authorization request: the page, by query and by form; an error the client hears
    # of at its redirect URI; one that is not the client's own, on the error page.
    verifier, challenge = pkce_pair()
    request = {
        "response_type": "code",
        "client_id": "webapp",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile",
        "state": "st-oa",
        "nonce": "n-oa",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    shown = live.call("GET", "/authorize", 200, query=request)
    assert "frame-ancestors 'none'" in header(shown, "Content-Security-Policy")
    handle = page_config(shown.text)["handle"]
    live.call("POST", "/authorize", 200, form=request)
    resp = live.call("GET", "/authorize", 303, query={**request, "prompt": "none"})
    assert query_of(header(resp, "Location"))["error"] == "login_required"
    resp = live.call("POST", "/authorize", 400, form={**request, "client_id": "nobody"})
    assert refusal_description(resp) == "unknown client_id"
    static = "/authorize/static/{name}"
    live.call("GET", static, 200, path_parameters={"name": "authorize.js"})
    live.call("GET", static, 404, path_parameters={"name": "other.js"}, error="not_found")

    # The page's own calls, the phone's approval, and the code at the token endpoint.
    started = live.call(
        "POST", "/authorize/session", 201, body={"handle": handle, "tokenId": "user-oc"}
    ).json()
    forged = {"handle": "A" * 200, "tokenId": "user-oc"}
    live.call("POST", "/authorize/session", 400, body=forged, error="invalid_request")
    login = {"sessionId": started["sessionId"], "wsToken": started["wsToken"]}
    live.call("POST", "/authorize/complete", 409, body=login, error="authorization_pending")
    approve = device.verify_body(started["sessionId"], started["autoPassword"], ["identity:name"])
    live.call("POST", "/auth/verify", 200, body=approve)
    redirect = live.call("POST", "/authorize/complete", 200, body=login).json()["redirect"]
    exchange = {
        "grant_type": "authorization_code",
        "code": query_of(redirect)["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    webapp = basic("webapp", WEBAPP_SECRET)
    resp = live.call(
        "POST", "/token", 401, form=exchange, headers=basic("webapp", "x"), error="invalid_client"
    )
    assert header(resp, "WWW-Authenticate").startswith("Basic ")
    live.raw("POST", "/token", 415, json=exchange, headers=webapp)
    tokens = live.call("POST", "/token", 200, form=exchange, headers=webapp).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert live.call("GET", "/userinfo", 200, headers=bearer).json()["sub"] == "user-oc"
    live.call("POST", "/userinfo", 200, form={"access_token": tokens["access_token"]})
    resp = live.call(
        "GET", "/userinfo", 401, headers={"Authorization": "Bearer x"}, error="invalid_token"
    )
    assert "invalid_token" in header(resp, "WWW-Authenticate")
    live.call("POST", "/userinfo", 401, error="invalid_request")
    live.call("POST", "/token", 400, form=exchange, headers=webapp, error="invalid_grant")
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["access_token"]}
    live.call("POST", "/token", 400, form=refresh, headers=webapp, error="unsupported_grant_type")
    for path in ("/token", "/userinfo"):
        live.call("OPTIONS", path, 204)

    # CIBA: a request the phone approves, collected once; one still waiting; refusals.
    desk = basic("desk", DESK_SECRET)
    ask = {"scope": "openid profile", "login_hint": "user-oc", "binding_message": "Call 42"}
    started = live.call("POST", "/bc-authorize", 200, form=ask, headers=desk).json()
    listed = poll_pending(live, device, lambda body: bool(body["sessions"]))
    (view,) = listed["sessions"]
    assert view["backchannel"] is True and view["bindingMessage"] == "Call 42"
    approve = device.verify_body(
        view["sessionId"], view["autoPassword"], ["identity:name"], binding_message="Call 42"
    )
    live.call("POST", "/auth/verify", 200, body=approve)
    poll = {"grant_type": CIBA_GRANT, "auth_req_id": started["auth_req_id"]}
    live.call("POST", "/token", 200, form=poll, headers=desk)
    waiting = live.call(
        "POST", "/bc-authorize", 200, form={**ask, "binding_message": "Call 43"}, headers=desk
    ).json()
    poll["auth_req_id"] = waiting["auth_req_id"]
    live.call("POST", "/token", 400, form=poll, headers=desk, error="authorization_pending")
    for change, error in (
        ({"binding_message": " Call 44"}, "invalid_binding_message"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"requested_expiry": "0"}, "invalid_request"),
        ({"login_hint": "user-oc", "id_token_hint": "eyJ.x.y"}, "invalid_request"),
    ):
        live.call("POST", "/bc-authorize", 400, form={**ask, **change}, headers=desk, error=error)
    resp = live.call(
        "POST", "/bc-authorize", 401, form=ask, headers=basic("desk", "x"), error="invalid_client"
    )
    assert header(resp, "WWW-Authenticate").startswith("Basic ")


def poll_pending(
    live: Live, device: Device, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = live.call(
            "POST", "/auth/pending", 200, body=device.pending_body()
        ).json()
        if done(body) or time.monotonic() > deadline:
            assert done(body), body
            return body
        time.sleep(0.05)


def fuzz_every_operation(live: Live) -> list[str]:
    """Generated requests, valid and invalid, for every operation; the failures found."""
    failures: list[str] = []
    operations = []
    for result in live.schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    documented = live.schema.raw_schema["paths"]
    # Schemathesis leaves out the operation that served the document (the walk calls it).
    assert sorted(o.label for o in operations) == sorted(
        f"{method.upper()} {path}"
        for path, item in documented.items()
        for method in item
        if path != "/openapi.json"
    )
    settings = hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    with requests.Session() as session:
        for operation in operations:
            # Invalid data needs something to break: a body, a query or a path parameter.
            raw = operation.definition.raw
            negative = "requestBody" in raw or any(
                parameter["in"] in ("query", "path") for parameter in raw.get("parameters", [])
            )
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative else [])
            for mode in modes:

                @settings
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    case.call_and_validate(base_url=live.base_url, session=session, checks=CHECKS)

                try:
                    run()
                except (Exception, BaseExceptionGroup) as exc:  # collect all, report at the end
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


@pytest.mark.parametrize(
    ("store", "extra"),
    [
        pytest.param("memory", "", id="embedded-store-metrics-off"),
        pytest.param("redis", METRICS, id="redis-metrics-on"),
    ],
)
async def test_the_running_server_conforms_to_its_document(
    make_operator: OperatorFactory, redis_url: str, store: str, extra: str
) -> None:
    async with (
        make_operator(store=store, extra=extra, services=SERVICES) as op,
        PushReceiver() as receiver,
    ):
        url = op.base_url + "/openapi.json"
        schema = await asyncio.to_thread(schemathesis.openapi.from_url, url)
        live = Live(schema, op.base_url, op, receiver)
        started = time.monotonic()
        # The walk first: generated /enroll requests use up the per-address enrollment limit.
        await asyncio.to_thread(walk_the_contract, live)
        await asyncio.to_thread(walk_the_standard_doors, live)
        failures = await asyncio.to_thread(fuzz_every_operation, live)
        assert not failures, "\n\n".join(failures)
        assert time.monotonic() - started < 120
