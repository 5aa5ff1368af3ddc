"""`/v1/completions` (legacy text completions) on the same machinery as chat.

A StackFlow LLM unit always wraps its input in the chat template, so a text completion cannot be a raw
continuation: each prompt becomes the single user turn. The system prompt is the model's configured one
(ModelEntry.extra["system_prompt"]) or "You are a helpful assistant.", the same default as chat. That keeps
Qwen models in the setting they were tuned for (an empty system block is not), and lets chat and
completion requests share pooled units, which are keyed by their setup.

Parameters: `prompt` is a string or a list of strings (one choice per prompt × n, indexes in that order);
`echo` is honoured (the prompt is prepended to the text); `suffix`, `logprobs` and `best_of` > n cannot
be honoured and are reported as ignored (400 in strict mode); token-id prompts are refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any

from stackflow_openai.backends.base import ChatBackend, ModelEntry, UnitSettings
from stackflow_openai.protocol import Completion, CompletionChoice, CompletionRequest, Usage
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
from .prompt import DEFAULT_SYSTEM_PROMPT, Turn, fit_prompt
from .registry import ModelRegistry, resolve_model

__all__ = ["CompletionService"]


@dataclass(frozen=True, slots=True)
class _Plan:
    id: str
    created: int
    model: str
    backend: ChatBackend
    settings: UnitSettings
    jobs: list[Job]
    echo: bool
    stops: list[str]
    counter: TokenCounter
    prompt_tokens: int
    include_usage: bool


class CompletionService:
    def __init__(self, registry: ModelRegistry, tokenizers: Tokenizers) -> None:
        self._registry = registry
        self._tokenizers = tokenizers

    async def create(self, body: Mapping[str, Any]) -> ServiceResult:
        request = parse_body(CompletionRequest, body)
        entry = resolve_model(
            self._registry, request.model, kinds=("chat", "proxy"), endpoint="/v1/completions"
        )
        backend = await forward_or_backend(entry, "/completions", body)
        if isinstance(backend, ProxyResult):
            return backend
        headers = report_ignored(request, body, entry)
        plan = await self._plan(request, entry, backend)
        if request.stream:
            return StreamResult(self._stream(plan), headers)
        return JsonResult(await self._collect(plan), headers)

    async def _plan(self, request: CompletionRequest, entry: ModelEntry, backend: ChatBackend) -> _Plan:
        n = check_n(request.n, entry)
        info = backend.info
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        system = entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        jobs: list[Job] = []
        prompt_tokens = 0
        for i, prompt in enumerate(prompts):
            param = "prompt" if isinstance(request.prompt, str) else f"prompt[{i}]"
            require_text(prompt, param=param)
            fit = partial(fit_prompt, self._tokenizers, info, system, [Turn("user", prompt)], param=param)
            fitted = await run_counting(fit, chars=len(system) + len(prompt))
            budget = token_budget(info, fitted.prompt_tokens, request.max_tokens, param=param)
            prompt_tokens += fitted.prompt_tokens
            jobs.extend(Job(prompt, [], budget) for _ in range(n))
        settings = UnitSettings(
            system_prompt=system,
            max_token_len=info.max_token_len,  # one signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        include_usage = bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        return _Plan(
            id=new_id("cmpl"),
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            jobs=jobs,
            echo=bool(request.echo),
            stops=stop_list(request.stop),
            counter=self._tokenizers.for_model(info),
            prompt_tokens=prompt_tokens,
            include_usage=include_usage,
        )

    def _events(self, plan: _Plan) -> AsyncGenerator[ChoiceEvent, None]:
        return generate_choices(
            plan.backend, plan.settings, plan.jobs, counter=plan.counter, stops=plan.stops
        )

    def _usage(self, plan: _Plan, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=plan.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=plan.prompt_tokens + completion_tokens,
        )

    async def _collect(self, plan: _Plan) -> dict[str, Any]:
        choices: list[CompletionChoice] = []
        completion_tokens = 0
        async with aclosing(self._events(plan)) as events:
            async for event in events:
                if isinstance(event, ChoiceFinished):
                    completion_tokens += event.completion_tokens
                    prefix = plan.jobs[event.index].prompt if plan.echo else ""
                    choices.append(
                        CompletionChoice(
                            text=prefix + event.text, index=event.index, finish_reason=event.finish_reason
                        )
                    )
        response = Completion(
            id=plan.id,
            created=plan.created,
            model=plan.model,
            choices=choices,
            usage=self._usage(plan, completion_tokens),
        )
        return response.model_dump(mode="json")

    async def _stream(self, plan: _Plan) -> AsyncGenerator[dict[str, Any], None]:
        completion_tokens = 0
        async with aclosing(self._events(plan)) as events:
            async for event in events:
                if isinstance(event, ChoiceStarted):
                    if not plan.echo:
                        continue
                    choice = CompletionChoice(
                        text=plan.jobs[event.index].prompt, index=event.index, finish_reason=None
                    )
                elif isinstance(event, ChoiceText):
                    choice = CompletionChoice(text=event.text, index=event.index, finish_reason=None)
                else:
                    completion_tokens += event.completion_tokens
                    choice = CompletionChoice(text="", index=event.index, finish_reason=event.finish_reason)
                yield self._chunk(plan, [choice])
        if plan.include_usage:
            yield self._chunk(plan, [], self._usage(plan, completion_tokens))

    @staticmethod
    def _chunk(plan: _Plan, choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, Any]:
        chunk = Completion(
            id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage
        ).model_dump(mode="json")
        if usage is None:
            # Unlike chat chunks, OpenAI's completion schema has no null usage: leave the key out.
            del chunk["usage"]
        return chunk
