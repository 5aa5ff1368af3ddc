"""JSON Schema checks for tool parameters and response formats, with jsonschema-rs.

Clients send the same tool schemas with every request, and Python's jsonschema spent ~4 ms checking one
small schema against the 2020-12 metaschema (benchmarks/tools.py): more than the rest of the gateway's
work on a request. jsonschema-rs does the check and the validation in ~25 us. A schema's remote `$ref`
is never fetched (a client must not make the gateway send requests): it makes the schema invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema_rs

__all__ = ["SchemaInvalid", "compile_schema", "schema_problem"]


class SchemaInvalid(ValueError):
    """The client's schema is not a usable JSON schema (the message says why, in one line)."""


def _no_remote_refs(uri: str) -> Any:
    raise ValueError(f"remote $ref {uri!r} is not followed")


def compile_schema(schema: Mapping[str, Any]) -> jsonschema_rs.Validator:
    try:
        jsonschema_rs.meta.validate(dict(schema))
        return jsonschema_rs.validator_for(dict(schema), retriever=_no_remote_refs)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaInvalid(str(exc).split("\n", 1)[0]) from exc


def schema_problem(value: Any, schema: Mapping[str, Any] | None) -> str | None:
    """The first way `value` breaks `schema`, in a sentence; None when it is valid (or no schema)."""
    if not schema:
        return None
    error = next(iter(compile_schema(schema).iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.instance_path)
    return error.message + (f" (at '{where}')" if where else "")
