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
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any

from stackflow_openai.backends.base import ChatBackend, ModelEntry, UnitSettings
from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ResponseMessage,
    Usage,
)
from stackflow_openai.tokens import TokenCounter, Tokenizers

from .common import (
    JsonResult,
    ProxyResult,
    ServiceResult,
    StreamResult,
    check_n,
    forward_or_backend,
    new_id,
    parse_body,
    report_ignored,
    require_text,
    run_counting,
    stop_list,
    token_budget,
)
from .generation import ChoiceEvent, ChoiceFinished, ChoiceStarted, ChoiceText, Job, generate_choices
from .images import ImageLoader
from .prompt import DEFAULT_SYSTEM_PROMPT, fit_prompt, parse_messages
from .registry import ModelRegistry, resolve_model

__all__ = ["ChatService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Plan:
    id: str
    created: int
    model: str
    backend: ChatBackend
    settings: UnitSettings
    job: Job
    n: int
    stops: list[str]
    counter: TokenCounter
    prompt_tokens: int
    include_usage: bool


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
        plan = await self._plan(request, entry, backend)
        if request.stream:
            return StreamResult(self._stream(plan), headers)
        return JsonResult(await self._collect(plan), headers)

    async def _plan(self, request: ChatCompletionRequest, entry: ModelEntry, backend: ChatBackend) -> _Plan:
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
        system = conversation.system_prompt or entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        fit = partial(
            fit_prompt,
            self._tokenizers,
            info,
            system,
            conversation.turns,
            image_tokens=int(entry.extra.get("image_tokens", info.image_tokens)),
        )
        chars = len(system) + sum(len(turn.text) for turn in conversation.turns)
        fitted = await run_counting(fit, chars=chars)
        if fitted.dropped:
            log.info("%s: dropped the %d oldest turns to fit the prefill window", entry.id, fitted.dropped)
        images = [await self._images.load(ref) for turn in fitted.turns for ref in turn.images]
        max_tokens = request.max_completion_tokens or request.max_tokens
        budget = token_budget(info, fitted.prompt_tokens, max_tokens, param="messages")
        settings = UnitSettings(
            system_prompt=system,
            max_token_len=info.max_token_len,  # one setup signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        include_usage = bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        return _Plan(
            id=new_id("chatcmpl"),
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            job=Job(fitted.user_text, images, budget),
            n=n,
            stops=stop_list(request.stop),
            counter=self._tokenizers.for_model(info),
            prompt_tokens=fitted.prompt_tokens,
            include_usage=include_usage,
        )

    def _events(self, plan: _Plan) -> AsyncGenerator[ChoiceEvent, None]:
        return generate_choices(
            plan.backend, plan.settings, [plan.job] * plan.n, counter=plan.counter, stops=plan.stops
        )

    async def _collect(self, plan: _Plan) -> dict[str, Any]:
        choices: list[ChatChoice] = []
        completion_tokens = 0
        async with aclosing(self._events(plan)) as events:
            async for event in events:
                if isinstance(event, ChoiceFinished):
                    completion_tokens += event.completion_tokens
                    message = ResponseMessage(content=event.text)
                    choices.append(
                        ChatChoice(index=event.index, message=message, finish_reason=event.finish_reason)
                    )
        usage = Usage(
            prompt_tokens=plan.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=plan.prompt_tokens + completion_tokens,
        )
        response = ChatCompletion(
            id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage
        )
        return response.model_dump(mode="json")

    async def _stream(self, plan: _Plan) -> AsyncGenerator[dict[str, Any], None]:
        completion_tokens = 0
        async with aclosing(self._events(plan)) as events:
            async for event in events:
                if isinstance(event, ChoiceStarted):
                    choice = ChatChunkChoice(index=event.index, delta={"role": "assistant", "content": ""})
                elif isinstance(event, ChoiceText):
                    yield self._text_chunk(plan, event.index, event.text)
                    continue
                else:
                    completion_tokens += event.completion_tokens
                    choice = ChatChunkChoice(index=event.index, delta={}, finish_reason=event.finish_reason)
                yield self._chunk(plan, [choice])
        if plan.include_usage:
            usage = Usage(
                prompt_tokens=plan.prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=plan.prompt_tokens + completion_tokens,
            )
            yield self._chunk(plan, [], usage)

    @staticmethod
    def _text_chunk(plan: _Plan, index: int, text: str) -> dict[str, Any]:
        """`_chunk` for one text delta, built directly: it runs once per delta, and the pydantic
        round trip was a tenth of the gateway's CPU per delta (docs/performance.md)."""
        choice = {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        chunk = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": [choice],
        }
        if plan.include_usage:
            chunk["usage"] = None
        return chunk

    @staticmethod
    def _chunk(plan: _Plan, choices: list[ChatChunkChoice], usage: Usage | None = None) -> dict[str, Any]:
        chunk = ChatCompletionChunk(
            id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage
        ).model_dump(mode="json")
        if not plan.include_usage:
            del chunk["usage"]  # OpenAI sends "usage": null only when include_usage was asked for
        return chunk
