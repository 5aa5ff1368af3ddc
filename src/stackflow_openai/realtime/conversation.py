"""The items of one Realtime conversation, and their rendering as chat-completion messages.

The device has no audio-in LLM: a user's audio item reaches the model as its transcript, an assistant's
audio item as the transcript of what was spoken (after a barge-in, only what the user heard: see
`truncate`). Every item keeps OpenAI's shape (`realtime.item`), so `conversation.item.*` events can carry
it as is. The chat service then fits the messages to the device's window exactly as it fits a chat request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import secrets
from typing import Any

__all__ = ["Conversation", "ItemProblem", "client_audio", "new_item_id"]


def new_item_id() -> str:
    return "item_" + secrets.token_hex(10)


class ItemProblem(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class Conversation:
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}  # insertion-ordered

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self._items.get(item_id)

    @property
    def last_id(self) -> str | None:
        return next(reversed(self._items), None)

    def add(self, item: dict[str, Any], previous_item_id: str | None = None) -> str | None:
        """Insert `item` after `previous_item_id` (None: at the end); returns the id it follows."""
        if previous_item_id is None or previous_item_id == self.last_id:
            after = self.last_id
            self._items[item["id"]] = item
            return after
        if previous_item_id not in self._items:
            raise ItemProblem(f"Item '{previous_item_id}' does not exist.", "previous_item_id")
        ordered = list(self._items.items())
        at = next(i for i, (key, _) in enumerate(ordered) if key == previous_item_id) + 1
        ordered.insert(at, (item["id"], item))
        self._items = dict(ordered)
        return previous_item_id

    def delete(self, item_id: str) -> None:
        if self._items.pop(item_id, None) is None:
            raise ItemProblem(f"Item '{item_id}' does not exist.", "item_id")

    def client_item(self, raw: Any) -> dict[str, Any]:
        """A `conversation.item.create` item checked and completed (id, object, status)."""
        if not isinstance(raw, dict):
            raise ItemProblem("item must be an object", "item")
        item = copy.deepcopy(raw)
        item.setdefault("id", new_item_id())
        if not isinstance(item["id"], str) or item["id"] in self._items:
            raise ItemProblem(f"Item id {item['id']!r} is not a new string id.", "item.id")
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        kind = item.get("type")
        if kind == "message":
            _check_message(item)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
                raise ItemProblem("function_call_output needs call_id and output strings", "item")
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise ItemProblem(f"function_call needs a string {key}", f"item.{key}")
        else:
            raise ItemProblem(f"Unsupported item type {kind!r}.", "item.type")
        return item

    def messages(self, instructions: str) -> list[dict[str, Any]]:
        """The conversation as chat-completion messages (instructions first, as a system message)."""
        out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
        for item in self._items.values():
            kind = item["type"]
            if kind == "message":
                text = " ".join(t for t in (_part_text(p) for p in item["content"]) if t)
                if text or item["role"] == "user":
                    out.append({"role": item["role"], "content": text})
            elif kind == "function_call":
                call = {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
                last = out[-1] if out else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)  # parallel calls of one answer: one assistant turn
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
        return out


def _part_text(part: dict[str, Any]) -> str:
    if part.get("type") in ("input_text", "output_text", "text"):
        return str(part.get("text") or "")
    return str(part.get("transcript") or "")  # input_audio / output_audio: what was said


def _check_message(item: dict[str, Any]) -> None:
    role, content = item.get("role"), item.get("content")
    allowed = {
        "user": ("input_text", "input_audio"),
        "system": ("input_text",),
        "assistant": ("output_text", "output_audio", "text"),
    }
    if role not in allowed:
        raise ItemProblem("role must be user, assistant or system", "item.role")
    if not isinstance(content, list) or not content:
        raise ItemProblem("content must be a non-empty list", "item.content")
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in allowed[role]:
            raise ItemProblem(
                f"A {role} message takes parts of type {', '.join(allowed[role])}.",
                f"item.content[{index}].type",
            )


def client_audio(item: dict[str, Any]) -> tuple[int, bytes | None]:
    """The first input_audio part that brings audio without a transcript: its index and pcm16 (the base64
    is dropped from the item, as OpenAI does not echo audio back in item events)."""
    for index, part in enumerate(item.get("content") or ()):
        if part.get("type") == "input_audio" and part.get("audio") is not None and not part.get("transcript"):
            try:
                pcm = base64.b64decode(part.pop("audio"), validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise ItemProblem(
                    "audio must be base64 pcm16 audio.", f"item.content[{index}].audio"
                ) from None
            return index, pcm
    return 0, None
