"""The Response object and its SSE events, built directly in OpenAI's field order.

`ResponseHead` holds what a response echoes from its request; `ResponseHead.body()` is the Response object
in any state. `ResponseEvents` frames the stream's events: `event: <type>` and `data: <json>` with a
`sequence_number` counting from 0, as OpenAI sends them (no `[DONE]` at the end of a Responses stream).
Text deltas, the one event sent per generated piece, are framed from a template without the JSON
encoder (as the chat service does, sse.text_event_encoder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Literal

from stackflow_openai.protocol import Usage

__all__ = [
    "ResponseEvents",
    "ResponseHead",
    "Status",
    "function_call_item",
    "message_item",
    "reasoning_item",
    "response_usage",
]

Status = Literal["completed", "incomplete", "failed", "cancelled", "in_progress", "queued"]
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def response_usage(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, text: str | None, status: Status) -> dict[str, Any]:
    """An assistant output message; `text` None: no content part yet (in progress)."""
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}


def reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    """A reasoning model's thoughts, as a summary (OpenAI's only readable form of them)."""
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": summary}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: Status
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


@dataclass(slots=True)
class ResponseHead:
    """The request fields a Response echoes, and its identity."""

    id: str
    created_at: int
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    background: bool = False

    def body(
        self,
        status: Status,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        completed_at: int | None = None,
        incomplete_reason: str | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "completed_at": completed_at,
            "error": error,
            "incomplete_details": None if incomplete_reason is None else {"reason": incomplete_reason},
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": self.prompt_cache_key,
            "reasoning": self.reasoning,
            "safety_identifier": self.safety_identifier,
            "service_tier": "default",
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_logprobs": 0,
            "top_p": self.top_p,
            "truncation": self.truncation,
            "usage": usage,
            "metadata": self.metadata,
        }
        # OpenAI's schema has no null for these: left out until there is a value (the SDKs read None).
        if usage is None:
            del body["usage"]
        if self.user is not None:
            body["user"] = self.user
        return body


class ResponseEvents:
    """SSE events of one response stream, numbered in the order they are made."""

    def __init__(self) -> None:
        self.sequence = 0
        self._delta_frames: dict[str, tuple[bytes, bytes]] = {}  # item id -> (head, middle) of its deltas

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _JSON.encode(payload).encode() + b"\n\n"

    def text_delta(self, item_id: str, output_index: int, text: str) -> bytes:
        """`response.output_text.delta` for content part 0 of the item (the only text part it has)."""
        frame = self._delta_frames.get(item_id)
        if frame is None:
            head = (
                b"event: response.output_text.delta\n"
                b'data: {"type":"response.output_text.delta","sequence_number":'
            )
            middle = (
                f',"item_id":{_JSON.encode(item_id)},"output_index":{output_index},"content_index":0,"delta":'
            )
            frame = self._delta_frames[item_id] = (head, middle.encode())
        number = self.sequence
        self.sequence += 1
        return (
            frame[0]
            + str(number).encode()
            + frame[1]
            + encode_basestring(text).encode()
            + b',"logprobs":[]}\n\n'
        )

    def message_started(self, item_id: str, output_index: int) -> list[bytes]:
        return [
            self.event(
                "response.output_item.added",
                output_index=output_index,
                item=message_item(item_id, None, "in_progress"),
            ),
            self.event(
                "response.content_part.added",
                item_id=item_id,
                output_index=output_index,
                content_index=0,
                part=output_text_part(""),
            ),
        ]

    def reasoning_started(self, item_id: str, output_index: int) -> list[bytes]:
        where = {"item_id": item_id, "output_index": output_index, "summary_index": 0}
        return [
            self.event(
                "response.output_item.added", output_index=output_index, item=reasoning_item(item_id, None)
            ),
            self.event(
                "response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""}
            ),
        ]

    def reasoning_delta(self, item_id: str, output_index: int, text: str) -> bytes:
        where = {"item_id": item_id, "output_index": output_index, "summary_index": 0}
        return self.event("response.reasoning_summary_text.delta", **where, delta=text)

    def reasoning_done(self, item: dict[str, Any], output_index: int) -> list[bytes]:
        part = item["summary"][0]
        where = {"item_id": item["id"], "output_index": output_index, "summary_index": 0}
        return [
            self.event("response.reasoning_summary_text.done", **where, text=part["text"]),
            self.event("response.reasoning_summary_part.done", **where, part=part),
            self.event("response.output_item.done", output_index=output_index, item=item),
        ]

    def function_call(self, item: dict[str, Any], output_index: int) -> list[bytes]:
        """A whole call (the core holds calls until they are complete): added, arguments, done."""
        opened = {**item, "status": "in_progress", "arguments": ""}
        where = {"item_id": item["id"], "output_index": output_index}
        return [
            self.event("response.output_item.added", output_index=output_index, item=opened),
            self.event("response.function_call_arguments.delta", **where, delta=item["arguments"]),
            self.event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self.event("response.output_item.done", output_index=output_index, item=item),
        ]

    def message_done(self, item: dict[str, Any], output_index: int) -> list[bytes]:
        text = item["content"][0]["text"]
        where = {"item_id": item["id"], "output_index": output_index, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event("response.content_part.done", **where, part=output_text_part(text)),
            self.event("response.output_item.done", output_index=output_index, item=item),
        ]
