"""The small events a generation produces, and the answer-filter contract (services/output.py).

Front ends (chat completions, and the Responses and Realtime APIs) turn these into their own wire
format; nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from stackflow_openai.backends.conversations import ConversationTurn

from .limiter import FinishReason

__all__ = [
    "Answer",
    "AnswerFilter",
    "ChoiceEvent",
    "ChoiceFinishReason",
    "ChoiceFinished",
    "ChoiceReasoning",
    "ChoiceStarted",
    "ChoiceText",
    "ChoiceToolCall",
    "FilterFactory",
    "Job",
    "ToolCall",
]


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str  # the single user turn
    images: list[bytes]  # JPEG
    budget: int  # generated tokens allowed for this choice
    turn: ConversationTurn | None = None  # a ctx model's new turn (services/ctx.py); None: single-turn
    # tokens a single-turn device unit can generate after this prompt, to tell its silent cap from an
    # end of sequence (limiter.py); None: not known (a ctx turn reports its cap itself)
    room: int | None = None


@dataclass(frozen=True, slots=True)
class ChoiceStarted:
    index: int


@dataclass(frozen=True, slots=True)
class ChoiceText:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str  # "call_..."
    name: str
    arguments: str  # a JSON object, as text (what OpenAI sends)


@dataclass(frozen=True, slots=True)
class ChoiceReasoning:
    """Text of the model's <think> part (reasoning models), kept out of the visible answer."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ChoiceToolCall:
    """One complete, validated tool call of a choice (calls are held until whole: never partial)."""

    index: int
    call_index: int
    call: ToolCall


ChoiceFinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    index: int
    finish_reason: ChoiceFinishReason
    text: str  # the visible answer of this choice ('' when it is only tool calls)
    completion_tokens: int  # everything generated for it: reasoning, tool-call text and re-asks too
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # the <think> text, when the model's reasoning is split off


ChoiceEvent = ChoiceStarted | ChoiceText | ChoiceReasoning | ChoiceToolCall | ChoiceFinished


@dataclass(frozen=True, slots=True)
class Answer:
    """What an `AnswerFilter` made of a finished generation."""

    text: str
    finish_reason: ChoiceFinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    events: tuple[ChoiceEvent, ...] = ()  # still to stream before ChoiceFinished (calls, held JSON)


class AnswerFilter(Protocol):
    """Turns one choice's raw output into what the client sees (services/output.py): reasoning split
    off, tool calls parsed and validated, JSON checked. Sans-IO: it never touches the unit; a re-ask is
    a `Job` it returns, which the generation loop runs on the same leased unit."""

    def feed(self, text: str) -> list[ChoiceEvent]:
        """Events to stream for newly released raw text (text before a tool call, reasoning, ...)."""
        ...

    def finish(self, reason: FinishReason) -> Answer | Job:
        """The generation ended: the answer, or a re-ask to run (its output goes to `retried`)."""
        ...

    def retried(self, text: str, reason: FinishReason) -> Answer | Job:
        """A re-ask's whole output: the answer, another re-ask, or raises an APIError."""
        ...


FilterFactory = Callable[[int], AnswerFilter]  # choice index -> its filter
