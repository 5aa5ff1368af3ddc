"""Run a response's generation plan: the finished Response object, or its SSE event stream.

Both end by handing the final Response object to `save` (the store, when `store` is true) BEFORE the
client hears that it is complete: a response a client saw completed is on disk (store/sqlite.py).

Output items, in the order the model produced them: a `reasoning` item (a reasoning model's thoughts,
split off by the core), the assistant `message` (left out when the answer is only tool calls), then one
`function_call` item per call. A stream opens each item when its first piece comes and closes it when
the next kind starts; tool calls come whole (the core holds them until they are valid).

A stream's first event is made only after the device produced its first piece (the plan's
ChoiceStarted): a busy pool, a bad image or a refused input still become an HTTP error status. An error
after that ends the stream with `response.failed`. A client that goes away closes this generator: the
plan's events are closed, which pauses the unit (services/generation.py), and what was generated so far
is saved with status `cancelled`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, nullcontext
from typing import Any

import anyio

from stackflow_openai.errors import APIError, to_openai_error

from .common import GenerationPlan, collect_choices
from .events import ChoiceFinished, ChoiceReasoning, ChoiceText, ChoiceToolCall, ToolCall
from .responses_input import item_id
from .responses_live import Live
from .responses_output import (
    ResponseEvents,
    ResponseHead,
    Status,
    function_call_item,
    message_item,
    reasoning_item,
    response_usage,
)
from .responses_tools import responses_error

__all__ = ["Save", "collect_response", "failure", "replay_events", "save_quietly", "stream_response"]

log = logging.getLogger(__name__)
Save = Callable[[dict[str, Any]], Awaitable[None]]
_SAVE_TIMEOUT = 30.0


def _status(finished: ChoiceFinished) -> Status:
    return "incomplete" if finished.finish_reason == "length" else "completed"


def _call_item(call: ToolCall) -> dict[str, Any]:
    return function_call_item(item_id("fc"), call.id, call.name, call.arguments, "completed")


def _final(
    head: ResponseHead, plan: GenerationPlan, finished: ChoiceFinished, output: list[dict[str, Any]]
) -> dict[str, Any]:
    status = _status(finished)
    reasoning_tokens = plan.counter.count(finished.reasoning) if finished.reasoning else 0
    usage = response_usage(plan.usage(finished.completion_tokens), reasoning_tokens)
    return head.body(
        status,
        output,
        usage,
        completed_at=int(time.time()) if status == "completed" else None,
        incomplete_reason="max_output_tokens" if status == "incomplete" else None,
    )


async def collect_response(
    plan: GenerationPlan, head: ResponseHead, save: Save, live: Live | None = None
) -> dict[str, Any]:
    try:
        with live(head.id, lambda: head.body("in_progress", [])) if live else nullcontext():
            [finished], _usage = await collect_choices(plan)
    except APIError as exc:  # e.g. no valid tool call after the re-ask: named in this API's terms
        raise responses_error(exc) from None
    output = []
    if finished.reasoning is not None:
        output.append(reasoning_item(item_id("rs"), finished.reasoning))
    if finished.text or not finished.tool_calls:
        output.append(message_item(item_id("msg"), finished.text, _status(finished)))
    output += [_call_item(call) for call in finished.tool_calls]
    body = _final(head, plan, finished, output)
    await save(body)
    return body


class _StreamOutput:
    """The output items of a stream: each opened by its first piece, closed when another kind starts."""

    def __init__(self, events: ResponseEvents) -> None:
        self.events = events
        self.items: list[dict[str, Any]] = []  # closed items, in output order
        self._kind: str | None = None  # "reasoning" or "message": the item open now
        self._id = ""
        self._parts: list[str] = []

    def _open(self, kind: str) -> list[bytes]:
        if self._kind == kind:
            return []
        frames = self._close("completed")
        self._kind, self._id = kind, item_id("rs" if kind == "reasoning" else "msg")
        index = len(self.items)
        if kind == "reasoning":
            return frames + self.events.reasoning_started(self._id, index)
        return frames + self.events.message_started(self._id, index)

    def _item(self, status: Status) -> dict[str, Any]:
        text = "".join(self._parts)
        if self._kind == "reasoning":
            return reasoning_item(self._id, text)
        return message_item(self._id, text, status)

    def _close(self, status: Status) -> list[bytes]:
        if self._kind is None:
            return []
        item, index = self._item(status), len(self.items)
        done = self.events.reasoning_done if self._kind == "reasoning" else self.events.message_done
        self.items.append(item)
        self._kind, self._parts = None, []
        return done(item, index)

    def reasoning(self, text: str) -> list[bytes]:
        frames = self._open("reasoning")
        self._parts.append(text)
        return [*frames, self.events.reasoning_delta(self._id, len(self.items), text)]

    def text(self, text: str) -> list[bytes]:
        frames = self._open("message")
        self._parts.append(text)
        return [*frames, self.events.text_delta(self._id, len(self.items), text)]

    def tool_call(self, call: ToolCall) -> list[bytes]:
        frames = self._close("completed")
        item = _call_item(call)
        frames += self.events.function_call(item, len(self.items))
        self.items.append(item)
        return frames

    def finish(self, finished: ChoiceFinished) -> list[bytes]:
        frames: list[bytes] = []
        if not self.items and self._kind is None:
            frames = self._open("message")  # an empty answer is an empty message, as without a stream
        return frames + self._close(_status(finished))

    def partial(self) -> list[dict[str, Any]]:
        """The items so far, the open one as incomplete (a failed or abandoned stream)."""
        return self.items + ([self._item("incomplete")] if self._kind is not None else [])


def failure(exc: Exception) -> dict[str, str]:
    if isinstance(exc, APIError):
        exc = responses_error(exc)
    status, error, _headers = to_openai_error(exc)
    log.warning("response stream ended by an error (%d): %s", status, error["error"]["message"])
    # OpenAI's ResponseError codes are few; a device or gateway failure is a server_error.
    return {"code": "server_error", "message": error["error"]["message"]}


async def stream_response(
    plan: GenerationPlan,
    head: ResponseHead,
    save: Save,
    usage_out: dict[str, int],
    live: Live | None = None,
) -> AsyncGenerator[bytes, None]:
    events = ResponseEvents()
    output = _StreamOutput(events)
    outcome: dict[str, Any] | None = None  # the final Response object, once there is one
    async with aclosing(plan.events(stream=True)) as source:
        await anext(source)  # ChoiceStarted: the device accepted the input (errors: an HTTP status)
        # Visible to GET /v1/responses/{id} until it is saved (responses_live.py).
        with live(head.id, lambda: head.body("in_progress", output.partial())) if live else nullcontext():
            try:
                yield events.event("response.created", response=head.body("in_progress", []))
                yield events.event("response.in_progress", response=head.body("in_progress", []))
                finished: ChoiceFinished | None = None
                async for event in source:
                    if type(event) is ChoiceText:
                        frames = output.text(event.text)
                    elif type(event) is ChoiceReasoning:
                        frames = output.reasoning(event.text)
                    elif type(event) is ChoiceToolCall:
                        frames = output.tool_call(event.call)
                    else:
                        assert isinstance(event, ChoiceFinished)
                        finished, frames = event, output.finish(event)
                    for frame in frames:
                        yield frame
                assert finished is not None
                outcome = _final(head, plan, finished, output.items)
                usage_out.update(plan.usage(finished.completion_tokens).model_dump())
                await save(outcome)
                kind = "response.completed" if outcome["status"] == "completed" else "response.incomplete"
                yield events.event(kind, response=outcome)
            except Exception as exc:  # the 200 is out: report in-band, as OpenAI does
                outcome = head.body("failed", output.partial(), error=failure(exc))
                await save_quietly(save, outcome)
                yield events.event("response.failed", response=outcome)
            finally:
                if outcome is None:  # the client went away (this generator is being closed)
                    await save_quietly(save, head.body("cancelled", output.partial()))


async def save_quietly(save: Save, body: dict[str, Any]) -> None:
    # Also runs while a gone client's request is being cancelled: shielded, with a deadline.
    with anyio.move_on_after(_SAVE_TIMEOUT, shield=True):
        try:
            await save(body)
        except Exception:
            log.warning("storing response %s failed", body.get("id"), exc_info=True)


def replay_events(body: dict[str, Any], starting_after: int | None = None) -> list[bytes]:
    """A stored response as the events a stream of it would have sent (GET .../{id}?stream=true), each
    item's text in one delta; `starting_after`: only the events after that sequence number (a client
    resuming a stream it lost)."""
    events = ResponseEvents()
    head = {**body, "status": "in_progress", "output": [], "completed_at": None}
    head.pop("usage", None)
    frames = [
        events.event("response.created", response=head),
        events.event("response.in_progress", response=head),
    ]
    for index, item in enumerate(body.get("output") or []):
        frames += _replay_item(events, item, index)
    ends = {"completed": "response.completed", "failed": "response.failed"}
    kind = ends.get(str(body.get("status")), "response.incomplete")  # incomplete, cancelled
    frames.append(events.event(kind, response=body))
    return frames[starting_after + 1 :] if starting_after is not None else frames


def _replay_item(events: ResponseEvents, item: dict[str, Any], index: int) -> list[bytes]:
    if item.get("type") == "function_call":
        return events.function_call(item, index)
    if item.get("type") == "reasoning":
        text = "".join(part.get("text", "") for part in item.get("summary") or [])
        done = reasoning_item(item["id"], text)
        start = events.reasoning_started(item["id"], index)
        return [*start, events.reasoning_delta(item["id"], index, text), *events.reasoning_done(done, index)]
    text = "".join(part.get("text") or "" for part in item.get("content") or [])
    done = message_item(item["id"], text, item.get("status", "completed"))
    return [
        *events.message_started(item["id"], index),
        events.text_delta(item["id"], index, text),
        *events.message_done(done, index),
    ]
