"""A conversation → a GenerationPlan: the one plan builder of every chat-like front end.

Chat completions and the Responses API (and the Realtime API) each translate their own wire format into
a `PlanRequest` (a parsed conversation and the generation parameters); everything after that is common:
the image check, the system prompt default, prompt fitting into the prefill window, image loading, the
token budget and the unit settings (design.md "Growing it").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

from stackflow_openai.backends.base import ChatBackend, ModelEntry, UnitSettings
from stackflow_openai.errors import ContextLengthExceeded, InvalidRequestError
from stackflow_openai.tokens import Tokenizers

from .common import GenerationPlan, new_id, require_text, run_counting, token_budget
from .generation import Job
from .images import ImageLoader
from .prompt import DEFAULT_SYSTEM_PROMPT, Conversation, FittedPrompt, fit_prompt

__all__ = ["PlanBuilder", "PlanRequest"]

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
    param: str = "messages"  # the request field named by context-length errors
    text_param: str = "messages"  # the field holding the last message (named when it is empty)
    truncate: bool = True  # drop the oldest turns to fit; False: 400 when any would have to go
    id_prefix: str = "chatcmpl"


class PlanBuilder:
    def __init__(self, tokenizers: Tokenizers, images: ImageLoader) -> None:
        self._tokenizers = tokenizers
        self._images = images

    async def build(
        self, entry: ModelEntry, backend: ChatBackend, request: PlanRequest
    ) -> tuple[GenerationPlan, FittedPrompt]:
        """The plan, and the fitted prompt it runs (which turns were kept)."""
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
        fitted = await self._fit(entry, backend, request)
        images = [await self._images.load(ref) for turn in fitted.turns for ref in turn.images]
        budget = token_budget(info, fitted.prompt_tokens, request.max_tokens, param=request.param)
        settings = UnitSettings(
            system_prompt=_system(entry, request),
            max_token_len=info.max_token_len,  # one setup signature per model (docs/decisions.md)
            temperature=request.temperature,
            top_p=request.top_p,
        )
        plan = GenerationPlan(
            id=new_id(request.id_prefix),
            created=int(time.time()),
            model=entry.id,
            backend=backend,
            settings=settings,
            jobs=[Job(fitted.user_text, images, budget)] * request.n,
            stops=request.stops,
            counter=self._tokenizers.for_model(info),
            prompt_tokens=fitted.prompt_tokens,
            include_usage=request.include_usage,
        )
        return plan, fitted

    async def _fit(self, entry: ModelEntry, backend: ChatBackend, request: PlanRequest) -> FittedPrompt:
        info = backend.info
        conversation = request.conversation
        system = _system(entry, request)
        await self._tokenizers.load_for(info)  # first use: loads in a worker thread, not on the loop
        fit = partial(
            fit_prompt,
            self._tokenizers,
            info,
            system,
            conversation.turns,
            image_tokens=int(entry.extra.get("image_tokens", info.image_tokens)),
            instructions=conversation.system_prompt or entry.extra.get("system_prompt"),
            param=request.param,
        )
        chars = len(system) + sum(len(turn.text) for turn in conversation.turns)
        fitted = await run_counting(fit, chars=chars)
        if fitted.dropped and not request.truncate:
            raise ContextLengthExceeded(
                f"The conversation needs more than this model's prefill window of {info.prefill_len} tokens "
                f"(the oldest {fitted.dropped} of its {len(conversation.turns)} turns would have to go). "
                "Shorten it, or set truncation to 'auto' to drop the oldest items.",
                param=request.param,
            )
        if fitted.dropped:
            log.info("%s: dropped the %d oldest turns to fit the prefill window", entry.id, fitted.dropped)
        return fitted


def _system(entry: ModelEntry, request: PlanRequest) -> str:
    return request.conversation.system_prompt or entry.extra.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
