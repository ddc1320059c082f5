"""JSON Schema components for a set of declared bodies, as an OpenAPI 3.1 document holds them.

pydantic writes the schemas (JSON Schema 2020-12, OpenAPI 3.1's dialect) from the same
declarations that validate requests. Each ``TypedDict`` and each named kind
(``TypeAliasType``) becomes a component under its own name, referenced as
``#/components/schemas/<name>``. The titles pydantic makes up from Python names are left out;
descriptions come from the declarations (a body's docstring, a member's ``Field``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

JsonObject = dict[str, Any]

REF_TEMPLATE = "#/components/schemas/{model}"
_LINE_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


class _Generator(GenerateJsonSchema):
    """pydantic's generator without titles."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def typed_dict_schema(self, schema: core_schema.TypedDictSchema) -> JsonSchemaValue:
        value = super().typed_dict_schema(schema)
        value.pop("title", None)
        if "description" in value:  # a docstring: its line breaks are only wrapping
            value["description"] = _LINE_BREAK.sub(" ", value["description"])
        return value


def ref(name: str) -> JsonObject:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def components(kinds: Iterable[Any]) -> JsonObject:
    """``components.schemas`` for these bodies (``TypedDict`` classes) and everything they
    use, by name."""
    inputs = [(kind.__name__, "validation", TypeAdapter(kind)) for kind in kinds]
    tops, definitions = TypeAdapter.json_schemas(
        [(name, "validation", adapter) for name, _, adapter in inputs],
        ref_template=REF_TEMPLATE,
        schema_generator=_Generator,
    )
    schemas: JsonObject = dict(definitions.get("$defs", {}))
    for (name, _), schema in tops.items():
        if schema != ref(name):
            schemas[name] = schema
    return dict(sorted(schemas.items()))
