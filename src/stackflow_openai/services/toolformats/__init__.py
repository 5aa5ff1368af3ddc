"""Tool-calling prompt formats, one module per model family (see each module's docstring), and the
choice of format for a model: its config `tool_format`, else by its device name."""

from __future__ import annotations

from .base import ParsedOutput, RawCall, ToolDef, ToolFormat, parse_tool_calls
from .generic import GENERIC
from .llama import LLAMA3
from .qwen import QWEN
from .smollm import SMOLLM2

__all__ = [
    "FORMATS",
    "ParsedOutput",
    "RawCall",
    "ToolDef",
    "ToolFormat",
    "format_for",
    "parse_tool_calls",
]

FORMATS: dict[str, ToolFormat] = {f.name: f for f in (QWEN, LLAMA3, SMOLLM2, GENERIC)}
# By device model name (lowercase prefix). InternVL2.5/3 and the DeepSeek-R1 distills run Qwen2.5 LLMs.
_BY_PREFIX = (
    (("qwen", "deepseek-r1", "internvl"), QWEN),
    (("llama3",), LLAMA3),
    (("smollm2", "smollm-"), SMOLLM2),
)


def format_for(model_id: str, configured: str | None = None) -> ToolFormat:
    if configured:
        return FORMATS[configured]
    name = model_id.lower()
    for prefixes, tool_format in _BY_PREFIX:
        if name.startswith(prefixes):
            return tool_format
    return GENERIC  # openbuddy, SmolVLM and anything unknown
