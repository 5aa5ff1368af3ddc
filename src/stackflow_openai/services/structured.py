"""Structured outputs: `response_format` json_object / json_schema on a model that has no grammar.

The device cannot constrain decoding, so the gateway asks for JSON in words (the schema, compact, at the
end of the user turn, where a small model follows it best and where it does not split the unit pool the
way a system prompt would), then extracts the JSON from the answer (code fences, surrounding prose),
repairs trivial faults (services/jsonfix.py), validates it against the schema (services/schemas.py), and asks
once more with the problem named when it fails (model config `output_retries`). The client gets valid
JSON or a `structured_output_failed` error: never a 200 its parser would choke on.

Streaming with a schema: the answer is held until it is validated and then sent as content, so a stream
carries only JSON that matches (its first content comes when generation ends). The other choice (stream
as generated, error event at the end) would hand partial-JSON parsers text that may later be repaired or
rejected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stackflow_openai.errors import InvalidRequestError

from .jsonfix import JsonNotFound, extract_json
from .schemas import SchemaInvalid, compile_schema, schema_problem
from .tools import ModeOutcome

__all__ = ["JsonMode", "JsonRequest", "parse_response_format"]

SCHEMA_LEAD = "Answer with only one JSON object, no other text. It must be valid against this JSON schema:"
OBJECT_LEAD = "Answer with only one JSON object, no other text."


@dataclass(frozen=True, slots=True)
class JsonRequest:
    schema: dict[str, Any] | None  # None: any JSON object (json_object)
    name: str | None

    def instruction(self) -> str:
        if self.schema is None:
            return OBJECT_LEAD
        return f"{SCHEMA_LEAD}\n{json.dumps(self.schema, ensure_ascii=False, separators=(',', ':'))}"

    def correction(self, problem: str) -> str:
        # The instruction (and schema) already ends the user turn the re-ask repeats.
        return f"Your previous answer was not usable: {problem}. Answer again with only the JSON object."


def parse_response_format(value: Any) -> JsonRequest | None:
    """The request's response_format; None for text (or none given)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonRequest(None, None)
    if kind != "json_schema":
        raise InvalidRequestError(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise InvalidRequestError(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema")
    if schema is None:
        return JsonRequest(None, spec["name"])
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(
            "The JSON schema must be an object.", param="response_format.json_schema.schema"
        )
    try:
        compile_schema(schema)
    except SchemaInvalid as exc:
        raise InvalidRequestError(
            f"'response_format.json_schema.schema' is not a valid JSON schema: {exc}",
            param="response_format.json_schema.schema",
        ) from exc
    return JsonRequest(dict(schema), spec["name"])


class JsonMode:
    """The answer side of structured outputs for one choice: holds everything, validates at the end."""

    def __init__(self, request: JsonRequest) -> None:
        self.request = request
        self.answer = ""

    def feed(self, text: str) -> str:
        self.answer += text
        return ""

    def finish(self, answer: str | None = None) -> ModeOutcome | str:
        text = self.answer if answer is None else answer
        want = dict if self.request.schema is None or self.request.schema.get("type") == "object" else None
        try:
            found = extract_json(text, want=want)
        except JsonNotFound as exc:
            return str(exc)
        problem = schema_problem(found.value, self.request.schema)
        if problem:
            return f"the JSON does not match the schema: {problem}"
        return ModeOutcome(json.dumps(found.value, ensure_ascii=False))

    def correction(self, problem: str) -> str:
        return self.request.correction(problem)
