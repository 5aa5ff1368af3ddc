"""Run the choices of one request on one leased unit, as a stream of small events.

Shared by chat and text completions. Every choice runs after the previous one inside ONE lease (the
unit's setup is fixed, so n > 1 reuses the same unit). Stop sequences and the token budget are applied
by `OutputLimiter`; when it says done, the backend generator is closed, which pauses the device unit.

Cancellation (a client that disconnects) must not leave a unit half-stopped. The backend generator is
therefore read by a task of its own (`_ChoiceReader`; `Detached` for the audio services): a cancelled
request never cancels the backend from inside a cancelled scope. Clean-up then cancels that task once,
lets it close the generator and exits the lease, all in a shielded scope with a deadline, so the
backend's own clean-up (pause, release) can finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio

from stackflow_openai.backends.base import ChatBackend, ChatUnit, UnitSettings
from stackflow_openai.backends.conversations import ConversationTurn
from stackflow_openai.errors import APIError
from stackflow_openai.tokens import TokenCounter

from .events import (
    Answer,
    AnswerFilter,
    ChoiceEvent,
    ChoiceFinished,
    ChoiceStarted,
    ChoiceText,
    FilterFactory,
    Job,
)
from .limiter import FinishReason, OutputLimiter

__all__ = ["CLEANUP_TIMEOUT", "Detached", "generate_choices"]

log = logging.getLogger(__name__)
T = TypeVar("T")
CLEANUP_TIMEOUT = 30.0  # seconds allowed for pausing a unit and releasing the lease after a request ends


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


class _ChoiceReader:
    """One choice's deltas, read through the limiter by a task of its own.

    The task is what `Detached` gives the other services: the consumer's cancellation never lands inside
    the backend. It also batches: the task reads each delta as soon as it is there and keeps the released
    text until the consumer takes it, so deltas that arrive while the consumer is still busy with the
    previous text (a slow client, or a gateway behind on CPU) go out joined, as one chunk. At device speed
    (a delta every ~100 ms) every delta is its own chunk; under load the per-chunk costs (chunk, SSE
    framing, HTTP write, event-loop wake-ups) are paid once per batch.

    It never reads past the limiter: after the delta that reaches the token budget or completes a stop
    sequence, the source is closed (the unit paused) without another read. `close()` cancels a read in
    progress once, never the source's own clean-up.
    """

    def __init__(self, source: AsyncIterator[str], limiter: OutputLimiter) -> None:
        self.limiter = limiter
        self._source = source
        self._text: list[str] = []  # released, not yet taken
        self._delta_seen = False
        self._ended = False  # the source is closed: nothing more will come
        self._error: BaseException | None = None
        self._closing = False  # the task is in the source's clean-up: never cancel it there
        self._waiter: asyncio.Future[None] | None = None
        self._want_text = False  # the waiting consumer wants text (not only the start or the end)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        source, limiter, pending = self._source, self.limiter, self._text
        try:
            async for delta in source:
                if not self._delta_seen:
                    self._delta_seen = True
                    self._wake()
                step = limiter.feed(delta)
                if step.text:
                    pending.append(step.text)
                    if self._want_text:
                        self._wake()
                if step.done:
                    break
            else:
                tail = limiter.finish()
                if tail:
                    pending.append(tail)
        except Exception as exc:  # delivered to the consumer after the text released before it
            self._error = exc
        except BaseException as exc:  # cancelled (by close(), or from outside): never taken for an end
            self._error = exc
            raise
        finally:
            self._closing = True
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()  # pauses the unit when the limiter stopped early
                except Exception:
                    log.warning("closing a backend stream failed", exc_info=True)
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, *, want_text: bool) -> None:
        self._want_text = want_text
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def started(self) -> None:
        """Until the first delta came; raises the source's error if it failed before any."""
        while not self._delta_seen and not self._ended:
            await self._sleep(want_text=False)
        if not self._delta_seen and self._error is not None:
            raise self._error

    async def next_text(self) -> str | None:
        """All text released since the last call, or None once the source has ended (or its error)."""
        pending = self._text
        while not pending and not self._ended:
            await self._sleep(want_text=True)
        if pending:
            text = pending[0] if len(pending) == 1 else "".join(pending)
            pending.clear()
            return text
        if self._error is not None:
            raise self._error
        return None

    async def ended(self) -> None:
        """Until the source has ended; raises its error if it failed."""
        while not self._ended:
            await self._sleep(want_text=False)
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Stop reading and wait for the source's clean-up: shielded, with a deadline."""
        task = self._task
        if not task.done():  # (the usual case, a source read to its end, needs no scope)
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                if not self._closing:
                    task.cancel()  # one plain cancellation; the backend's clean-up then runs undisturbed
                await asyncio.wait({task})
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("reading a backend stream failed", exc_info=task.exception())


