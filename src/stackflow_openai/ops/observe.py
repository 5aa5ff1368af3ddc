"""Tokens and time to first token, observed around the chat and text-completion services.

Token counts come from the services' own `usage` (the same numbers clients see). A stream carries a
usage only when the client asks for it (`stream_options.include_usage`), so for device models the
wrapper always asks, and removes the usage again from what the client receives if it did not ask.
Proxied models are left untouched (the upstream decides). Time to first token is measured on streams,
from the start of the request to the first chunk with text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Protocol

from stackflow_openai.services import JsonResult, ModelRegistry, ServiceResult, StreamResult

from .context import current_request, note_model
from .metrics import Metrics

__all__ = ["ObservedService"]


class _Service(Protocol):
    async def create(self, body: Mapping[str, Any]) -> ServiceResult: ...


class ObservedService:
    def __init__(self, inner: _Service, registry: ModelRegistry, metrics: Metrics) -> None:
        self.inner = inner
        self.registry = registry
        self.metrics = metrics

    async def create(self, body: Mapping[str, Any]) -> ServiceResult:
        started = time.monotonic()
        requested = body.get("model")
        requested = requested if isinstance(requested, str) else ""
        note_model(requested)
        entry = self.registry.get(requested)
        # Labels use the served model's id (aliases resolved): a client's arbitrary model names must
        # not create new time series.
        model = entry.id if entry is not None else "unknown"
        body, forced = self._ask_for_usage(body, requested)
        result = await self.inner.create(body)
        if isinstance(result, JsonResult):
            self.metrics.usage(model, result.body.get("usage"))
        elif isinstance(result, StreamResult):
            result = StreamResult(self._watch(result.chunks, model, forced, started), result.headers)
        return result

    def _ask_for_usage(self, body: Mapping[str, Any], model: str) -> tuple[Mapping[str, Any], bool]:
        if body.get("stream") is not True:
            return body, False
        entry = self.registry.get(model)
        options = body.get("stream_options")
        if entry is None or entry.kind == "proxy" or not (options is None or isinstance(options, dict)):
            return body, False
        if options and options.get("include_usage") is True:
            return body, False
        return {**body, "stream_options": {**(options or {}), "include_usage": True}}, True

    async def _watch(
        self, chunks: AsyncGenerator[dict[str, Any], None], model: str, forced: bool, started: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        first_text = True
        async with aclosing(chunks):
            async for chunk in chunks:
                if first_text and _has_text(chunk):
                    first_text = False
                    ttft = time.monotonic() - started
                    self.metrics.ttft.labels(model).observe(ttft)
                    info = current_request.get()
                    if info is not None:
                        info.ttft = ttft
                usage = chunk.get("usage")
                if usage:
                    self.metrics.usage(model, usage)
                if forced:
                    if usage and not chunk.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                yield chunk


def _has_text(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            return True
    return False
