"""The JSON schemas a request may constrain its answer with: bounded, then checked.

Usage (the pipeline does this, off the event loop):
    bounds = SchemaBounds(max_bytes=65_536, max_depth=32, max_properties=1_000)
    check_json_schema(schema, bounds)      # raises SchemaRefused naming the bound or the fault

A schema is the client's: its size, its nesting and its properties are counted first, by a walk
that uses no recursion (a schema nested 400 deep must be a refusal, not a RecursionError), and
only a schema within the bounds is checked against its metaschema (jsonschema) and handed to the
engine's grammar compiler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no types-jsonschema installed


class SchemaRefused(ValueError):
    """The schema is too large or not a valid JSON schema; the message says which, in one line."""


@dataclass(frozen=True)
class SchemaBounds:
    max_bytes: int  # of the schema as compact JSON
    max_depth: int  # objects and arrays nested in one another
    max_properties: int  # keys of every `properties` object, all counted together


def measure(schema: Any) -> tuple[int, int]:
    """(deepest nesting of objects and arrays, number of property names), without recursion."""
    deepest, properties = 0, 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            named = node.get("properties")
            if isinstance(named, dict):
                properties += len(named)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((value, depth + 1) for value in node)
    return deepest, properties


def check_bounds(schema: dict, bounds: SchemaBounds) -> None:
    """Refuse a schema past a bound, naming it and the setting that sets it."""
    depth, properties = measure(schema)
    if depth > bounds.max_depth:
        raise SchemaRefused(
            f"json_schema is nested {depth} deep, above this server's limit of "
            f"{bounds.max_depth} (ALPACA_MAX_SCHEMA_DEPTH)"
        )
    if properties > bounds.max_properties:
        raise SchemaRefused(
            f"json_schema names {properties} properties, above this server's limit of "
            f"{bounds.max_properties} (ALPACA_MAX_SCHEMA_PROPERTIES)"
        )
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > bounds.max_bytes:
        raise SchemaRefused(
            f"json_schema is {size} bytes, above this server's limit of {bounds.max_bytes} "
            "(ALPACA_MAX_SCHEMA_BYTES)"
        )


def check_json_schema(schema: dict, bounds: SchemaBounds) -> None:
    """Within the bounds, and well-formed against its metaschema."""
    check_bounds(schema, bounds)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "/".join(str(part) for part in err.absolute_path)
        raise SchemaRefused(
            f"json_schema is not a valid JSON schema: {err.message}"
            + (f" (at {where})" if where else "")
        ) from None
    except RecursionError:  # within the depth bound this should not happen; refuse if it does
        raise SchemaRefused("json_schema is nested too deep to check") from None
