"""The scripted engine's answers to prompts that carry tools or ask for JSON. A TEST TOOL, like scripted.py.

A device model sees tools only as prompt text in its family's format (the gateway writes it, see
services/toolformats/); so this module reads that text back the way a model would "understand" it, and
answers deterministically in the same family's call format:

- tools (Qwen `<tools>` lines, SmolLM2's `<tools>[...]`, the generic list, Llama 3.2's user-turn block):
  it calls the function the prompt insists on ("You must call the function X."), else the one whose name
  shares most words with the question, else the first, with arguments built from its JSON schema (every
  property: enum → first value, string → the question's last capitalised word
  or else its longest, integer/number → its minimum
  or 1, boolean → true, arrays of one item, nested objects and `$ref`s followed). After a tool result
  (the prompt ends with `<tool_response>` or a `Tool:` line) it answers in words with that result.
- JSON (the gateway's "Answer with only one JSON object" instruction): a value built from the schema,
  or {"answer": <the question's longest word>} without one.

`malformed_answer` is what the emulator's `malformed_answer` fault sends instead: a call whose arguments
are no JSON, or no JSON at all, so the gateway's re-ask can be tested. The marker strings below are what
the gateway writes (tests/test_tools_e2e.py fails if they drift apart).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["malformed_answer", "scripted_json_answer", "scripted_tool_answer"]

_JSON_LEAD = "Answer with only one JSON object, no other text."
_SCHEMA_MARK = "It must be valid against this JSON schema:\n"
_NEW_MESSAGE = "Now answer the user's new message: "
_REASK = "\n\nYour previous answer was not"
_LLAMA_LEAD = "Given the following functions, please respond with a JSON for a function call"
_LLAMA_DEFS = "Do not use variables.\n\n"
_GENERIC_LEAD = "You can call these functions (JSON definitions):\n"
_MUST_CALL = re.compile(r"You must call the function ([A-Za-z0-9_-]+)\.")
_WORD = re.compile(r"[A-Za-z0-9]+")
_NAME_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")  # get_weather, HassTurnOn, TV_on
_DECODER = json.JSONDecoder()


def _objects(text: str) -> list[Any]:
    """Every JSON value in `text` one after another (blank-separated), until something else comes."""
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text) or text[pos] not in "{[":
            return values
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            return values
        values.append(value)


def _tools_in(system: str, prompt: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(family, function definitions) found in the prompt, or None."""
    text = f"{system}\n{prompt}"  # (a VLM with an image gets the tools in its user turn)
    if (at := text.find("<tools>[")) >= 0:
        found = _objects(text[at + len("<tools>") :])
        return ("smollm2", _functions(found[0])) if found else None
    if (at := text.find("<tools>\n")) >= 0:
        return "qwen", _functions(_objects(text[at + len("<tools>\n") :]))
    if (at := text.find(_GENERIC_LEAD)) >= 0:
        return "generic", _functions(_objects(text[at + len(_GENERIC_LEAD) :]))
    if _LLAMA_LEAD in prompt and (at := prompt.find(_LLAMA_DEFS)) >= 0:
        return "llama3", _functions(_objects(prompt[at + len(_LLAMA_DEFS) :]))
    return None


