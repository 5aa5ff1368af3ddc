"""Tokens and time to first token, observed around the chat and text-completion services.

Token counts come from the services' own `usage` (the same numbers clients see): a JSON result's body,
or for a device stream the counts the service leaves on the `StreamResult` when the stream has ended
(whether or not the client asked for them with `stream_options.include_usage`). Proxied models are left
untouched (the upstream decides). Time to first token is measured on streams, from the start of the
request to the first chunk with text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, Protocol

from stackflow_openai.services import JsonResult, ModelRegistry, ServiceResult, StreamResult
from stackflow_openai.services.common import Chunk

from .context import current_request, note_model
from .metrics import Metrics

__all__ = ["ObservedService"]


class _Service(Protocol):
    @property
    def create(self) -> Callable[..., Awaitable[ServiceResult]]: ...  # (body, **options)


class ObservedService:
    def __init__(self, inner: _Service, registry: ModelRegistry, metrics: Metrics) -> None:
        self.inner = inner
        self.registry = registry
        self.metrics = metrics

    async def create(self, body: Mapping[str, Any], **options: Any) -> ServiceResult:
        """`options` go to the service as they are (the responses service's `owner`)."""
        started = time.monotonic()
        requested = body.get("model")
        requested = requested if isinstance(requested, str) else ""
        note_model(requested)
        entry = self.registry.get(requested)
        # Labels use the served model's id (aliases resolved): a client's arbitrary model names must
        # not create new time series.
        model = entry.id if entry is not None else "unknown"
        result = await self.inner.create(body, **options)
        if isinstance(result, JsonResult):
            self.metrics.usage(model, result.body.get("usage"))
        elif isinstance(result, StreamResult):
            result.chunks = self._watch(result.chunks, result, model, started)
        return result

    async def _watch(
        self, chunks: AsyncGenerator[Chunk, None], result: StreamResult, model: str, started: float
    ) -> AsyncGenerator[Chunk, None]:
        async with aclosing(chunks):
            async for chunk in chunks:
                # Services send text deltas as events already framed (bytes); other chunks are objects.
                if type(chunk) is bytes or _has_text(chunk):
                    self._first_text(model, started)
                    yield chunk
                    break
                yield chunk
            async for chunk in chunks:  # after the first text: nothing more to look at per chunk
                yield chunk
        self.metrics.usage(model, result.usage)

    def _first_text(self, model: str, started: float) -> None:
        ttft = time.monotonic() - started
        self.metrics.first_token(model, ttft)
        info = current_request.get()
        if info is not None:
            info.ttft = ttft


def _has_text(chunk: Chunk) -> bool:
    if not isinstance(chunk, dict):
        return False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            return True
    return False
