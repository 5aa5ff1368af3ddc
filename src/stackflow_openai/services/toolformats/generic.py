"""A generic tool instruction, for families with no documented tool format of their own (SmolVLM,
openbuddy, unknown models): the Hermes/Qwen `<tool_call>` convention, stated compactly, since it is the
format most open chat models have seen and the one the parser reads best.
"""

from __future__ import annotations

from .base import TaggedToolFormat, ToolDef, dump_json

__all__ = ["GENERIC"]

_CALL_FORMAT = '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>'


class GenericToolFormat(TaggedToolFormat):
    name = "generic"

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


GENERIC = GenericToolFormat()
