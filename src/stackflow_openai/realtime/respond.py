"""The body of a Realtime response task: response.created ... response.done, whatever happens between.

Kept apart from the session's event handling: this is the one place that turns the outcome of a run
(completed, cut by max_output_tokens, cancelled by the client or a barge-in, failed on the device) into
OpenAI's `response.done` with its status and usage, and records the assistant item in the conversation.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from stackflow_openai.errors import to_openai_error
from stackflow_openai.services.responses_tools import chat_terms

from .chained import ChainedRun
from .responder import ResponseRun

if TYPE_CHECKING:
    from .chain import DeviceChain
    from .session import RealtimeSession

__all__ = ["run_response"]

_PCM = {"type": "audio/pcm", "rate": 24000}


async def run_response(
    session: RealtimeSession,
    instructions: str,
    modalities: list[str],
    limit: int | None,
    pending: asyncio.Task[None] | None,
    chain: DeviceChain | None = None,
) -> None:
    config = session.config
    response: dict[str, Any] = {
        "id": "resp_" + secrets.token_hex(10),
        "object": "realtime.response",
        "status": "in_progress",
        "output": [],
        "conversation_id": session.id.replace("sess_", "conv_"),
        "output_modalities": list(modalities),
        "max_output_tokens": "inf" if limit is None else limit,
        "audio": {"output": {"format": dict(_PCM), "voice": config.voice}},
    }  # status_details and usage come with response.done (OpenAI's schema has no null for them)
    await session.send({"type": "response.created", "response": dict(response)})
    run: ResponseRun | None = None
    status, prompt_tokens = "completed", 0
    details: dict[str, Any] | None = None
    user_text = ""
    try:
        if pending is not None:
            await asyncio.wait({pending})
        if chain is not None:  # the device is already answering the turn by itself
            user_text = session.conversation.messages("")[-1]["content"]
            prompt_tokens = chain.counter.count(user_text)
            run = ChainedRun(
                chain=chain,
                speed=config.speed,
                send=session.send,
                response=response,
                add_item=session.conversation.add,
            )
        else:
            await session.chain.dissolve("a response on the gateway's path")
            run, prompt_tokens = await _gateway_run(session, instructions, modalities, limit, response)
        session.last_run = run
        await run.run()
        if run.finish_reason == "length":
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        elif chain is not None:
            chain.record(user_text, run.text)
    except asyncio.CancelledError:
        status, details = "cancelled", {"type": "cancelled", "reason": session.cancel_reason}
    except Exception as exc:  # an API/backend error, or a bug (to_openai_error logs it): failed
        _, error_body, _ = to_openai_error(exc)
        error = error_body["error"]
        status, details = (
            "failed",
            {"type": "failed", "error": {"type": error["type"], "code": error["code"]}},
        )
        await session.error(
            error["message"],
            code=error.get("code") or "error",
            param=error.get("param"),
            event_id=None,
            kind=error["type"],
        )
    if run is not None:
        if status != "completed" and run.message is not None:
            run.message["status"] = "incomplete"
        await run.send_done_events()
        response["output"] = run.items
    completion = run.completion_tokens if run is not None else 0
    if details is not None:
        response["status_details"] = details
    response.update(
        status=status,
        usage={
            "total_tokens": prompt_tokens + completion,
            "input_tokens": prompt_tokens,
            "output_tokens": completion,
            "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": completion, "audio_tokens": 0},
        },
    )
    await session.send({"type": "response.done", "response": response})


async def _gateway_run(
    session: RealtimeSession,
    instructions: str,
    modalities: list[str],
    limit: int | None,
    response: dict[str, Any],
) -> tuple[ResponseRun, int]:
    """The response through the gateway's chat core and speech service; and its prompt's tokens."""
    config = session.config
    body: dict[str, Any] = {"messages": session.conversation.messages(instructions)}
    if config.tools:  # the Realtime API's function tools have the Responses API's flat shape
        body.update(chat_terms({"tools": config.tools, "tool_choice": config.tool_choice}))
    if limit is not None:
        body["max_tokens"] = limit
    plan = await session.services.plan(body)
    speak = None
    if modalities == ["audio"]:
        voice, speed = config.voice, config.speed

        def speak(text: str) -> Any:
            return session.services.speak(text, voice, speed)

    run = ResponseRun(
        send=session.send,
        response=response,
        events=plan.events(stream=True),
        speak=speak,
        add_item=session.conversation.add,
    )
    return run, plan.prompt_tokens
