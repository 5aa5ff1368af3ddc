"""Llama 3.2's tool format (JSON-based tool calling, as Meta's Llama 3.2 chat template writes it).

With tools, the template puts them in the first user message (`tools_in_user_message`, its default):

    Given the following functions, please respond with a JSON for a function call with its proper
    arguments that best answers the given prompt.

    Respond in the format {"name": function name, "parameters": dictionary of argument name and its
    value}.Do not use variables.

    {tool as JSON, indented by 4}

    <the user's message>

(the first two paragraphs are one line each, "value}.Do" without a space, as in the template). The model
answers with a bare JSON object. On a single-turn unit the user turn is the whole conversation, so the
block leads it. The template's tool results use an `ipython` role the unit cannot take: results are
written as plain text in the transcript. "Environment: ipython" (a system line the template adds with
tools) is not written: the device's script renders its own system header.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from .base import ToolDef, dump_json

__all__ = ["LLAMA3"]

_CALL_FORMAT = '{"name": function name, "parameters": dictionary of argument name and its value}'


class Llama3ToolFormat:
    name = "llama3"
    placement: Literal["system", "user"] = "user"
    markers: tuple[str, ...] = ("<|python_tag|>",)  # (an answer opening with "{" is held anyway)

    def tools_prompt(self, tools: list[ToolDef], rule: str) -> str:
        definitions = "".join(
            json.dumps(tool.original, ensure_ascii=False, indent=4) + "\n\n" for tool in tools
        )
        head = (
            "Given the following functions, please respond with a JSON for a function call with its proper "
            "arguments that best answers the given prompt.\n\n"
            f"Respond in the format {_CALL_FORMAT}.Do not use variables.\n\n"
        )
        return head + definitions + (f"{rule}\n\n" if rule else "")

    def call_text(self, name: str, arguments: Any) -> str:
        return f'{{"name": {dump_json(name)}, "parameters": {dump_json(arguments)}}}'

    def result_text(self, content: str) -> str:
        return content

    def correction(self, problem: str) -> str:
        # Short: the format is already in the prompt, and a re-ask must still fit the prefill window.
        return (
            f"Your previous answer was not a usable function call: {problem}. "
            "Answer again with only the JSON."
        )


LLAMA3 = Llama3ToolFormat()
