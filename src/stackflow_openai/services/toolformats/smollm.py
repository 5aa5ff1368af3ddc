"""SmolLM2's tool format: the function-calling system prompt it was tuned with (SmolLM2-Instruct's
published tool-use prompt, also what Ollama's SmolLM2 template renders): the tools as a JSON list inside
`<tools>`, and the calls as a JSON list inside one `<tool_call>` block, `[]` when no call is needed.

The client's system prompt is kept before it (that template drops it; a gateway should not).
"""

from __future__ import annotations

from .base import TaggedToolFormat, ToolDef, dump_json

__all__ = ["SMOLLM2"]

_CALL_FORMAT = (
    '<tool_call>[\n{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},\n'
    "(more tool calls as required)\n]</tool_call>"
)


class SmolLM2ToolFormat(TaggedToolFormat):
    name = "smollm2"
    call_open, call_close = "<tool_call>[\n", "\n]</tool_call>"  # a JSON list of calls

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


SMOLLM2 = SmolLM2ToolFormat()
