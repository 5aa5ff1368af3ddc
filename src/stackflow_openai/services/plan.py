"""A conversation → a GenerationPlan: the one plan builder of every chat-like front end.

Chat completions and the Responses API (and the Realtime API) each translate their own wire format into
a `PlanRequest` (a parsed conversation, the generation parameters and what the answer must be: tools,
JSON, reasoning, as an `OutputSpec`); everything after that is common: the image check, the system prompt
default, the tool definitions and JSON instruction (services/output.py), prompt fitting into the prefill
window, image loading, the token budget, the unit settings and the answer filters with their re-asks
(design.md "Growing it").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

from stackflow_openai.backends.base import ChatBackend, ChatModelInfo, ModelEntry, UnitSettings
from stackflow_openai.errors import ContextLengthExceeded, InvalidRequestError
from stackflow_openai.tokens import PREFILL_MARGIN, Tokenizers

from .common import GenerationPlan, new_id, require_text, run_counting, token_budget
from .ctx import conversation_turn
from .events import Job
from .images import ImageLoader
from .output import FormattedPrompt, OutputSpec
from .params import DROPPED_HEADER
from .prompt import (
    DEFAULT_SYSTEM_PROMPT,
    Conversation,
    FittedPrompt,
    check_image_count,
    fit_prompt,
    images_to_send,
)

__all__ = ["IMAGES_DROPPED_HEADER", "PlanBuilder", "PlanRequest", "Planned"]

IMAGES_DROPPED_HEADER = "X-Images-Dropped"  # images of earlier turns not sent to a one-image model

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What a front end asks for, in the core's terms."""

    conversation: Conversation
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stops: list[str] = field(default_factory=list)
    include_usage: bool = False
    output: OutputSpec | None = None  # tools, JSON, reasoning split (services/output.py); None: raw text
    param: str = "messages"  # the request field named by context-length errors
    text_param: str = "messages"  # the field holding the last message (named when it is empty)
    truncate: bool = True  # drop the oldest turns to fit; False: 400 when any would have to go


@dataclass(frozen=True, slots=True)
class Planned:
    plan: GenerationPlan
    fitted: FittedPrompt  # which turns were kept (fitted.dropped: how many were left out)
    images_dropped: int  # older images not sent to a one-image VLM (the front end says so)

    def headers(self) -> dict[str, str]:
        """What the front end tells the client about the fitting (HTTP headers): otherwise it cannot tell
        that turns or images were left out."""
        headers = {DROPPED_HEADER: str(self.fitted.dropped)} if self.fitted.dropped else {}
        if self.images_dropped:
            headers[IMAGES_DROPPED_HEADER] = str(self.images_dropped)
        return headers


