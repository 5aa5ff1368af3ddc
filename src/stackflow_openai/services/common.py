"""Pieces shared by the chat and text-completion services: results, parsing, token budgets."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from stackflow_openai.backends.base import ChatBackend, ChatModelInfo, ModelEntry, ProxyResponse
from stackflow_openai.errors import (
    ContextLengthExceeded,
    InvalidRequestError,
    ServiceUnavailable,
    UnsupportedParameter,
    validation_error,
)

from .params import IGNORED_HEADER, header_list, ignored_params, reject_if_strict

__all__ = [
    "JsonResult",
    "ProxyResult",
    "ServiceResult",
    "StreamResult",
    "check_n",
    "forward_or_backend",
    "new_id",
    "parse_body",
    "report_ignored",
    "require_text",
    "run_counting",
    "stop_list",
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


@dataclass(slots=True)
class StreamResult:
    chunks: AsyncGenerator[dict[str, Any], None]  # each one SSE event; the caller adds [DONE]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ProxyResult:
    response: ProxyResponse


ServiceResult = JsonResult | StreamResult | ProxyResult


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


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
