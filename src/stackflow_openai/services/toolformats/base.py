"""What every model family's tool format shares: the tool definitions, and a tolerant call parser.

A family module says how tools, earlier calls and tool results are written into the prompt, and how
to ask again; reading calls back is the same for all of them and deliberately lenient, because small
models drift between formats: `<tool_call>` blocks holding one object, several objects or a list (Qwen,
Hermes, SmolLM2), a bare JSON object or list (Llama 3.2), inside code fences or not, with
`arguments` or `parameters`, as an object or a JSON string, with a missing closing tag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..jsonfix import JsonNotFound, extract_json, strip_fences

__all__ = [
    "ParsedOutput",
    "RawCall",
    "ToolDef",
    "ToolFormat",
    "dump_json",
    "parse_tool_calls",
]

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"  # Llama 3 may open a call with it


def dump_json(value: Any) -> str:
    """JSON as Hugging Face's chat templates write it (`tojson`): ", " and ": ", non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolDef:
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    original: dict[str, Any] = field(compare=False)  # the request's tool object, as the client wrote it


@dataclass(frozen=True, slots=True)
class RawCall:
    name: Any  # what the model wrote: not checked yet
    arguments: Any  # dict, JSON text, or anything else


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    content: str  # the text outside the calls
    calls: list[RawCall]
    problems: list[str]  # call blocks that could not be read, and why


class ToolFormat(Protocol):
    name: str
    # Where the tool definitions go: the system prompt (part of the unit's setup) or the user turn.
    placement: Literal["system", "user"]
    # Streamed text from one of these on is held until the output ends (it may be a call).
    markers: tuple[str, ...]

    def tools_prompt(self, tools: list[ToolDef], rule: str) -> str:
        """The tool definitions and how to call them; `rule` an extra line ('' or a tool_choice rule)."""
        ...

    def call_text(self, name: str, arguments: Any) -> str:
        """An earlier assistant call, as the model itself would have written it."""
        ...

    def result_text(self, content: str) -> str:
        """A tool's result in the conversation."""
        ...

    def correction(self, problem: str) -> str:
        """The re-ask after an unusable answer."""
        ...


class TaggedToolFormat:
    """What the formats that wrap a call in <tool_call> tags share (Qwen's, SmolLM2's, the generic one):
    how an earlier call, a tool's result and the re-ask are written. Subclasses write `tools_prompt`."""

    placement: Literal["system", "user"] = "system"
    markers: tuple[str, ...] = ("<tool_call>",)
    call_open, call_close = "<tool_call>\n", "\n</tool_call>"  # around one call's JSON object

    def call_text(self, name: str, arguments: Any) -> str:
        call = f'{{"name": {dump_json(name)}, "arguments": {dump_json(arguments)}}}'
        return f"{self.call_open}{call}{self.call_close}"

    def result_text(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"

    def correction(self, problem: str) -> str:
        # Short: the format is already in the prompt, and a re-ask must still fit the prefill window.
        return (
            f"Your previous answer was not a usable function call: {problem}. "
            "Answer again with only the call."
        )


def _call_from(item: Any) -> RawCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # an OpenAI-shaped call written back by the model
        item = item["function"]
    name = item.get("name")
    if name is None:
        return None
    for key in ("arguments", "parameters", "args"):
        if key in item:
            return RawCall(name, item[key])
    return RawCall(name, {})


def _calls_in(value: Any) -> list[RawCall] | None:
    """The calls a JSON value holds (an object or a list of them); None when it is not call-shaped."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        items = value["tool_calls"]
    calls = [_call_from(item) for item in items]
    if not calls and isinstance(value, list):
        return []  # SmolLM2's "no call needed": an empty list
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _read_block(body: str) -> tuple[list[RawCall], str | None]:
    """The calls in one <tool_call> block: possibly several objects, one per line."""
    text = strip_fences(body).strip()
    calls: list[RawCall] = []
    while text:
        try:
            found = extract_json(text)
        except JsonNotFound as exc:
            return calls, str(exc)
        parsed = _calls_in(found.value)
        if parsed is None:
            return calls, "a call needs a JSON object with a 'name' and 'arguments'"
        calls.extend(parsed)
        if found.repaired or found.rest == text:
            break
        text = found.rest.strip() if found.rest and found.rest[0] in "{[" else ""
    return calls, None


def parse_tool_calls(text: str) -> ParsedOutput:
    """Calls and the remaining content of a (reasoning-free) answer."""
    if "<tool_call>" in text:
        calls: list[RawCall] = []
        problems: list[str] = []
        for match in _BLOCK.finditer(text):
            found, problem = _read_block(match.group(1))
            calls.extend(found)
            if problem:
                problems.append(problem)
        content = _BLOCK.sub("", text).replace("</tool_call>", "").strip()
        return ParsedOutput(content, calls, problems)
    bare = strip_fences(text).strip().removeprefix(_PYTHON_TAG).strip()
    if bare[:1] in ("{", "["):
        try:
            value = extract_json(bare)
        except JsonNotFound as exc:
            return ParsedOutput("", [], [str(exc)]) if _looks_like_call(bare) else ParsedOutput(text, [], [])
        parsed = _calls_in(value.value)
        if parsed is not None:
            return ParsedOutput(value.rest, parsed, [])
    return ParsedOutput(text.strip(), [], [])


def _looks_like_call(text: str) -> bool:
    return '"name"' in text or "'name'" in text