def _lease(
    backend: ChatBackend, settings: UnitSettings, turn: ConversationTurn | None
) -> AbstractAsyncContextManager[ChatUnit]:
    if turn is None:
        return backend.lease(settings)
    # A ctx model's backend prefers the unit whose cache holds this conversation (conversations.py).
    lease: Any = backend.lease
    result: AbstractAsyncContextManager[ChatUnit] = lease(settings, conversation=turn.history_key)
    return result


async def generate_choices(
    backend: ChatBackend,
    settings: UnitSettings,
    jobs: Sequence[Job],
    *,
    counter: TokenCounter,
    stops: Sequence[str],
    stream: bool = True,
    filters: FilterFactory | None = None,
) -> AsyncGenerator[ChoiceEvent, None]:
    """Events of every job in order: Started, Text..., Finished per choice index.

    A ChoiceText carries all the text released since the previous one (see `_ChoiceReader`). With
    `stream=False` only the ChoiceFinished events come (the consumer is woken once per choice).
    With `filters`, each choice's raw text goes through its `AnswerFilter` (reasoning, tool calls, JSON),
    and re-asks run on the same unit. A filter's final refusal (an APIError) is raised only after the
    lease has ended normally: the unit is healthy and goes back to the pool warm."""
    if all(job.budget == 0 for job in jobs):
        # max_tokens=0 (a completions client scoring its prompt with echo): no unit, nothing generated.
        for index in range(len(jobs)):
            if stream:
                yield ChoiceStarted(index)
            yield ChoiceFinished(index, "length", "", 0)
        return
    refusal: APIError | None = None
    async with _leased(_lease(backend, settings, jobs[0].turn)) as unit:
        for index, job in enumerate(jobs):
            answer_filter = filters(index) if filters is not None else None
            limiter = OutputLimiter(counter, stops=stops, budget=job.budget, room=job.room)
            deltas = unit.generate(job.prompt, images=job.images, turn=job.turn)
            reader = _ChoiceReader(deltas, limiter)
            try:
                async with aclosing(_read_choice(reader, index, answer_filter, stream=stream)) as events:
                    async for event in events:
                        yield event
            finally:
                await reader.close()
            text = limiter.text
            reason = limiter.finish_reason
            if reason == "stop" and unit.stopped_at_capacity:
                reason = "length"  # a ctx unit's decode mask ended it (backends/stackflow_chat.py)
            if answer_filter is None:
                yield ChoiceFinished(index, reason, text, counter.count(text))
                continue
            try:
                answer, more_tokens = await _settle(unit, answer_filter, reason, counter, stops)
            except APIError as exc:
                refusal = exc
                break
            if stream:
                for event in answer.events:
                    yield event
            yield ChoiceFinished(
                index,
                answer.finish_reason,
                answer.text,
                counter.count(text) + more_tokens,
                answer.tool_calls,
                answer.reasoning,
            )
    if refusal is not None:
        raise refusal


async def _read_choice(
    reader: _ChoiceReader, index: int, answer_filter: AnswerFilter | None, *, stream: bool
) -> AsyncGenerator[ChoiceEvent, None]:
    """One choice's events while it generates (only when streaming; otherwise it is read to the end)."""
    if not stream:
        await reader.ended()
        if answer_filter is not None:
            answer_filter.feed(reader.limiter.text)
        return
    # The first delta is awaited before ChoiceStarted: a stream's first chunk (and so its HTTP status)
    # then comes after the device accepted the input, not before.
    await reader.started()
    yield ChoiceStarted(index)
    while (text := await reader.next_text()) is not None:
        if answer_filter is None:
            yield ChoiceText(index, text)
        else:
            for event in answer_filter.feed(text):
                yield event


async def _settle(
    unit: ChatUnit,
    answer_filter: AnswerFilter,
    reason: FinishReason,
    counter: TokenCounter,
    stops: Sequence[str],
) -> tuple[Answer, int]:
    """The filter's answer, running the re-asks it asks for (never streamed); and their token count."""
    result = answer_filter.finish(reason)
    generated = 0
    while isinstance(result, Job):
        limiter = OutputLimiter(counter, stops=stops, budget=result.budget, room=result.room)
        reader = _ChoiceReader(unit.generate(result.prompt, images=result.images), limiter)
        try:
            await reader.ended()
        finally:
            await reader.close()
        generated += counter.count(limiter.text)
        result = answer_filter.retried(limiter.text, reason)
    return result, generated
