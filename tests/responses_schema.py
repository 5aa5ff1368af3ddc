"""OpenAI's Responses API schemas (shared/openai/openai-responses-realtime.json) and its SSE framing."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

_PATH = Path(__file__).resolve().parents[2] / "shared" / "openai" / "openai-responses-realtime.json"


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    document = json.loads(_PATH.read_text())
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": document["$defs"]})


@cache
def _event_defs() -> dict[str, str]:
    """Event type → the name of its schema (for errors that name the failing field, not an anyOf)."""
    document = json.loads(_PATH.read_text())
    names = {}
    for option in document["$defs"]["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[-1]
        for kind in document["$defs"][name].get("properties", {}).get("type", {}).get("enum", []):
            names[kind] = name
    return names


def validate_responses(name: str, instance: Any) -> None:
    """Validate against `#/$defs/<name>` (Response, ResponseStreamEvent, ResponseItemList, ...)."""
    _validator(name).validate(instance)


def parse_response_events(text: str) -> list[dict[str, Any]]:
    """The events of a Responses SSE body: `event: <type>` + `data: <json>` blocks, no [DONE]; each
    validated, its `event:` line equal to its type, sequence numbers 0, 1, 2, ..."""
    events = []
    assert text.endswith("\n\n"), text[-80:]
    for block in text.strip("\n").split("\n\n"):
        kind_line, data_line = block.split("\n")
        assert kind_line.startswith("event: ") and data_line.startswith("data: "), block
        event = json.loads(data_line[len("data: ") :])
        assert event["type"] == kind_line[len("event: ") :]
        validate_responses(_event_defs().get(event["type"], "ResponseStreamEvent"), event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events
