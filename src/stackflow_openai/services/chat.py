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

from collections.abc import Callable, Mapping
from typing import Any

from stackflow_openai.backends.base import ChatBackend, ModelEntry
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
    parse_body,
    report_ignored,
    stop_list,
    stream_choices,
)
from .events import ChoiceFinished, ChoiceFinishReason, ChoiceToolCall
from .images import ImageLoader
from .output import build_output_spec
from .plan import PlanBuilder, PlanRequest
from .prompt import parse_messages
from .registry import ModelRegistry, resolve_model

__all__ = ["ChatService"]

_PLACEHOLDER = "\x00text\x00"  # marks where the text goes while a template is built (any string would do)


class ChatService:
    def __init__(self, registry: ModelRegistry, tokenizers: Tokenizers, images: ImageLoader) -> None:
        self._registry = registry
        self._planner = PlanBuilder(tokenizers, images)

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

    async def plan(self, body: Mapping[str, Any], *, endpoint: str = "/v1/realtime") -> GenerationPlan:
        """A device chat request as a plan, for front ends that render its events themselves (Realtime)."""
        request = parse_body(ChatCompletionRequest, body)
        entry = resolve_model(self._registry, request.model, kinds=("chat",), endpoint=endpoint)
        backend = await forward_or_backend(entry, "/chat/completions", body)
        assert not isinstance(backend, ProxyResult)  # kinds=("chat",): never a proxy
        return await self._plan(request, body, entry, backend, {})

    async def _plan(
        self,
        request: ChatCompletionRequest,
        body: Mapping[str, Any],
        entry: ModelEntry,
        backend: ChatBackend,
        headers: dict[str, str],
    ) -> GenerationPlan:
        n = check_n(request.n, entry)
        spec = build_output_spec(body, backend.info.name or entry.id, entry.extra)
        plan_request = PlanRequest(
            conversation=parse_messages(request.messages, spec.tool_format),
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            n=n,
            stops=stop_list(request.stop),
            include_usage=bool(
                request.stream and request.stream_options and request.stream_options.include_usage
            ),
            output=spec,
            text_param=f"messages[{len(request.messages) - 1}].content",
        )
        planned = await self._planner.build(entry, backend, plan_request)
        headers.update(planned.headers())
        return planned.plan


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
