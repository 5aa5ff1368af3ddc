"""Responses API input items → stored items (with ids, in OpenAI's item shapes) → conversation turns.

A request's `input` is a string or a list of items: messages (`input_text` / `input_image` parts, or a
plain string), earlier assistant output messages, `function_call` and `function_call_output` items and
`reasoning` items. They are normalised into the shapes OpenAI returns from `GET .../input_items`
(every item gets an id and a status) and stored that way; a conversation continued with
`previous_response_id` is rebuilt from those stored items and the stored outputs, with the same code.

Turns: system and developer messages join `instructions` in the setup system prompt; user and
assistant messages become turns; function calls and their outputs are written in the model family's own
tool format, as chat completions writes tool_calls and tool messages (services/prompt.py). Reasoning items are
kept in the record but not shown to the model again (a reasoning model's template drops old thoughts).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stackflow_openai.errors import InvalidRequestError

from .prompt import Conversation, HistoryFormat, ImageRef, Turn, build_conversation, call_text, result_text

__all__ = ["ParsedInput", "item_id", "normalize_input", "to_conversation"]

_ROLES = ("user", "assistant", "system", "developer")
_UNSUPPORTED_ITEMS = {
    "item_reference": "Item references are not supported here: continue a conversation with "
    "previous_response_id, or send the items themselves.",
}


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"  # the length of OpenAI's ids (resp_ + 48 hex digits)


@dataclass(frozen=True, slots=True)
class ParsedInput:
    items: list[dict[str, Any]]  # normalised, with ids: what input_items lists
    text_param: str  # where the last item's text is (named when it is empty)


def _unsupported(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_value")


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{param}' must be a string.", param=param, code="invalid_type")
    return value


def _input_part(part: Any, where: str, role: str) -> dict[str, Any]:
    if not isinstance(part, Mapping):
        raise InvalidRequestError(f"'{where}' must be an object.", param=where, code="invalid_type")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text") and role != "assistant":
        return {"type": "input_text", "text": _text(part.get("text"), f"{where}.text")}
    if kind in ("input_text", "output_text", "text"):
        text = _text(part.get("text"), f"{where}.text")
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if kind == "refusal" and role == "assistant":
        return {"type": "refusal", "refusal": _text(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image" and role == "user":
        if part.get("file_id") is not None or part.get("image_url") is None:
            raise _unsupported(
                "An input_image needs an image_url (a data: URL or an http(s) URL); "
                "file ids are not supported here.",
                f"{where}.image_url",
            )
        url = _text(part.get("image_url"), f"{where}.image_url")
        return {"type": "input_image", "image_url": url, "detail": part.get("detail") or "auto"}
    raise _unsupported(
        f"Content part type '{kind}' is not supported in a {role} message here.", f"{where}.type"
    )


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(
            f"'{where}.role' must be one of {', '.join(_ROLES)}.", param=f"{where}.role", code="invalid_value"
        )
    content = item.get("content")
    if isinstance(content, str):
        content = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"'{where}.content' must be a string or a list of content parts.",
            param=f"{where}.content",
            code="invalid_type",
        )
    parts = [_input_part(part, f"{where}.content[{j}]", role) for j, part in enumerate(content)]
    return {
        "id": item.get("id") or item_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": parts,
    }


def _function_call(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {
        "id": item.get("id") or item_id("fc"),
        "type": "function_call",
        "status": "completed",
        "call_id": _text(item.get("call_id"), f"{where}.call_id"),
        "name": _text(item.get("name"), f"{where}.name"),
        "arguments": _text(item.get("arguments"), f"{where}.arguments"),
    }


def _function_output(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):  # content parts: the texts are what a text model can read
        parts = [_input_part(part, f"{where}.output[{j}]", "tool") for j, part in enumerate(output)]
        output = "\n".join(part["text"] for part in parts)
    return {
        "id": item.get("id") or item_id("fco"),
        "type": "function_call_output",
        "status": "completed",
        "call_id": _text(item.get("call_id"), f"{where}.call_id"),
        "output": _text(output, f"{where}.output"),
    }


def _reasoning(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    summary = item.get("summary") or []
    if not isinstance(summary, list):
        raise InvalidRequestError(
            f"'{where}.summary' must be a list.", param=f"{where}.summary", code="invalid_type"
        )
    return {"id": item.get("id") or item_id("rs"), "type": "reasoning", "summary": summary}


_NORMALIZERS = {
    "function_call": _function_call,
    "function_call_output": _function_output,
    "reasoning": _reasoning,
}


def normalize_input(value: str | list[dict[str, Any]] | None) -> ParsedInput:
    if value is None:
        return ParsedInput([], "input")
    if isinstance(value, str):
        item = _message({"role": "user", "content": value}, "input")
        return ParsedInput([item], "input")
    items = []
    for index, raw in enumerate(value):
        where = f"input[{index}]"
        kind = raw.get("type", "message")
        if kind == "message":
            items.append(_message(raw, where))
        elif kind in _NORMALIZERS:
            items.append(_NORMALIZERS[kind](raw, where))
        else:
            message = _UNSUPPORTED_ITEMS.get(kind, f"Input items of type '{kind}' are not supported here.")
            raise _unsupported(message, f"{where}.type")
    last = len(value) - 1
    return ParsedInput(items, f"input[{last}].content" if last >= 0 else "input")


def _turn(item: Mapping[str, Any], image_param: str, tool_format: HistoryFormat | None) -> Turn | None:
    kind = item.get("type")
    if kind == "function_call":
        return Turn("assistant", call_text(item["name"], item["arguments"], tool_format))
    if kind == "function_call_output":
        return Turn("tool", result_text(str(item.get("output", "")), tool_format))
    if kind != "message":
        return None  # reasoning, and output items of kinds this gateway never produces
    texts = [part.get("text") or part.get("refusal") or "" for part in item["content"]]
    images = tuple(
        ImageRef(part["image_url"], image_param.format(j=j))
        for j, part in enumerate(item["content"])
        if part.get("type") == "input_image"
    )
    return Turn(item["role"], "\n".join(t for t in texts if t), images)


def to_conversation(
    instructions: str | None,
    history: Iterable[Mapping[str, Any]],
    items: list[dict[str, Any]],
    tool_format: HistoryFormat | None = None,
) -> Conversation:
    """The conversation of stored `history` items (earlier inputs and outputs) and this request's items.

    An assistant message and the function calls after it are one assistant turn, as chat completions
    writes an assistant message with tool_calls."""
    system: list[str] = [instructions] if instructions and instructions.strip() else []
    turns: list[Turn] = []
    sources = [(item, "previous_response_id") for item in history]
    sources += [(item, f"input[{i}].content[{{j}}].image_url") for i, item in enumerate(items)]
    for item, image_param in sources:
        turn = _turn(item, image_param, tool_format)
        if turn is None:
            continue
        if turn.role in ("system", "developer"):
            system.append(turn.text)
        elif item.get("type") == "function_call" and turns and turns[-1].role == "assistant":
            turns[-1] = Turn("assistant", f"{turns[-1].text}\n{turn.text}".lstrip("\n"), turns[-1].images)
        else:
            turns.append(turn)
    empty = InvalidRequestError("The request has no input: send 'input' (text or items).", param="input")
    return build_conversation(system, turns, empty=empty)
