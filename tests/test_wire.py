"""The declaration layer (idtoken.wire) on its own: what a body accepts, how it refuses, and that
the JSON Schema it writes says the same.

Every case is checked twice: by the body's own validation and by a JSON Schema 2020-12
validator (jsonschema_rs) over the schema generated from the same declaration; they must agree,
except where a rule is stated to lie beyond JSON Schema.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, NotRequired

import jsonschema_rs
import pytest
from pydantic import Field, with_config
from typing_extensions import TypedDict

from idtoken.api.bodies import ENROLL, INITIATE, VERIFY
from idtoken.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    OperatorError,
    UnsupportedGrantType,
)
from idtoken.wire.declare import PARAMETERS, STRICT, Body, Kind, refuse_by, refuse_with
from idtoken.wire.kinds import Id, ScopeList, Timestamp, choice, scope_list_refusal, text
from idtoken.wire.operation import query_parameters
from idtoken.wire.schema import components


@with_config(STRICT)
class Sample(TypedDict):
    """A body with one member of each kind."""

    tokenId: Id
    timestamp: Timestamp
    scopes: NotRequired[Annotated[ScopeList, Kind(refuse=scope_list_refusal(InvalidScope))] | None]
    nonce: NotRequired[Annotated[str, text(8)] | None]
    reason: NotRequired[Annotated[str, choice(["yes", "no"])]]
    count: NotRequired[
        Annotated[int, Kind(Field(ge=1, le=3), refuse=refuse_with(lambda n: f"{n} is 1 to 3"))]
    ]


SAMPLE = Body(Sample)
VALID: dict[str, Any] = {"tokenId": "user-1", "timestamp": 1_700_000_000_000}


@pytest.fixture(scope="module")
def schema() -> jsonschema_rs.Validator:
    defs = components([Sample])
    return jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/Sample", "components": {"schemas": defs}}
    )


def refusal(value: Any) -> OperatorError:
    with pytest.raises(OperatorError) as caught:
        SAMPLE.decode(value)
    return caught.value


ACCEPTED = [
    pytest.param({}, id="required-only"),
    pytest.param({"scopes": [], "nonce": "n", "reason": "no", "count": 3}, id="all"),
    pytest.param({"scopes": None, "nonce": None}, id="optional-null"),
    pytest.param({"timestamp": 1_700_000_000_000.0}, id="timestamp-zero-fraction"),
    pytest.param({"timestamp": 1.7e12}, id="timestamp-exponent"),
    pytest.param({"timestamp": 2**53 - 1}, id="timestamp-largest"),
    pytest.param({"nonce": "\u00e9\U0001f600"}, id="text-beyond-ascii"),
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_accepted_by_the_body_and_by_its_schema(
    change: dict[str, Any], schema: jsonschema_rs.Validator
) -> None:
    value = {**VALID, **change}
    decoded = SAMPLE.decode(value)
    assert schema.is_valid(value)
    if isinstance(value["timestamp"], float):  # read as the integer it is
        assert decoded["timestamp"] == int(value["timestamp"])
        assert type(decoded["timestamp"]) is int


REFUSED = [
    # (change, error class, description)
    ({"extra": 1}, InvalidRequest, "unknown field 'extra'"),
    ({"x" * 5000: 1}, InvalidRequest, "unknown field '" + "x" * 40 + "'"),
    ({"a\u0000": 1}, InvalidRequest, "unknown field (unprintable)"),
    ({"tokenId": None}, InvalidRequest, "tokenId is required"),
    ({"tokenId": "user-1\n"}, InvalidRequest, "tokenId must match ^[A-Za-z0-9._:@-]{1,128}$"),
    ({"tokenId": "a|b"}, InvalidRequest, "tokenId must match ^[A-Za-z0-9._:@-]{1,128}$"),
    ({"tokenId": 5}, InvalidRequest, "tokenId must match ^[A-Za-z0-9._:@-]{1,128}$"),
    ({"timestamp": True}, InvalidRequest, "timestamp must be Unix epoch milliseconds (an integer)"),
    ({"timestamp": "5"}, InvalidRequest, "timestamp must be Unix epoch milliseconds (an integer)"),
    ({"timestamp": 1.5}, InvalidRequest, "timestamp must be Unix epoch milliseconds (an integer)"),
    ({"timestamp": 0}, InvalidRequest, "timestamp must be Unix epoch milliseconds (an integer)"),
    (
        {"timestamp": 2**53},
        InvalidRequest,
        "timestamp must be Unix epoch milliseconds (an integer)",
    ),
    ({"scopes": "a b"}, InvalidRequest, "scopes must be a list of at most 32 scopes"),
    ({"scopes": ["a"] * 33}, InvalidRequest, "scopes must be a list of at most 32 scopes"),
    ({"scopes": ["A", 42]}, InvalidRequest, "scopes must be a list of strings"),
    ({"scopes": ["A"]}, InvalidScope, "scopes contains a malformed scope"),
    ({"scopes": ["a\n"]}, InvalidScope, "scopes contains a malformed scope"),
    ({"nonce": ""}, InvalidRequest, "nonce must be a string of 1 to 8 characters"),
    ({"nonce": "n" * 9}, InvalidRequest, "nonce must be a string of 1 to 8 characters"),
    ({"nonce": "a\u007fb"}, InvalidRequest, "nonce must not contain control characters"),
    ({"nonce": "ab\n"}, InvalidRequest, "nonce must not contain control characters"),
    ({"reason": "maybe"}, InvalidRequest, "reason must be one of: yes, no"),
    ({"reason": None}, InvalidRequest, "reason must be one of: yes, no"),
    ({"count": 4}, InvalidRequest, "count is 1 to 3"),
]


@pytest.mark.parametrize(("change", "error", "description"), REFUSED)
def test_refused_by_the_body_and_by_its_schema(
    change: dict[str, Any],
    error: type[OperatorError],
    description: str,
    schema: jsonschema_rs.Validator,
) -> None:
    value = {**VALID, **change}
    refused = refusal(value)
    assert type(refused) is error
    assert refused.description == description
    assert not schema.is_valid(value)


def test_missing_required_member_is_named_and_optional_ones_are_not() -> None:
    assert refusal({"timestamp": 1}).description == "tokenId is required"
    # A bad optional member is reported as itself, never as a missing one.
    assert refusal({**VALID, "scopes": ["A"]}).description == "scopes contains a malformed scope"
    assert SAMPLE.required == ("tokenId", "timestamp")
    assert INITIATE.required == ("tokenId", "serviceId")


def test_refusals_come_in_order_unknown_then_missing_then_the_first_bad_member() -> None:
    value = {"nonce": "", "timestamp": True, "zzz": 1}
    assert refusal(value).description == "unknown field 'zzz'"
    del value["zzz"]
    assert refusal(value).description == "tokenId is required"
    value["tokenId"] = "u"
    assert refusal(value).description.startswith("timestamp ")


def test_a_refusal_never_echoes_the_value() -> None:
    secret = "s3cr3t-value-" * 20
    for change in ({"tokenId": secret}, {"nonce": secret}, {"reason": secret}):
        assert "s3cr3t" not in refusal({**VALID, **change}).description


def test_the_api_bodies_decode_their_own_examples() -> None:
    """Smoke test of the real declarations (their full cases are in test_malformed_input)."""
    initiate = INITIATE.decode({"tokenId": "u", "serviceId": "shop", "scopes": ["identity:name"]})
    assert initiate == {"tokenId": "u", "serviceId": "shop", "scopes": ["identity:name"]}
    verify = {
        "sessionId": "sess_x",
        "tokenId": "u",
        "otp": "012345",
        "grantedScopes": [],
        "timestamp": 1.0,
        "credential": "a.b.c",
        "signature": "c2ln",
    }
    assert VERIFY.decode(verify)["timestamp"] == 1
    with pytest.raises(InvalidRequest) as caught:
        ENROLL.decode({"deviceId": "d"})
    assert caught.value.description == "enrollmentToken is required"
    assert json.dumps(components([Sample]))  # serialisable as it is


# ------------------------------------------------------------------------------ OAuth parameters
def _even(value: str) -> str:
    """A domain check of its own: an even number of characters, or ``invalid_grant``."""
    if len(value) % 2:
        raise InvalidGrant("the value must have an even length")
    return value


@with_config(PARAMETERS)
class Form(TypedDict):
    """OAuth parameters: unknown ones ignored, each a string."""

    grant: Annotated[
        str,
        choice(["a", "b"], refuse=refuse_with(lambda n: "no such grant", UnsupportedGrantType)),
    ]
    code: NotRequired[Annotated[str, Field(min_length=1)]]
    pair: NotRequired[
        Annotated[
            str, Kind(Field(max_length=4), refuse=refuse_by(_even)), Field(pattern="^[a-z]+$")
        ]
    ]


FORM_BODY = Body(Form, media_type="application/x-www-form-urlencoded")


def test_oauth_parameters_ignore_unknown_ones_and_the_schema_says_so() -> None:
    assert FORM_BODY.decode({"grant": "a", "resource": "x", "a\u0000": "y"}) == {"grant": "a"}
    schema = components([Form])["Form"]
    assert schema["additionalProperties"] == {"type": "string"}
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid({"grant": "a", "resource": "x"})
    assert not validator.is_valid({"grant": "a", "resource": ["x", "y"]})  # given twice
    # JSON bodies still refuse them.
    with pytest.raises(InvalidRequest, match="unknown field 'resource'"):
        SAMPLE.decode({**VALID, "resource": "x"})


def test_a_kind_can_refuse_with_the_domains_own_check_and_code() -> None:
    with pytest.raises(UnsupportedGrantType, match="no such grant"):
        FORM_BODY.decode({"grant": "c"})
    with pytest.raises(InvalidRequest, match="grant is required"):
        FORM_BODY.decode({"code": "x"})
    # Too long: the domain's check answers it, with its own code and words.
    with pytest.raises(InvalidGrant, match="even length"):
        FORM_BODY.decode({"grant": "a", "pair": "abcde"})
    # A constraint the domain's check does not cover: invalid_request.
    with pytest.raises(InvalidRequest, match="pair is not valid"):
        FORM_BODY.decode({"grant": "a", "pair": "AB"})
    assert FORM_BODY.decode({"grant": "b", "pair": "abcd"})["pair"] == "abcd"


def test_query_parameters_are_generated_from_the_declaration() -> None:
    parameters = {p["name"]: p for p in query_parameters(FORM_BODY)}
    assert list(parameters) == ["grant", "code", "pair"]
    assert {n: p["required"] for n, p in parameters.items()} == {
        "grant": True,
        "code": False,
        "pair": False,
    }
    assert {p["in"] for p in parameters.values()} == {"query"}
    members = components([Form])["Form"]["properties"]
    assert {n: p["schema"] for n, p in parameters.items()} == members
    # A named kind stays a reference into components.schemas; a description moves onto the
    # parameter.
    with_kinds = {p["name"]: p for p in query_parameters(Body(Sample))}
    assert with_kinds["tokenId"]["schema"] == {"$ref": "#/components/schemas/Id"}
    described = {p["name"]: p for p in query_parameters(Body(Form))}
    assert "description" not in described["code"]


@with_config(PARAMETERS)
class Described(TypedDict):
    hint: Annotated[str, Field(min_length=1, description="Said once.")]


def test_a_query_parameters_description_is_on_the_parameter() -> None:
    (hint,) = query_parameters(Body(Described))
    assert hint == {
        "name": "hint",
        "in": "query",
        "required": True,
        "description": "Said once.",
        "schema": {"type": "string", "minLength": 1},
    }
