"""Pieces shared by the chat and text-completion services: results, parsing, token budgets, and the
generation plan with the loops that turn its events into a response or a stream of chunks."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
from pydantic import BaseModel, ValidationError

from stackflow_openai.backends.base import ChatBackend, ChatModelInfo, ModelEntry, ProxyResponse, UnitSettings
from stackflow_openai.errors import (
    ContextLengthExceeded,
    InvalidRequestError,
    ServiceUnavailable,
    UnsupportedParameter,
    validation_error,
)
from stackflow_openai.protocol import Usage
from stackflow_openai.tokens import TokenCounter

from .events import (
    ChoiceEvent,
    ChoiceFinished,
    ChoiceFinishReason,
    ChoiceReasoning,
    ChoiceStarted,
    ChoiceText,
    ChoiceToolCall,
    FilterFactory,
    Job,
)
from .generation import generate_choices
from .params import IGNORED_HEADER, header_list, ignored_params, reject_if_strict

__all__ = [
    "AnswerChunkFormat",
    "Chunk",
    "ChunkFormat",
    "GenerationPlan",
    "JsonResult",
    "ProxyResult",
    "ServiceResult",
    "StreamResult",
    "check_n",
    "collect_choices",
    "forward_or_backend",
    "ignored_headers",
    "new_id",
    "parse_body",
    "report_ignored",
    "require_text",
    "run_counting",
    "stop_list",
    "stream_choices",
    "token_budget",
]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Counting this many characters of prompt takes ~0.2 ms; a worker-thread round trip costs about as much,
# and was a tenth of the gateway's added latency per request (docs/performance.md).
INLINE_COUNT_CHARS = 2000


@dataclass(slots=True)
class JsonResult:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# One SSE event of a stream: a chunk object, or an event already framed as bytes (`data: {...}\n\n`).
# Services frame only text deltas themselves, from a per-stream template (sse.text_event_encoder): that
# is the chunk sent once per delta, and the JSON encoder was its largest cost.
Chunk = dict[str, Any] | bytes


@dataclass(slots=True)
class StreamResult:
    chunks: AsyncGenerator[Chunk, None]  # each one SSE event; the caller adds [DONE]
    headers: dict[str, str] = field(default_factory=dict)
    # The token counts of a device stream, filled in when it has ended, whether or not the client asked
    # for them (stream_options.include_usage): for the metrics.
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ProxyResult:
    response: ProxyResponse


ServiceResult = JsonResult | StreamResult | ProxyResult


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"  # 32 random hex digits, as uuid4().hex without the object


def parse_body(model: type[M], body: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from exc


def report_ignored(request: BaseModel, body: Mapping[str, Any], entry: ModelEntry) -> dict[str, str]:
    """Headers naming the ignored parameters; 400 instead when the model is strict."""
    ignored = ignored_params(request.model_extra or {}, body)
    if body.get("stream_options") is not None and not body.get("stream"):
        ignored = sorted([*ignored, "stream_options"])
    return ignored_headers(ignored, entry)


def ignored_headers(ignored: list[str], entry: ModelEntry) -> dict[str, str]:
    """The header naming the ignored parameters; 400 instead when the model is strict."""
    reject_if_strict(ignored, strict=entry.strict_params)
    return {IGNORED_HEADER: header_list(ignored)} if ignored else {}


def check_n(n: int | None, entry: ModelEntry) -> int:
    count = n or 1
    if count > 1 and not entry.allow_n:
        raise UnsupportedParameter(f"The model '{entry.id}' serves only n=1.", param="n")
    return count


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def token_budget(info: ChatModelInfo, prompt_tokens: int, max_tokens: int | None, *, param: str) -> int:
    """Generated tokens allowed: max_tokens, clamped to what the device can hold after the prompt.

    The device's max_token_len counts prompt + generated positions (protocol §6), so the budget is what
    is left of the model's capacity after the prompt. The unit is set up with the full capacity and
    the gateway cuts at the budget: a setup per distinct prompt length would reload the model."""
    room = info.max_token_len - prompt_tokens
    if room < 1:
        raise ContextLengthExceeded(
            f"The prompt uses {prompt_tokens} tokens and this model holds {info.max_token_len} in total: "
            "there is no room left to generate.",
            param=param,
        )
    return room if max_tokens is None else min(max_tokens, room)


async def run_counting(count: Callable[[], T], *, chars: int) -> T:
    """Run token counting (prompt fitting) inline when short, else in a worker thread: a long
    conversation takes milliseconds to tokenize and must not stall other requests' streams."""
    if chars <= INLINE_COUNT_CHARS:
        return count()
    return await anyio.to_thread.run_sync(count)


