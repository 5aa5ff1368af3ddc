"""Run a response's generation plan: the finished Response object, or its SSE event stream.

Both end by handing the final Response object to `save` (the store, when `store` is true) BEFORE the
client hears that it is complete: a response a client saw completed is on disk (store/sqlite.py).

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
from contextlib import aclosing
from typing import Any

import anyio

from stackflow_openai.errors import to_openai_error

from .common import GenerationPlan, collect_choices
from .generation import ChoiceFinished, ChoiceText
from .responses_input import item_id
from .responses_output import ResponseEvents, ResponseHead, Status, message_item, response_usage

__all__ = ["Save", "collect_response", "stream_response"]

log = logging.getLogger(__name__)
Save = Callable[[dict[str, Any]], Awaitable[None]]
_SAVE_TIMEOUT = 30.0


def _final(head: ResponseHead, plan: GenerationPlan, finished: ChoiceFinished, msg_id: str) -> dict[str, Any]:
    cut = finished.finish_reason == "length"
    status: Status = "incomplete" if cut else "completed"
    usage = response_usage(plan.usage(finished.completion_tokens))
    return head.body(
        status,
        [message_item(msg_id, finished.text, status)],
        usage,
        completed_at=None if cut else int(time.time()),
        incomplete_reason="max_output_tokens" if cut else None,
    )


async def collect_response(plan: GenerationPlan, head: ResponseHead, save: Save) -> dict[str, Any]:
    finished, _usage = await collect_choices(plan)
    body = _final(head, plan, finished[0], item_id("msg"))
    await save(body)
    return body


def _failure(exc: Exception) -> dict[str, str]:
    status, error, _headers = to_openai_error(exc)
    log.warning("response stream ended by an error (%d): %s", status, error["error"]["message"])
    # OpenAI's ResponseError codes are few; a device or gateway failure is a server_error.
    return {"code": "server_error", "message": error["error"]["message"]}


async def stream_response(
    plan: GenerationPlan, head: ResponseHead, save: Save, usage_out: dict[str, int]
) -> AsyncGenerator[bytes, None]:
    events = ResponseEvents()
    msg_id = item_id("msg")
    pieces: list[str] = []
    outcome: dict[str, Any] | None = None  # the final Response object, once there is one
    async with aclosing(plan.events(stream=True)) as source:
        await anext(source)  # ChoiceStarted: the device accepted the input (errors: an HTTP status)
        try:
            yield events.event("response.created", response=head.body("in_progress", []))
            yield events.event("response.in_progress", response=head.body("in_progress", []))
            for frame in events.message_started(msg_id, 0):
                yield frame
            finished: ChoiceFinished | None = None
            async for event in source:
                if type(event) is ChoiceText:
                    pieces.append(event.text)
                    yield events.text_delta(msg_id, 0, event.text)
                elif isinstance(event, ChoiceFinished):
                    finished = event
            assert finished is not None
            outcome = _final(head, plan, finished, msg_id)
            usage_out.update(plan.usage(finished.completion_tokens).model_dump())
            for frame in events.message_done(outcome["output"][0], 0):
                yield frame
            await save(outcome)
            kind = "response.completed" if outcome["status"] == "completed" else "response.incomplete"
            yield events.event(kind, response=outcome)
        except Exception as exc:  # the 200 is out: report in-band, as OpenAI does
            output = [message_item(msg_id, "".join(pieces), "incomplete")]
            outcome = head.body("failed", output, error=_failure(exc))
            await _save_quietly(save, outcome)
            yield events.event("response.failed", response=outcome)
        finally:
            if outcome is None:  # the client went away (this generator is being closed)
                output = [message_item(msg_id, "".join(pieces), "incomplete")]
                await _save_quietly(save, head.body("cancelled", output))


async def _save_quietly(save: Save, body: dict[str, Any]) -> None:
    # Also runs while a gone client's request is being cancelled: shielded, with a deadline.
    with anyio.move_on_after(_SAVE_TIMEOUT, shield=True):
        try:
            await save(body)
        except Exception:
            log.warning("storing response %s failed", body.get("id"), exc_info=True)
