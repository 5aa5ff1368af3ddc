"""A generic tool instruction, for families with no documented tool format of their own (SmolVLM,
openbuddy, unknown models): the Hermes/Qwen `<tool_call>` convention, stated compactly, since it is the
format most open chat models have seen and the one the parser reads best.
"""

from __future__ import annotations

from typing import Any, Literal

from .base import ToolDef, dump_json

__all__ = ["GENERIC"]

_CALL_FORMAT = '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>'


class GenericToolFormat:
    name = "generic"
    placement: Literal["system", "user"] = "system"
    markers: tuple[str, ...] = ("<tool_call>",)

    def tools_prompt(self, tools: list[ToolDef], rule: str) -> str:
        lines = "\n".join(dump_json(tool.original) for tool in tools)
        text = (
            "You can call these functions (JSON definitions):\n"
            f"{lines}\n"
            "To call a function, answer with only this, once per call:\n"
            f"{_CALL_FORMAT}\n"
            "Otherwise answer normally."
        )
        return f"{text}\n{rule}" if rule else text

    def call_text(self, name: str, arguments: Any) -> str:
        return (
            f'<tool_call>\n{{"name": {dump_json(name)}, "arguments": {dump_json(arguments)}}}\n</tool_call>'
        )

    def result_text(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"

    def correction(self, problem: str) -> str:
        # Short: the format is already in the prompt, and a re-ask must still fit the prefill window.
        return (
            f"Your previous answer was not a usable function call: {problem}. "
            "Answer again with only the call."
        )


GENERIC = GenericToolFormat()
