"""Responses API tools and `text.format` → the core's OutputSpec (services/output.py), which speaks in
chat completions' terms.

The Responses API writes a function tool flat (`{"type": "function", "name", "parameters"}`), forces a
function with `{"type": "function", "name"}` and asks for JSON with `text.format`
(`{"type": "json_schema", "name", "schema", "strict"}`); chat nests them under `function` and
`response_format.json_schema`. They are rewritten into chat's shape for the shared parser, and the
parser's error parameters are written back into the Responses API's names. Built-in tools (web search,
file search, computer use, ...) do not exist on a device: a 400 names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackflow_openai.errors import APIError, UnsupportedParameter

from .output import OutputSpec, build_output_spec

__all__ = ["chat_terms", "echo_tools", "output_spec", "responses_error"]

# chat's parameter name → the Responses API's (longest first: the first matching prefix wins)
_PARAMS = (
    ("response_format.json_schema.", "text.format."),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("tool_choice.function.", "tool_choice."),
    ("function_call", "tool_choice"),
)


def _chat_tool(tool: Mapping[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise UnsupportedParameter(
            f"The built-in tool '{tool.get('type')}' is not available on a StackFlow device: only function "
            "tools are.",
            param=f"tools[{index}].type",
        )
    function = {key: value for key, value in tool.items() if key != "type"}
    return {"type": "function", "function": function}


def chat_terms(body: Mapping[str, Any]) -> dict[str, Any]:
    """Flat function tools, `tool_choice` and `text.format` (the Responses API's shapes, which the Realtime
    API shares for tools) in chat completions' terms."""
    terms: dict[str, Any] = {}
    tools = body.get("tools")
    if isinstance(tools, list):
        terms["tools"] = [_chat_tool(t, i) if isinstance(t, Mapping) else t for i, t in enumerate(tools)]
    elif tools is not None:
        terms["tools"] = tools  # the shared parser names what is wrong with it
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") == "function" and "name" in choice:
        choice = {"type": "function", "function": {"name": choice["name"]}}
    terms["tool_choice"] = choice
    terms["parallel_tool_calls"] = body.get("parallel_tool_calls")
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(text_format, Mapping) and text_format.get("type") == "json_schema":
        schema = {key: value for key, value in text_format.items() if key != "type"}
        terms["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        terms["response_format"] = text_format
    return terms


def _rename(text: str) -> str:
    for chat, responses in _PARAMS:
        text = text.replace(chat, responses)
    if ".function." in text and text.startswith("tools["):
        text = text.replace(".function.", ".", 1)
    return text


def responses_error(exc: APIError) -> APIError:
    """The same error with chat's parameter names (in `param` and the message) made the Responses API's."""
    if exc.param is None or not exc.param.startswith(("response_format", "tools", "tool_choice", "function")):
        return exc
    exc.param = _rename(exc.param)
    exc.message = exc.message.replace("'response_format", "'text.format").replace(
        "'function_call'", "'tool_choice'"
    )
    exc.args = (exc.message,)
    return exc


def output_spec(body: Mapping[str, Any], model_name: str, options: Mapping[str, Any]) -> OutputSpec:
    try:
        return build_output_spec(chat_terms(body), model_name, options)
    except APIError as exc:
        raise responses_error(exc) from None


def echo_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The function tools as a Response object lists them (OpenAI fills in strict and the nulls)."""
    echoed = []
    for tool in tools or []:
        echoed.append(
            {
                "type": "function",
                "name": tool.get("name"),
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict", True),
            }
        )
    return echoed
