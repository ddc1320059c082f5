"""An HTTP operation as the OpenAPI document states it: its request body or query parameters
(a declared :class:`~idtoken.wire.declare.Body`) and its responses, each a success body, an
HTML page or the error codes that a status can carry.

Bodies appear by reference (``#/components/schemas/<name>``); the components themselves come
from :func:`idtoken.wire.schema.components` over the same declarations. Query parameters are
generated from a declaration too (:func:`query_parameters`), one per member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idtoken.wire.declare import Body
from idtoken.wire.schema import JsonObject, components, ref


def header(schema: JsonObject, description: str | None = None) -> JsonObject:
    """A response header that is always sent, its value described by ``schema``."""
    described: JsonObject = {} if description is None else {"description": description}
    return {**described, "required": True, "schema": schema}


NO_STORE = header(
    {"const": "no-store"}, "Responses carrying session data or errors are never cached."
)
RETRY_AFTER = header({"type": "integer", "minimum": 1}, "Seconds to wait before trying again.")


def reply(
    body: Any, description: str, *, cache: JsonObject | None = None, **headers: JsonObject
) -> JsonObject:
    """A JSON response whose body is ``body`` (a declared ``TypedDict``, or a schema)."""
    schema = ref(body.__name__) if isinstance(body, type) else body
    return {
        "description": description,
        "headers": {"Cache-Control": NO_STORE if cache is None else cache, **headers},
        "content": {"application/json": {"schema": schema}},
    }


def refused(description: str, *codes: str, **headers: JsonObject) -> JsonObject:
    """An error response (the ``Error`` body) whose ``error`` is one of ``codes``."""
    schema = {"allOf": [ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return reply(schema, description, **headers)


def page(description: str, **headers: JsonObject) -> JsonObject:
    """An HTML page (``text/html``), never cached."""
    return {
        "description": description,
        "headers": {"Cache-Control": NO_STORE, **headers},
        "content": {"text/html": {"schema": {"type": "string"}}},
    }


def query_parameters(body: Body[Any]) -> tuple[JsonObject, ...]:
    """The query parameters of a declaration (OpenAPI Parameter Objects), one per member in
    declaration order: required as the member is, its schema the member's (whose references
    point into ``components.schemas``: the declaration must be among the document's bodies),
    its description on the parameter."""
    declared = components([body.kind])[body.kind.__name__]
    out: list[JsonObject] = []
    for name, member in declared["properties"].items():
        schema = dict(member)
        parameter: JsonObject = {"name": name, "in": "query", "required": name in body.required}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameter["schema"] = schema
        out.append(parameter)
    return tuple(out)


def shared(name: str) -> JsonObject:
    """A response kept once in ``components.responses``."""
    return {"$ref": f"#/components/responses/{name}"}


@dataclass(frozen=True)
class Operation:
    """One method on one path."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    responses: Mapping[str, JsonObject]
    description: str | None = None
    request: Body[Any] | None = None
    request_required: bool = True
    query: Body[Any] | None = None  # the declaration its query parameters come from
    parameters: tuple[JsonObject, ...] = ()
    security: list[JsonObject] | None = field(default=None)

    def document(self) -> JsonObject:
        """The Operation Object."""
        op: JsonObject = {"operationId": self.operation_id, "tags": [self.tag]}
        op["summary"] = self.summary
        if self.description is not None:
            op["description"] = self.description
        generated = query_parameters(self.query) if self.query is not None else ()
        parameters = [*generated, *self.parameters]
        if parameters:
            op["parameters"] = parameters
        if self.request is not None:
            op["requestBody"] = {
                "required": self.request_required,
                "content": {self.request.media_type: {"schema": ref(self.request.kind.__name__)}},
            }
        op["responses"] = dict(sorted(self.responses.items()))
        if self.security is not None:
            op["security"] = self.security
        return op


def paths(operations: list[Operation]) -> JsonObject:
    """The document's ``paths``, in the order the operations are given."""
    out: JsonObject = {}
    for operation in operations:
        out.setdefault(operation.path, {})[operation.method] = operation.document()
    return out
