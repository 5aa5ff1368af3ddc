"""Tool calling: the request's tools (and the legacy functions) checked, and the model's calls read back.

No StackFlow unit knows about tools (the device's tokenizer scripts template without them), so the
gateway writes the tools into the prompt in the model family's own format (services/toolformats/) and
turns the answer back into OpenAI tool calls here:

- `parse_tool_request` validates `tools`/`tool_choice`/`parallel_tool_calls` (or `functions`/
  `function_call`) into a `ToolRequest`, with a 400 naming the faulty field. `tool_choice: "none"`
  offers no tools; a named function offers only that one.
- `ToolsMode` is the answer side (used by services/output.py): streamed text is released until a call
  may begin (a `<tool_call>` tag anywhere, or an answer that opens with `{`, `[` or a code fence); from
  there the text is held to the end, so no client ever sees call syntax. The held text is parsed
  tolerantly, each call's arguments are checked against its function's JSON schema, and a problem is
  returned (for a re-ask) rather than a call the client cannot run.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stackflow_openai.errors import InvalidRequestError

from .events import ToolCall
from .jsonfix import JsonNotFound, extract_json
from .limiter import partial_tail
from .schemas import SchemaInvalid, compile_schema, schema_problem
from .toolformats import ToolDef, ToolFormat, parse_tool_calls
from .toolformats.base import dump_json

__all__ = ["ModeOutcome", "ToolRequest", "ToolsMode", "new_call_id", "parse_tool_request"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
_START_MARKERS = ("{", "[", "```", "<|python_tag|>")  # a call may open the answer with these


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class ToolRequest:
    tools: list[ToolDef]  # what the model is offered
    choice: Literal["auto", "required", "named"]
    forced: str | None  # the function tool_choice names
    parallel: bool
    legacy: bool  # `functions`: the answer is message.function_call (one call)

    def rule(self) -> str:
        """The line added to the format's instructions for tool_choice required or named."""
        if self.choice == "named":
            return f"You must call the function {self.forced}."
        return "You must call at least one function." if self.choice == "required" else ""


@dataclass(frozen=True, slots=True)
class ModeOutcome:
    """A usable answer: the content to release now (held text that was no call) and the calls."""

    late_text: str
    calls: tuple[ToolCall, ...] = ()