def require_text(text: str, *, param: str) -> None:
    # The LLM unit silently ignores an empty input (protocol §5.2): the request would wait forever.
    if not text.strip():
        raise InvalidRequestError("The prompt is empty; the device needs some text to answer.", param=param)


async def forward_or_backend(
    entry: ModelEntry, path: str, body: Mapping[str, Any]
) -> ProxyResult | ChatBackend:
    """Proxy models are forwarded whole (the upstream does its own validation); others need a backend."""
    if entry.kind == "proxy":
        if entry.proxy is None:
            raise ServiceUnavailable(f"The model '{entry.id}' has no upstream configured.")
        return ProxyResult(await entry.proxy.forward(path, dict(body)))
    if entry.chat is None:
        raise ServiceUnavailable(f"The model '{entry.id}' has no chat backend.")
    return entry.chat


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """A validated chat or text-completion request, ready to run on a leased unit."""

    id: str
    created: int
    model: str
    backend: ChatBackend
    settings: UnitSettings
    jobs: list[Job]  # one per choice, in index order
    stops: list[str]
    counter: TokenCounter
    prompt_tokens: int
    include_usage: bool  # stream_options.include_usage on a stream
    # Per choice: reasoning split, tool calls, JSON checks (services/output.py); None: the raw text.
    filters: FilterFactory | None = None

    def events(self, *, stream: bool) -> AsyncGenerator[ChoiceEvent, None]:
        return generate_choices(
            self.backend,
            self.settings,
            self.jobs,
            counter=self.counter,
            stops=self.stops,
            stream=stream,
            filters=self.filters,
        )

    def usage(self, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
        )


async def collect_choices(plan: GenerationPlan) -> tuple[list[ChoiceFinished], Usage]:
    """Run every choice to its end: the finished choices in index order, and the usage."""
    finished: list[ChoiceFinished] = []
    async with aclosing(plan.events(stream=False)) as events:
        async for event in events:
            if isinstance(event, ChoiceFinished):
                finished.append(event)
    return finished, plan.usage(sum(choice.completion_tokens for choice in finished))


class ChunkFormat(Protocol):
    """How one endpoint writes its stream chunks."""

    def started(self, index: int) -> Chunk | None: ...  # None: nothing to send when a choice starts

    def text(self, index: int, text: str) -> Chunk: ...

    def finished(self, index: int, reason: ChoiceFinishReason) -> Chunk: ...

    def usage(self, usage: Usage) -> Chunk: ...


@runtime_checkable
class AnswerChunkFormat(ChunkFormat, Protocol):
    """A format that can also stream the parts a plan's answer filters produce (chat's)."""

    def reasoning(self, index: int, text: str) -> Chunk: ...

    def tool_call(self, event: ChoiceToolCall) -> list[Chunk]: ...


async def stream_choices(
    plan: GenerationPlan, chunks: ChunkFormat, usage_out: dict[str, int]
) -> AsyncGenerator[Chunk, None]:
    """The chunks of a stream; `usage_out` gets the token counts once it has ended."""
    completion_tokens = 0
    async with aclosing(plan.events(stream=True)) as events:
        async for event in events:
            if type(event) is ChoiceText:  # the common case first: once per (batch of) delta(s)
                yield chunks.text(event.index, event.text)
            elif type(event) is ChoiceStarted:
                first = chunks.started(event.index)
                if first is not None:
                    yield first
            elif type(event) is ChoiceFinished:
                completion_tokens += event.completion_tokens
                yield chunks.finished(event.index, event.finish_reason)
            else:  # only a plan with answer filters makes these, and only for a format that has them
                assert isinstance(chunks, AnswerChunkFormat)
                if type(event) is ChoiceReasoning:
                    yield chunks.reasoning(event.index, event.text)
                else:
                    assert isinstance(event, ChoiceToolCall)
                    for chunk in chunks.tool_call(event):
                        yield chunk
    usage = plan.usage(completion_tokens)
    usage_out.update(usage.model_dump())
    if plan.include_usage:
        yield chunks.usage(usage)
