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

from stackflow_openai.backends.base import ChatBackend, ChatModelInfo, ModelEntry, UnitSettings
from stackflow_openai.errors import APIError, ContextLengthExceeded, InvalidRequestError
from stackflow_openai.protocol import ChatCompletionRequest, Usage
from stackflow_openai.sse import text_event_encoder
from stackflow_openai.tokens import PREFILL_MARGIN, Tokenizers

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
from .generation import ChoiceFinished, ChoiceFinishReason, ChoiceToolCall, Job
from .images import ImageLoader
from .output import FormattedPrompt, OutputSpec, build_output_spec
from .params import DROPPED_HEADER
from .prompt import (
    DEFAULT_SYSTEM_PROMPT,
    Conversation,
    FittedPrompt,
    ImageRef,
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
        plan = await self._plan(request, body, entry, backend, headers)
        legacy = bool(body.get("functions"))  # answered with the legacy function_call
        if request.stream:
            usage: dict[str, int] = {}
            return StreamResult(stream_choices(plan, _ChatChunks(plan, legacy), usage), headers, usage)
        return JsonResult(await _collect(plan, legacy), headers)

    async def _plan(
        self,
        request: ChatCompletionRequest,
        body: Mapping[str, Any],
        entry: ModelEntry,
        backend: ChatBackend,
        headers: dict[str, str],
    ) -> GenerationPlan:
        n = check_n(request.n, entry)
        info = backend.info
        spec = build_output_spec(body, info.name or entry.id, entry.extra)
        conversation, refs = _conversation(request, entry, info, spec)
        system = conversation.system_prompt or entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        # A model whose device script swaps in its own system prompt (Llama 3.2; InternVL2/2.5 and SmolVLM
        # with an image) would drop tools written there: they go in the user turn then.
        fixed = info.image_system_prompt if refs else info.text_system_prompt
        prompt = spec.apply(system, conversation.turns, system_kept=fixed is None)
        fitted = await self._fit(info, entry, spec, conversation, prompt)
        if fitted.dropped:
            headers[DROPPED_HEADER] = str(fitted.dropped)  # otherwise the client cannot tell
        refs, dropped = images_to_send(fitted.turns, info.max_images)
        if dropped:
            headers[IMAGES_DROPPED_HEADER] = str(dropped)
        images = [await self._images.load(ref) for ref in refs]
        max_tokens = request.max_completion_tokens or request.max_tokens
        budget = token_budget(info, fitted.prompt_tokens, max_tokens, param="messages")
        settings = UnitSettings(
            system_prompt=prompt.system,
            max_token_len=info.max_token_len,  # one setup signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        # ctx models only: the turn their unit continues from (tools in its system prompt, JSON instruction)
        formatted = Conversation(conversation.system_prompt, prompt.turns)
        turn = conversation_turn(self._tokenizers, info, prompt.system, formatted, fitted, budget)
        # A single-turn unit's silent cap (limiter.py); a ctx unit reports its own (stopped_at_capacity).
        room = info.max_token_len - fitted.prompt_tokens if turn is None else None
        include_usage = bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        image_cost = len(images) * int(entry.extra.get("image_tokens", info.image_tokens))
        retry = partial(
            self._retry_job, info, fitted.system_prompt, fitted.user_text, images, image_cost, max_tokens
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
            filters=spec.factory(retry) if spec.active else None,
        )

    async def _fit(
        self,
        info: ChatModelInfo,
        entry: ModelEntry,
        spec: OutputSpec,
        conversation: Conversation,
        prompt: FormattedPrompt,
    ) -> FittedPrompt:
        await self._tokenizers.load_for(info)  # first use: loads in a worker thread, not on the loop
        fit = partial(
            fit_prompt,
            self._tokenizers,
            info,
            prompt.system,
            prompt.turns,
            image_tokens=int(entry.extra.get("image_tokens", info.image_tokens)),
            instructions=conversation.system_prompt or entry.extra.get("system_prompt"),
            user_prefix=prompt.user_prefix,
        )
        chars = len(prompt.system) + len(prompt.user_prefix) + sum(len(turn.text) for turn in prompt.turns)
        try:
            fitted = await run_counting(fit, chars=chars)
        except ContextLengthExceeded as exc:
            if spec.tools is None:
                raise
            raise self._tools_too_long(exc, info, spec) from exc
        if fitted.dropped:
            log.info("%s: dropped the %d oldest turns to fit the prefill window", entry.id, fitted.dropped)
        return fitted

    def _tools_too_long(self, exc: ContextLengthExceeded, info: ChatModelInfo, spec: OutputSpec) -> APIError:
        tokens = self._tokenizers.for_model(info).count(spec.tools_prompt())
        count = len(spec.tools.tools) if spec.tools else 0
        return ContextLengthExceeded(
            f"{exc.message} The definitions of the {count} tools take {tokens} of these tokens: send fewer "
            "tools, or use a model with a larger prefill window (docs/tools.md).",
            param="tools",
        )

    def _retry_job(
        self,
        info: ChatModelInfo,
        system: str,
        user_text: str,
        images: list[bytes],
        image_cost: int,
        max_tokens: int | None,
        correction: str,
    ) -> Job | None:
        """The re-ask after an unusable answer: the same turn plus the correction, if it still fits."""
        prompt = f"{user_text}\n\n{correction}"
        tokens = self._tokenizers.prompt_tokens(info, system, prompt) + image_cost
        if tokens > info.prefill_len - PREFILL_MARGIN or tokens >= info.max_token_len:
            log.info("a re-ask would not fit the prefill window (%d tokens): not asked", tokens)
            return None
        room = None if info.context_len else info.max_token_len - tokens  # the unit's silent cap (limiter.py)
        return Job(prompt, images, token_budget(info, tokens, max_tokens, param="messages"), room=room)


def _conversation(
    request: ChatCompletionRequest, entry: ModelEntry, info: ChatModelInfo, spec: OutputSpec
) -> tuple[Conversation, list[ImageRef]]:
    """The request's messages (earlier tool calls in the model family's format), checked; and its images."""
    conversation = parse_messages(request.messages, spec.tool_format)
    refs = [ref for turn in conversation.turns for ref in turn.images]
    if refs and not info.vision:
        raise InvalidRequestError(
            f"The model '{entry.id}' does not accept images.",
            param=refs[0].param,
            code="images_not_supported",
        )
    require_text(conversation.turns[-1].text, param=f"messages[{len(request.messages) - 1}].content")
    check_image_count(conversation.turns[-1].images, info.max_images, entry.id)
    return conversation, refs


def _message(choice: ChoiceFinished, legacy: bool) -> dict[str, Any]:
    """The assistant message of one finished choice, as OpenAI writes it (tool calls, or the legacy
    function_call; reasoning_content as DeepSeek's API and vLLM add it)."""
    calls = choice.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": choice.text or (None if calls else "")}
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    message["refusal"] = None
    if calls and legacy:
        message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
    elif calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message


def _reason(reason: ChoiceFinishReason, legacy: bool) -> str:
    return "function_call" if legacy and reason == "tool_calls" else reason


async def _collect(plan: GenerationPlan, legacy: bool) -> dict[str, Any]:
    """The chat.completion object (built directly, in the field order of protocol.ChatCompletion)."""
    finished, usage = await collect_choices(plan)
    choices = [
        {
            "index": choice.index,
            "message": _message(choice, legacy),
            "logprobs": None,
            "finish_reason": _reason(choice.finish_reason, legacy),
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

    def __init__(self, plan: GenerationPlan, legacy: bool = False) -> None:
        self._plan = plan
        self._legacy = legacy
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
    def _choice(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    def started(self, index: int) -> Chunk:
        return self._chunk([self._choice(index, {"role": "assistant", "content": ""})])

    def text(self, index: int, text: str) -> Chunk:
        encode = self._text_events.get(index)
        if encode is None:
            template = self._chunk([self._choice(index, {"content": _PLACEHOLDER})])
            encode = self._text_events[index] = text_event_encoder(template, _PLACEHOLDER)
        return encode(text)

    def reasoning(self, index: int, text: str) -> Chunk:
        return self._chunk([self._choice(index, {"reasoning_content": text})])

    def tool_call(self, event: ChoiceToolCall) -> list[Chunk]:
        """OpenAI's deltas for one call: id, type and name with empty arguments, then the arguments."""
        call = event.call
        if self._legacy:
            if event.call_index > 0:
                return []  # function_call carries one call
            head: dict[str, Any] = {"function_call": {"name": call.name, "arguments": ""}}
            tail: dict[str, Any] = {"function_call": {"arguments": call.arguments}}
        else:
            opening = {"name": call.name, "arguments": ""}
            head = {
                "tool_calls": [
                    {"index": event.call_index, "id": call.id, "type": "function", "function": opening}
                ]
            }
            tail = {"tool_calls": [{"index": event.call_index, "function": {"arguments": call.arguments}}]}
        return [self._chunk([self._choice(event.index, delta)]) for delta in (head, tail)]

    def finished(self, index: int, reason: ChoiceFinishReason) -> Chunk:
        return self._chunk([self._choice(index, {}, _reason(reason, self._legacy))])

    def usage(self, usage: Usage) -> Chunk:
        return self._chunk([], usage)