class PlanBuilder:
    def __init__(self, tokenizers: Tokenizers, images: ImageLoader) -> None:
        self._tokenizers = tokenizers
        self._images = images

    async def build(self, entry: ModelEntry, backend: ChatBackend, request: PlanRequest) -> Planned:
        info = backend.info
        conversation = request.conversation
        refs = [ref for turn in conversation.turns for ref in turn.images]
        if refs and not info.vision:
            raise InvalidRequestError(
                f"The model '{entry.id}' does not accept images.",
                param=refs[0].param,
                code="images_not_supported",
            )
        require_text(conversation.turns[-1].text, param=request.text_param)
        check_image_count(conversation.turns[-1].images, info.max_images, entry.id)
        prompt = _prompt(entry, info, request, has_images=bool(refs))
        fitted = await self._fit(entry, info, prompt, request)
        refs, images_dropped = images_to_send(fitted.turns, info.max_images)
        images = [await self._images.load(ref) for ref in refs]
        budget = token_budget(info, fitted.prompt_tokens, request.max_tokens, param=request.param)
        settings = UnitSettings(
            system_prompt=prompt.system,
            max_token_len=info.max_token_len,  # one setup signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        spec = request.output
        filters = None
        if spec is not None and spec.active:
            image_cost = len(images) * _image_tokens(entry, info)
            retry = partial(
                self._retry_job, info, fitted.system_prompt, fitted.user_text, images, image_cost, request
            )
            filters = spec.factory(retry)
        # ctx models only: the turn their unit continues from (tools in its system prompt, JSON instruction)
        formatted = Conversation(conversation.system_prompt, prompt.turns)
        turn = conversation_turn(self._tokenizers, info, prompt.system, formatted, fitted, budget)
        room = info.max_token_len - fitted.prompt_tokens if turn is None else None  # the device's cap
        plan = GenerationPlan(
            id=new_id("chatcmpl"),  # what chat answers with; other front ends name their own object
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            jobs=[Job(fitted.user_text, images, budget, turn=turn, room=room)] * request.n,
            stops=request.stops,
            counter=self._tokenizers.for_model(info),
            prompt_tokens=fitted.prompt_tokens,
            include_usage=request.include_usage,
            filters=filters,
        )
        return Planned(plan, fitted, images_dropped)

    async def _fit(
        self, entry: ModelEntry, info: ChatModelInfo, prompt: FormattedPrompt, request: PlanRequest
    ) -> FittedPrompt:
        conversation = request.conversation
        await self._tokenizers.load_for(info)  # first use: loads in a worker thread, not on the loop
        fit = partial(
            fit_prompt,
            self._tokenizers,
            info,
            prompt.system,
            prompt.turns,
            image_tokens=_image_tokens(entry, info),
            instructions=conversation.system_prompt or entry.extra.get("system_prompt"),
            param=request.param,
            user_prefix=prompt.user_prefix,
        )
        chars = len(prompt.system) + len(prompt.user_prefix) + sum(len(turn.text) for turn in prompt.turns)
        try:
            fitted = await run_counting(fit, chars=chars)
        except ContextLengthExceeded as exc:
            if request.output is None or request.output.tools is None:
                raise
            raise self._tools_too_long(exc, info, request.output) from exc
        if fitted.dropped and not request.truncate:
            raise ContextLengthExceeded(
                f"The conversation needs more than this model's prefill window of {info.prefill_len} tokens "
                f"(the oldest {fitted.dropped} of its {len(prompt.turns)} turns would have to go). "
                "Shorten it, or set truncation to 'auto' to drop the oldest items.",
                param=request.param,
            )
        if fitted.dropped:
            log.info("%s: dropped the %d oldest turns to fit the prefill window", entry.id, fitted.dropped)
        return fitted

    def _tools_too_long(
        self, exc: ContextLengthExceeded, info: ChatModelInfo, spec: OutputSpec | None
    ) -> ContextLengthExceeded:
        assert spec is not None
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
        request: PlanRequest,
        correction: str,
    ) -> Job | None:
        """The re-ask after an unusable answer: the same turn plus the correction, if it still fits."""
        prompt = f"{user_text}\n\n{correction}"
        tokens = self._tokenizers.prompt_tokens(info, system, prompt) + image_cost
        if tokens > info.prefill_len - PREFILL_MARGIN or tokens >= info.max_token_len:
            log.info("a re-ask would not fit the prefill window (%d tokens): not asked", tokens)
            return None
        room = None if info.context_len else info.max_token_len - tokens  # the unit's silent cap (limiter.py)
        return Job(
            prompt, images, token_budget(info, tokens, request.max_tokens, param=request.param), room=room
        )


def _image_tokens(entry: ModelEntry, info: ChatModelInfo) -> int:
    return int(entry.extra.get("image_tokens", info.image_tokens))


def _prompt(
    entry: ModelEntry, info: ChatModelInfo, request: PlanRequest, *, has_images: bool
) -> FormattedPrompt:
    """The system prompt and turns, with what the output spec writes into them (tools, JSON instruction)."""
    conversation = request.conversation
    system = conversation.system_prompt or entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
    if request.output is None:
        return FormattedPrompt(system, conversation.turns, "")
    # A model whose device script swaps in its own system prompt (Llama 3.2; InternVL2/2.5 and SmolVLM
    # with an image) would drop tools written there: they go in the user turn then.
    fixed = info.image_system_prompt if has_images else info.text_system_prompt
    return request.output.apply(system, conversation.turns, system_kept=fixed is None)
