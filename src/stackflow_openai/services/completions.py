"""`/v1/completions` (legacy text completions) on the same machinery as chat.

A StackFlow LLM unit always wraps its input in the chat template, so a text completion cannot be a raw
continuation: each prompt becomes the single user turn. The system prompt is the model's configured one
(ModelEntry.extra["system_prompt"]) or "You are a helpful assistant.", the same default as chat. That keeps
Qwen models in the setting they were tuned for (an empty system block is not), and lets chat and
completion requests share pooled units, which are keyed by their setup.

Parameters: `prompt` is a string or a list of strings (one choice per prompt × n, indexes in that order);
`echo` is honoured (the prompt is prepended to the text); `max_tokens` defaults to 16 as at OpenAI,
and 0 answers without using the device (with `echo`: the prompt alone); `suffix`, `logprobs` and
`best_of` > n cannot be honoured and are reported as ignored (400 in strict mode); token-id prompts
are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from stackflow_openai.backends.base import ChatBackend, ModelEntry, UnitSettings
from stackflow_openai.protocol import Completion, CompletionChoice, CompletionRequest, Usage
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
from .events import ChoiceFinishReason, Job
from .prompt import DEFAULT_SYSTEM_PROMPT, Turn, fit_prompt
from .registry import ModelRegistry, resolve_model

__all__ = ["CompletionService"]

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint (CreateCompletionRequest.max_tokens)
_PLACEHOLDER = "\x00text\x00"  # marks where the text goes while a template is built (any string would do)


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
        echo = bool(request.echo)
        if request.stream:
            usage: dict[str, int] = {}
            return StreamResult(stream_choices(plan, _CompletionChunks(plan, echo), usage), headers, usage)
        return JsonResult(await _collect(plan, echo), headers)

    async def _plan(
        self, request: CompletionRequest, entry: ModelEntry, backend: ChatBackend
    ) -> GenerationPlan:
        n = check_n(request.n, entry)
        info = backend.info
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        system = entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        await self._tokenizers.load_for(info)  # first use: loads in a worker thread, not on the loop
        max_tokens = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
        jobs: list[Job] = []
        prompt_tokens = 0
        for i, prompt in enumerate(prompts):
            param = "prompt" if isinstance(request.prompt, str) else f"prompt[{i}]"
            require_text(prompt, param=param)
            fit = partial(fit_prompt, self._tokenizers, info, system, [Turn("user", prompt)], param=param)
            fitted = await run_counting(fit, chars=len(system) + len(prompt))
            budget = token_budget(info, fitted.prompt_tokens, max_tokens, param=param)
            prompt_tokens += fitted.prompt_tokens
            room = info.max_token_len - fitted.prompt_tokens  # the device's own cap (limiter.py)
            jobs.extend(Job(prompt, [], budget, room=room) for _ in range(n))
        settings = UnitSettings(
            system_prompt=system,
            max_token_len=info.max_token_len,  # one signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        include_usage = bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        return GenerationPlan(
            id=new_id("cmpl"),
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            jobs=jobs,
            stops=stop_list(request.stop),
            counter=self._tokenizers.for_model(info),
            prompt_tokens=prompt_tokens,
            include_usage=include_usage,
        )


async def _collect(plan: GenerationPlan, echo: bool) -> dict[str, Any]:
    finished, usage = await collect_choices(plan)
    choices = [
        CompletionChoice(
            text=(plan.jobs[choice.index].prompt if echo else "") + choice.text,
            index=choice.index,
            finish_reason=choice.finish_reason,
        )
        for choice in finished
    ]
    response = Completion(id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage)
    return response.model_dump(mode="json")


class _CompletionChunks:
    """text_completion chunks (OpenAI uses the response's shape for them, without usage)."""

    def __init__(self, plan: GenerationPlan, echo: bool) -> None:
        self._plan = plan
        self._echo = echo
        self._text_events: dict[int, Callable[[str], bytes]] = {}  # choice index -> its text event encoder

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, Any]:
        plan = self._plan
        chunk = Completion(
            id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage
        ).model_dump(mode="json")
        if usage is None:
            # Unlike chat chunks, OpenAI's completion schema has no null usage: leave the key out.
            del chunk["usage"]
        return chunk

    def started(self, index: int) -> Chunk | None:
        if not self._echo:
            return None
        prompt = self._plan.jobs[index].prompt
        return self._chunk([CompletionChoice(text=prompt, index=index, finish_reason=None)])

    def text(self, index: int, text: str) -> Chunk:
        encode = self._text_events.get(index)
        if encode is None:
            template = self._chunk([CompletionChoice(text=_PLACEHOLDER, index=index, finish_reason=None)])
            encode = self._text_events[index] = text_event_encoder(template, _PLACEHOLDER)
        return encode(text)

    def finished(self, index: int, reason: ChoiceFinishReason) -> Chunk:
        return self._chunk([CompletionChoice(text="", index=index, finish_reason=reason)])

    def usage(self, usage: Usage) -> Chunk:
        return self._chunk([], usage)
