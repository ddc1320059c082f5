"""Wire bodies declared once: validation and the JSON Schema of the OpenAPI document both come
from the same declaration (a ``TypedDict`` whose members are annotated with kinds).

- :mod:`idtoken.wire.declare`: :class:`Body` (validates with pydantic, refuses with the
  operator's error codes), :class:`Kind` (a member's constraints and how it is refused);
- :mod:`idtoken.wire.kinds`: the kinds several bodies share (ids, scopes, timestamps, ...);
- :mod:`idtoken.wire.schema`: JSON Schema components for a set of bodies;
- :mod:`idtoken.wire.operation`: an HTTP operation and its OpenAPI Path Item.
"""
