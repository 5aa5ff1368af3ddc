"""Run the choices of one request on one leased unit, as a stream of small events.

Shared by chat and text completions. Every choice runs after the previous one inside ONE lease (the
unit's setup is fixed, so n > 1 reuses the same unit). Stop sequences and the token budget are applied
by `OutputLimiter`; when it says done, the backend generator is closed, which pauses the device unit.

Cancellation (a client that disconnects) must not leave a unit half-stopped. Each `__anext__` of the
backend generator therefore runs in its own task, awaited through `asyncio.shield`: a cancelled request
never cancels the backend from inside a cancelled scope. Clean-up then cancels that task once, closes
the generator and exits the lease, all in a shielded scope with a deadline, so the backend's own clean-up
(pause, release) can finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from stackflow_openai.backends.base import ChatBackend, ChatUnit, UnitSettings
from stackflow_openai.tokens import TokenCounter

from .limiter import FinishReason, OutputLimiter

__all__ = [
    "CLEANUP_TIMEOUT",
    "ChoiceEvent",
    "ChoiceFinished",
    "ChoiceStarted",
    "ChoiceText",
    "Detached",
    "Job",
    "generate_choices",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
CLEANUP_TIMEOUT = 30.0  # seconds allowed for pausing a unit and releasing the lease after a request ends


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str  # the single user turn
    images: list[bytes]  # JPEG
    budget: int  # generated tokens allowed for this choice


@dataclass(frozen=True, slots=True)
class ChoiceStarted:
    index: int


@dataclass(frozen=True, slots=True)
class ChoiceText:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    index: int
    finish_reason: FinishReason
    text: str  # the whole output of this choice
    completion_tokens: int


ChoiceEvent = ChoiceStarted | ChoiceText | ChoiceFinished


async def _next_or_none(source: AsyncIterator[T]) -> T | None:
    try:
        return await source.__anext__()
    except StopAsyncIteration:
        return None


class Detached(Generic[T]):
    """An async iterator read in helper tasks, so that cancelling its consumer never cancels it mid-step.

    Under uvicorn a client that disconnects cancels the response task through an anyio cancel scope,
    and such a scope cancels every later await of that task too. A backend generator cancelled and
    closed in there cannot pause its unit nor release its pool lease (the speech unit's lease stayed
    busy for good: found by scripts/soak.py). Each item is therefore fetched by a helper task awaited
    through `asyncio.shield`; `aclose` cancels a pending fetch once, then closes the source, shielded
    and with a deadline. Items must not be None (None means "no more").
    """

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._pending: asyncio.Task[T | None] | None = None

    def __aiter__(self) -> Detached[T]:
        return self

    async def __anext__(self) -> T:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next(self) -> T | None:
        task = self._pending = asyncio.create_task(_next_or_none(self._source))
        result = await asyncio.shield(task)
        self._pending = None
        return result

    async def aclose(self) -> None:
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            task, self._pending = self._pending, None
            if task is not None and not task.done():
                task.cancel()  # one plain cancellation; the backend's clean-up then runs undisturbed
                await asyncio.wait({task})
            if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("source failed while closing: %r", task.exception())
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.warning("closing a backend stream failed", exc_info=True)

    close = aclose


@asynccontextmanager
async def _leased(lease: AbstractAsyncContextManager[ChatUnit]) -> AsyncIterator[ChatUnit]:
    """`async with lease` whose exit cannot be cut short by the cancellation of a gone client."""
    unit = await lease.__aenter__()
    try:
        yield unit
    except BaseException as exc:
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            await lease.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
        await lease.__aexit__(None, None, None)


async def _run_choice(
    unit: ChatUnit, index: int, job: Job, counter: TokenCounter, stops: Sequence[str]
) -> AsyncGenerator[ChoiceEvent, None]:
    limiter = OutputLimiter(counter, stops=stops, budget=job.budget)
    source = Detached(unit.generate(job.prompt, images=job.images))
    try:
        # The first delta is awaited before ChoiceStarted: a stream's first chunk (and so its HTTP
        # status) then comes after the device accepted the input, not before.
        delta = await source.next()
        yield ChoiceStarted(index)
        while delta is not None:
            step = limiter.feed(delta)
            if step.text:
                yield ChoiceText(index, step.text)
            if step.done:
                break
            delta = await source.next()
        else:
            tail = limiter.finish()
            if tail:
                yield ChoiceText(index, tail)
    finally:
        await source.close()
    text = limiter.text
    yield ChoiceFinished(index, limiter.finish_reason, text, counter.count(text))


async def generate_choices(
    backend: ChatBackend,
    settings: UnitSettings,
    jobs: Sequence[Job],
    *,
    counter: TokenCounter,
    stops: Sequence[str],
) -> AsyncGenerator[ChoiceEvent, None]:
    """Events of every job in order: Started, Text..., Finished per choice index."""
    async with _leased(backend.lease(settings)) as unit:
        for index, job in enumerate(jobs):
            choice = _run_choice(unit, index, job, counter, stops)
            try:
                async for event in choice:
                    yield event
            finally:
                await choice.aclose()