def _functions(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            out.append(function)
    return out


def _question(prompt: str) -> str:
    prompt = prompt.split(_REASK)[0]  # a re-ask repeats the question, then says what went wrong
    at = prompt.rfind(_NEW_MESSAGE)
    return prompt[at + len(_NEW_MESSAGE) :] if at >= 0 else prompt


def _after_tool_result(prompt: str) -> str | None:
    """The last tool result, when the conversation ends with one (the model should now answer)."""
    body = prompt.rstrip()
    if body.endswith("</tool_response>"):
        start = body.rfind("<tool_response>")
        return body[start + len("<tool_response>") : -len("</tool_response>")].strip()
    last = body.rsplit("\n", 1)[-1]
    return last[len("Tool: ") :] if last.startswith("Tool: ") else None


def _pick(functions: list[dict[str, Any]], system: str, prompt: str) -> dict[str, Any]:
    forced = _MUST_CALL.search(system) or _MUST_CALL.search(prompt)
    if forced:
        for function in functions:
            if function["name"] == forced.group(1):
                return function
    words = {w.lower() for w in _WORD.findall(_question(prompt))}

    def overlap(function: dict[str, Any]) -> int:
        return len(words & {w.lower() for w in _NAME_PART.findall(function["name"])})

    return max(functions, key=overlap)  # the first of the best (max keeps the first)


def _value(schema: Any, root: dict[str, Any], word: str, depth: int = 0) -> Any:
    """A deterministic value valid against `schema` (the common JSON-schema subset tools use)."""
    if not isinstance(schema, dict) or depth > 8:
        return word
    if isinstance(ref := schema.get("$ref"), str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _value(target, root, word, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(schema[key][0], root, word, depth + 1)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _value(sub, root, word, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_value(schema.get("items", {}), root, word, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, int(low or 0) + (1 if "exclusiveMinimum" in schema else 0))
        if isinstance(high := schema.get("maximum"), int | float):
            value = min(value, int(high))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return word


def _longest_word(text: str) -> str:
    """The word a string argument gets: the last capitalised word after the first (a name: "Paris"),
    else the longest one."""
    words = _WORD.findall(text)
    names = [w for w in words[1:] if w[0].isupper()]
    if names:
        return str(names[-1])
    return str(max(words, key=len)) if words else "value"


def _call_text(family: str, name: str, arguments: Any) -> str:
    if family == "llama3":
        return json.dumps({"name": name, "parameters": arguments})
    call = json.dumps({"name": name, "arguments": arguments})
    return (
        f"<tool_call>[\n{call}\n]</tool_call>"
        if family == "smollm2"
        else f"<tool_call>\n{call}\n</tool_call>"
    )


def scripted_tool_answer(system: str, prompt: str) -> str | None:
    """The scripted answer to a prompt with tools (None when it carries none)."""
    found = _tools_in(system, prompt)
    if found is None or not found[1]:
        return None
    family, functions = found
    result = _after_tool_result(prompt)
    if result is not None:
        return f"The tool answered: {result}"
    function = _pick(functions, system, prompt)
    schema = function.get("parameters") or {}
    arguments = _value(schema, schema, _longest_word(_question(prompt))) if schema else {}
    return _call_text(family, function["name"], arguments)


def scripted_json_answer(prompt: str) -> str | None:
    """The scripted answer to a prompt that asks for JSON (None when it does not)."""
    at = prompt.rfind(_JSON_LEAD)
    if at < 0:
        return None
    rest = prompt[at + len(_JSON_LEAD) :]
    question = _question(prompt[:at])
    if rest.lstrip().startswith(_SCHEMA_MARK.strip()):
        schema = _objects(rest[rest.find(_SCHEMA_MARK) + len(_SCHEMA_MARK) :])
        if schema and isinstance(schema[0], dict):
            return json.dumps(_value(schema[0], schema[0], _longest_word(question)))
    return json.dumps({"answer": _longest_word(question)})


def malformed_answer(system: str, prompt: str) -> str | None:
    """A broken answer of the kind asked for (None when the prompt asks for no call and no JSON)."""
    found = _tools_in(system, prompt)
    if found is not None and found[1] and _after_tool_result(prompt) is None:
        family, functions = found
        name = _pick(functions, system, prompt)["name"]
        if family == "llama3":
            return f'{{"name": "{name}", "parameters": "not json"}}'
        return f'<tool_call>\n{{"name": "{name}", "arguments": "not json"}}\n</tool_call>'
    if _JSON_LEAD in prompt:
        return "I would rather answer in words."
    return None
