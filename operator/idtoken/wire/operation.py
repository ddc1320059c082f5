"""An HTTP operation as the OpenAPI document states it: its request body (a declared
:class:`~idtoken.wire.declare.Body`) and its responses, each a success body or the error codes
that a status can carry.

Bodies appear by reference (``#/components/schemas/<name>``); the components themselves come
from :func:`idtoken.wire.schema.components` over the same declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idtoken.wire.declare import Body
from idtoken.wire.schema import JsonObject, ref

NO_STORE: JsonObject = {
    "description": "Responses carrying session data or errors are never cached.",
    "required": True,
    "schema": {"const": "no-store"},
}


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
    parameters: tuple[JsonObject, ...] = ()
    security: list[JsonObject] | None = field(default=None)

    def document(self) -> JsonObject:
        """The Operation Object."""
        op: JsonObject = {"operationId": self.operation_id, "tags": [self.tag]}
        op["summary"] = self.summary
        if self.description is not None:
            op["description"] = self.description
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.request is not None:
            op["requestBody"] = {
                "required": True,
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
