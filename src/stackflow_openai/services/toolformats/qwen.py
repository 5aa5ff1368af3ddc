"""Qwen's tool format (Qwen2.5, Qwen3, Qwen2.5-HA, DeepSeek-R1 distills, InternVL's Qwen LLM): Hermes-style
`<tool_call>` tags, written exactly as Qwen2.5's chat template writes them.

With tools, the template appends to the system message (its `tools` branch):

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}
    </tools>

    For each function call, return a json object with function name and arguments within
    <tool_call></tool_call> XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

(the last instruction is one line). Each tool is one line of `tojson` (Python's json.dumps defaults). The
device's tokenizer script templates (system, user) without `tools`, so the gateway writes this text into
the system prompt itself: the device then prefills exactly what Qwen's template would have produced.
Earlier calls are written back as `<tool_call>` blocks and results as `<tool_response>` blocks, as the
template does. Qwen3's template uses the same text.
"""

from __future__ import annotations

from .base import TaggedToolFormat, ToolDef, dump_json

__all__ = ["QWEN"]

_CALL_FORMAT = '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'


class QwenToolFormat(TaggedToolFormat):
    name = "qwen"

    def tools_prompt(self, tools: list[ToolDef], rule: str) -> str:
        lines = "\n".join(dump_json(tool.original) for tool in tools)
        text = (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{lines}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            f"<tool_call></tool_call> XML tags:\n{_CALL_FORMAT}"
        )
        return f"{text}\n{rule}" if rule else text


QWEN = QwenToolFormat()