def _fail(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _tool_def(function: Any, param: str, original: dict[str, Any]) -> ToolDef:
    if not isinstance(function, Mapping):
        raise _fail(f"'{param}' must be an object with a 'name'.", param)
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(f"'{param}.name' must be 1-64 letters, digits, underscores or dashes.", f"{param}.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail(f"'{param}.description' must be a string.", f"{param}.description")
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise _fail(f"'{param}.parameters' must be a JSON schema object.", f"{param}.parameters")
        try:
            compile_schema(parameters)
        except SchemaInvalid as exc:
            raise _fail(
                f"'{param}.parameters' is not a valid JSON schema: {exc}", f"{param}.parameters"
            ) from exc
    return ToolDef(name, description, dict(parameters) if parameters is not None else None, original)


def _tools(body: Mapping[str, Any]) -> tuple[list[ToolDef], bool]:
    tools, functions = body.get("tools"), body.get("functions")
    if tools and functions:
        raise _fail("Send either 'tools' or the legacy 'functions', not both.", "functions")
    if functions:
        if not isinstance(functions, list):
            raise _fail("'functions' must be a list.", "functions")
        defs = [
            _tool_def(f, f"functions[{i}]", {"type": "function", "function": f})
            for i, f in enumerate(functions)
        ]
        return defs, True
    if not tools:
        return [], False
    if not isinstance(tools, list):
        raise _fail("'tools' must be a list.", "tools")
    defs = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            raise _fail(
                f"Tool type {kind!r} is not supported here: only 'function' tools.", f"tools[{i}].type"
            )
        defs.append(_tool_def(tool.get("function"), f"tools[{i}].function", dict(tool)))
    return defs, False


def _choice(value: Any, legacy: bool, names: list[str]) -> tuple[str, str | None]:
    param = "function_call" if legacy else "tool_choice"
    if value is None:
        return "auto", None
    if value in ("none", "auto") or (value == "required" and not legacy):
        return str(value), None
    forced = None
    if isinstance(value, Mapping):
        inner = value if legacy else value.get("function")
        if (legacy or value.get("type") == "function") and isinstance(inner, Mapping):
            forced = inner.get("name")
    if not isinstance(forced, str):
        allowed = (
            "'none', 'auto' or {\"name\": ...}" if legacy else "'none', 'auto', 'required' or a function"
        )
        raise _fail(f"'{param}' must be {allowed}.", param)
    if forced not in names:
        raise _fail(f"'{param}' names the function '{forced}', which is not among the tools.", param)
    return "named", forced


def parse_tool_request(body: Mapping[str, Any]) -> ToolRequest | None:
    """The request's tools, or None when the model is offered none (no tools, or tool_choice none)."""
    tools, legacy = _tools(body)
    raw_choice = body.get("function_call") if legacy else body.get("tool_choice")
    if not tools:
        if raw_choice not in (None, "none", "auto"):
            param = "function_call" if legacy or body.get("function_call") else "tool_choice"
            raise _fail(f"'{param}' needs tools to choose from.", param)
        return None
    choice, forced = _choice(raw_choice, legacy, [t.name for t in tools])
    if choice == "none":
        return None
    if forced is not None:
        tools = [t for t in tools if t.name == forced]
    parallel = body.get("parallel_tool_calls")
    return ToolRequest(tools, choice, forced, parallel is not False and not legacy, legacy)  # type: ignore[arg-type]


class ToolsMode:
    """The answer side of tool calling for one choice (see the module docstring)."""

    def __init__(self, request: ToolRequest, tool_format: ToolFormat) -> None:
        self.request = request
        self.format = tool_format
        self._tools = {t.name: t for t in request.tools}
        self._hold_all = request.choice != "auto"  # the answer must be a call: nothing to stream
        self._released = 0  # characters of the answer released as content
        self._holding = self._hold_all
        self.answer = ""

    def feed(self, text: str) -> str:
        """Content that is safe to stream now."""
        self.answer += text
        if self._holding:
            return ""
        answer = self.answer
        if self._released == 0:
            stripped = answer.lstrip()
            if any(stripped.startswith(m) or m.startswith(stripped) for m in _START_MARKERS):
                self._holding = bool(stripped) and any(stripped.startswith(m) for m in _START_MARKERS)
                return ""  # blanks, or a possible call opening: decided with more text
        end = len(answer)
        for marker in self.format.markers:
            found = answer.find(marker, self._released)
            if found >= 0:
                end, self._holding = min(end, found), True
            else:
                end = min(end, len(answer) - partial_tail(answer, marker))
        out = answer[self._released : end]
        self._released = max(self._released, end)
        return out

    @property
    def released(self) -> str:
        return self.answer[: self._released]

    def finish(self, answer: str | None = None) -> ModeOutcome | str:
        """The outcome of the whole answer (or of a re-ask's `answer`), or the problem with it."""
        retry = answer is not None
        text = answer if answer is not None else self.answer[self._released :]
        parsed = parse_tool_calls(text)
        if parsed.problems:
            return parsed.problems[0]
        if not parsed.calls:
            if self.request.choice != "auto":
                return (
                    "no function call was made"
                    if self.request.choice == "required"
                    else (f"the function {self.request.forced} was not called")
                )
            return ModeOutcome(text if not retry else parsed.content)
        calls: list[ToolCall] = []
        for raw in parsed.calls[: 1 if not self.request.parallel else None]:
            checked = self._check(raw.name, raw.arguments)
            if isinstance(checked, str):
                return checked
            calls.append(checked)
        return ModeOutcome(parsed.content, tuple(calls))

    def correction(self, problem: str) -> str:
        return self.format.correction(problem)

    def _check(self, name: Any, arguments: Any) -> ToolCall | str:
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            offered = ", ".join(self._tools)
            return f"there is no function {name!r} (the functions are: {offered})"
        if isinstance(arguments, str):
            try:
                arguments = extract_json(arguments, want=dict).value if arguments.strip() else {}
            except JsonNotFound as exc:
                return f"the arguments of {name} are not a JSON object ({exc})"
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return f"the arguments of {name} must be a JSON object"
        problem = schema_problem(arguments, tool.parameters)
        if problem:
            return f"the arguments of {name} do not match its parameters: {problem}"
        return ToolCall(new_call_id(), name, dump_json(arguments))
