"""SmolLM2's tool format: the function-calling system prompt it was tuned with (SmolLM2-Instruct's
published tool-use prompt, also what Ollama's SmolLM2 template renders): the tools as a JSON list inside
`<tools>`, and the calls as a JSON list inside one `<tool_call>` block, `[]` when no call is needed.

The client's system prompt is kept before it (that template drops it; a gateway should not).
"""

from __future__ import annotations

from typing import Any, Literal

from .base import ToolDef, dump_json

__all__ = ["SMOLLM2"]

_CALL_FORMAT = (
    '<tool_call>[\n{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},\n'
    "(more tool calls as required)\n]</tool_call>"
)


class SmolLM2ToolFormat:
    name = "smollm2"
    placement: Literal["system", "user"] = "system"
    markers: tuple[str, ...] = ("<tool_call>",)

    def tools_prompt(self, tools: list[ToolDef], rule: str) -> str:
        listed = dump_json([tool.original for tool in tools])
        text = (
            "You are an expert in composing functions. You are given a question and a set of possible "
            "functions.\nBased on the question, you will need to make one or more function/tool calls to "
            "achieve the purpose.\nIf none of the functions can be used, point it out and refuse to answer.\n"
            "If the given question lacks the parameters required by the function, also point it out.\n"
            f"You have access to the following tools:\n<tools>{listed}</tools>\n"
            "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
            "The example format is as follows. Please make sure the parameter type is correct. If no "
            "function call is needed, please make the tool calls an empty list '[]'.\n"
            f"{_CALL_FORMAT}"
        )
        return f"{text}\n{rule}" if rule else text

    def call_text(self, name: str, arguments: Any) -> str:
        return (
            f'<tool_call>[\n{{"name": {dump_json(name)}, "arguments": {dump_json(arguments)}}}\n]</tool_call>'
        )

    def result_text(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"

    def correction(self, problem: str) -> str:
        # Short: the format is already in the prompt, and a re-ask must still fit the prefill window.
        return (
            f"Your previous answer was not a usable function call: {problem}. "
            "Answer again with only the call."
        )


SMOLLM2 = SmolLM2ToolFormat()
