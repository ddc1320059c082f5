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
from idtoken.api.openapi import openapi_document
from idtoken.api.operations import WITH_BODIES
from idtoken.client import Device
from idtoken.client.device import Enrollment
from idtoken.errors import OperatorError
from idtoken.ids import ID_PATTERN, OTP_PATTERN
from idtoken.scopes import SCOPE_PATTERN
from idtoken.settings import load_settings, secret_digest
from idtoken.strictjson import loads_strict_json
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
SERVICES = [dict(DEFAULT_SERVICE), BANK]

MAX_EXAMPLES = 30
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# The keywords our schemas may use: a name outside JSON Schema (pydantic's `ge` for `minimum`,
# say) would be ignored by every reader, so the document would promise less than it checks.
KEYWORDS = {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "anyOf",
    "allOf", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "maxItems", "format", "description", "examples",
}  # fmt: skip
# Routes of the OpenID Connect provider (and CIBA), whose operations are not declared in the
# document yet: each is to be declared with idtoken.wire as the others are, then removed here.
UNDECLARED = {
    ("/bc-authorize", "post"),
    ("/authorize", "get"),
    ("/authorize", "post"),
    ("/authorize/session", "post"),
    ("/authorize/complete", "post"),
    ("/authorize/static/{name}", "get"),
    ("/token", "post"),
    ("/token", "options"),
    ("/userinfo", "get"),
    ("/userinfo", "post"),
    ("/userinfo", "options"),
}


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
    for name, schema in schemas.items():
        if name.endswith("Request"):
            assert schema["additionalProperties"] is False, name

    # Every error response is the Error schema; 429 and 503 carry Retry-After; every POST
    # documents 413 and 415.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    response = doc["components"]["responses"][name]
                if int(status) >= 400 and not (path == "/readyz" and status == "503"):
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
    assert served - UNDECLARED == documented
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
def passes_its_declaration(case: Any) -> bool:
    """Whether the case's body passes the validation the operator declares for it (strict JSON
    as sent, then the body's declaration)."""
    declared = {(o.method, o.path): o.request for o in WITH_BODIES}
    body = declared.get((case.method.lower(), case.path))
    if body is None or case.body is None:
        return False
    try:
        body.decode(loads_strict_json(json.dumps(case.body).encode()))
    except OperatorError:
        return False
    return True


# The refusals of rules that JSON Schema cannot express; each is stated in a description.
BEYOND_THE_SCHEMA = re.compile(
    "publicKeyPem must be a P-256 public key in SPKI PEM form"
    "|(pushSubscription|subscription)[.](keys[.]p256dh is not a point on P-256|endpoint must "
    "(be an https URL|be a valid URL|name a host|not carry credentials|not have a fragment"
    "|name its host, or give its address in the usual form"
    "|not point at a private, loopback or reserved address))"
    "|a requested scope is not allowed for this service"
    "|grantedScopes must be a subset of the requested scopes"
)


def valid_data_is_accepted(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Schemathesis' ``positive_data_acceptance``, with the one refusal the document allows
    schema-valid data: a 400 for a rule JSON Schema cannot express, which the member's
    description states (a PEM that holds no P-256 key, a push endpoint outside the URL rules
    or the address policy, a point off the curve, scopes the service does not allow). The body
    must pass the declared validation, so the refusal came from that later rule, and the
    refusal must be one of those rules'."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Exception:
        if (
            response.status_code == 400
            and passes_its_declaration(case)
            and BEYOND_THE_SCHEMA.fullmatch(response.json()["error_description"])
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
        headers: dict[str, str] | None = None,
        error: str | None = None,
    ) -> schemathesis.Response:
        """One request through schemathesis, with every check; returns the response."""
        operation = self.schema[path][method]
        if body is None:
            case = operation.Case(headers=headers)
        else:
            case = operation.Case(body=body, headers=headers, media_type="application/json")
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
    body = device.enroll_body(token, push_subscription=dying.to_json())
    data = live.call("POST", "/enroll", 201, body=body).json()
    device.enrollment = Enrollment(
        token_id=data["tokenId"],
        device_id=data["deviceId"],
        expires_at=data["expiresAt"],
        credential=data["credential"],
    )
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
            # Invalid data needs something to break: a body (GETs take no input worth negating).
            negative = "requestBody" in operation.definition.raw
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
        failures = await asyncio.to_thread(fuzz_every_operation, live)
        assert not failures, "\n\n".join(failures)
        assert time.monotonic() - started < 120
