"""`/v1/chat/completions` in OpenAI terms → one lease on a chat backend.

What the device cannot do natively is done here (see design.md "Honesty about parameters"):
- the conversation becomes a setup system prompt plus one user turn that fits the prefill window
  (services/prompt.py);
- `max_tokens`/`max_completion_tokens` are clamped to what the device can hold after the prompt
  (max_token_len counts prompt + generated, protocol §6) and enforced here token by token; the unit
  itself is set up with the model's full max_token_len (docs/decisions.md); `stop` is emulated
  (services/limiter.py);
- `n` choices run one after another on the same unit;
- images are fetched/converted to JPEG here; the backend sends them (and, for the VLM, which does not
  unescape text (protocol §5.3), the text as base64) — nothing about escaping is done at this layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from stackflow_openai.backends.base import ChatBackend, ModelEntry, UnitSettings
from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.protocol import ChatCompletionRequest, Usage
from stackflow_openai.sse import text_event_encoder
from stackflow_openai.tokens import Tokenizers

from .common import (
    Chunk,
    GenerationPlan,
    JsonResult,
    ProxyResult,
    ServiceResult,
    StreamResult,
    check_n,
    collect_choices,
    forward_or_backend,
    new_id,
    parse_body,
    report_ignored,
    require_text,
    run_counting,
    stop_list,
    stream_choices,
    token_budget,
)
from .ctx import conversation_turn
from .generation import Job
from .images import ImageLoader
from .limiter import FinishReason
from .params import DROPPED_HEADER
from .prompt import (
    DEFAULT_SYSTEM_PROMPT,
    check_image_count,
    fit_prompt,
    images_to_send,
    parse_messages,
)
from .registry import ModelRegistry, resolve_model

__all__ = ["ChatService"]

log = logging.getLogger(__name__)
IMAGES_DROPPED_HEADER = "X-Images-Dropped"  # images of earlier turns not sent to a one-image model
_PLACEHOLDER = "\x00text\x00"  # marks where the text goes while a template is built (any string would do)


class ChatService:
    def __init__(self, registry: ModelRegistry, tokenizers: Tokenizers, images: ImageLoader) -> None:
        self._registry = registry
        self._tokenizers = tokenizers
        self._images = images

    async def create(self, body: Mapping[str, Any]) -> ServiceResult:
        request = parse_body(ChatCompletionRequest, body)
        entry = resolve_model(
            self._registry, request.model, kinds=("chat", "proxy"), endpoint="/v1/chat/completions"
        )
        backend = await forward_or_backend(entry, "/chat/completions", body)
        if isinstance(backend, ProxyResult):
            return backend
        headers = report_ignored(request, body, entry)
        plan = await self._plan(request, entry, backend, headers)
        if request.stream:
            usage: dict[str, int] = {}
            return StreamResult(stream_choices(plan, _ChatChunks(plan), usage), headers, usage)
        return JsonResult(await _collect(plan), headers)

    async def _plan(
        self, request: ChatCompletionRequest, entry: ModelEntry, backend: ChatBackend, headers: dict[str, str]
    ) -> GenerationPlan:
        n = check_n(request.n, entry)
        info = backend.info
        conversation = parse_messages(request.messages)
        refs = [ref for turn in conversation.turns for ref in turn.images]
        if refs and not info.vision:
            raise InvalidRequestError(
                f"The model '{entry.id}' does not accept images.",
                param=refs[0].param,
                code="images_not_supported",
            )
        require_text(conversation.turns[-1].text, param=f"messages[{len(request.messages) - 1}].content")
        check_image_count(conversation.turns[-1].images, info.max_images, entry.id)
        system = conversation.system_prompt or entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        await self._tokenizers.load_for(info)  # first use: loads in a worker thread, not on the loop
        fit = partial(
            fit_prompt,
            self._tokenizers,
            info,
            system,
            conversation.turns,
            image_tokens=int(entry.extra.get("image_tokens", info.image_tokens)),
            instructions=conversation.system_prompt or entry.extra.get("system_prompt"),
        )
        chars = len(system) + sum(len(turn.text) for turn in conversation.turns)
        fitted = await run_counting(fit, chars=chars)
        if fitted.dropped:
            log.info("%s: dropped the %d oldest turns to fit the prefill window", entry.id, fitted.dropped)
            headers[DROPPED_HEADER] = str(fitted.dropped)  # otherwise the client cannot tell
        refs, dropped = images_to_send(fitted.turns, info.max_images)
        if dropped:
            headers[IMAGES_DROPPED_HEADER] = str(dropped)
        images = [await self._images.load(ref) for ref in refs]
        max_tokens = request.max_completion_tokens or request.max_tokens
        budget = token_budget(info, fitted.prompt_tokens, max_tokens, param="messages")
        settings = UnitSettings(
            system_prompt=system,
            max_token_len=info.max_token_len,  # one setup signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        turn = conversation_turn(
            self._tokenizers, info, system, conversation, fitted, budget
        )  # ctx models only
        # A single-turn unit's silent cap (limiter.py); a ctx unit reports its own (stopped_at_capacity).
        room = info.max_token_len - fitted.prompt_tokens if turn is None else None
        include_usage = bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        return GenerationPlan(
            id=new_id("chatcmpl"),
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            jobs=[Job(fitted.user_text, images, budget, turn=turn, room=room)] * n,
            stops=stop_list(request.stop),
            counter=self._tokenizers.for_model(info),
            prompt_tokens=fitted.prompt_tokens,
            include_usage=include_usage,
        )


async def _collect(plan: GenerationPlan) -> dict[str, Any]:
    """The chat.completion object (built directly, in the field order of protocol.ChatCompletion)."""
    finished, usage = await collect_choices(plan)
    choices = [
        {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text, "refusal": None},
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }
        for choice in finished
    ]
    return {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": usage.model_dump(),
    }


class _ChatChunks:
    """chat.completion.chunk objects, built directly in the field order of protocol.ChatCompletionChunk
    (a pydantic round trip per chunk was a tenth of the gateway's CPU per delta, docs/performance.md)."""

    def __init__(self, plan: GenerationPlan) -> None:
        self._plan = plan
        self._text_events: dict[int, Callable[[str], bytes]] = {}  # choice index -> its text event encoder

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        plan = self._plan
        chunk = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
        if plan.include_usage:  # OpenAI sends "usage": null only when include_usage was asked for
            chunk["usage"] = None if usage is None else usage.model_dump()
        return chunk

    @staticmethod
    def _choice(index: int, delta: dict[str, str], reason: FinishReason | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    def started(self, index: int) -> Chunk:
        return self._chunk([self._choice(index, {"role": "assistant", "content": ""})])

    def text(self, index: int, text: str) -> Chunk:
        encode = self._text_events.get(index)
        if encode is None:
            template = self._chunk([self._choice(index, {"content": _PLACEHOLDER})])
            encode = self._text_events[index] = text_event_encoder(template, _PLACEHOLDER)
        return encode(text)

    def finished(self, index: int, reason: FinishReason) -> Chunk:
        return self._chunk([self._choice(index, {}, reason)])

    def usage(self, usage: Usage) -> Chunk:
        return self._chunk([], usage)
