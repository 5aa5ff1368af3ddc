"""The answer filter every front end shares: a choice's raw device text → what the client sees.

Stages, per choice (an `AnswerFilter`, services/events.py): the reasoning split
(services/reasoning.py) first, so thinking never counts against the answer format; then the answer
mode: tool calls (services/tools.py), JSON (services/structured.py), or plain text. A mode that finds
the answer unusable returns a problem; the filter then asks the device again (a `Job` run on the same
unit, up to `retries` times, with the problem named) and finally refuses with `tool_call_invalid` or
`structured_output_failed` (HTTP 500: the request was fine, the model's answer was not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from stackflow_openai.errors import APIError

from .events import (
    Answer,
    ChoiceEvent,
    ChoiceFinishReason,
    ChoiceReasoning,
    ChoiceText,
    ChoiceToolCall,
    FilterFactory,
    Job,
)
from .limiter import FinishReason
from .prompt import Turn
from .reasoning import ReasoningMode, ThinkSplitter, default_reasoning
from .structured import JsonMode, JsonRequest, parse_response_format
from .toolformats import ToolFormat, format_for
from .tools import ModeOutcome, ToolRequest, ToolsMode, parse_tool_request

__all__ = ["ChoiceOutput", "FormattedPrompt", "ModelOutputError", "OutputSpec", "build_output_spec"]

RetryMaker = Callable[[str], Job | None]  # correction text -> a re-ask job, None when it cannot fit


class ModelOutputError(APIError):
    """The model's answer could not be made into what the request asked for, even after re-asking."""

    status_code = 500
    error_type = "server_error"


class AnswerMode(Protocol):
    def feed(self, text: str) -> str: ...

    def finish(self, answer: str | None = None) -> ModeOutcome | str: ...

    def correction(self, problem: str) -> str: ...


class _ToolsThenJson:
    """Tools and a response_format together (OpenAI allows both): a call, or else JSON."""

    def __init__(self, tools: ToolsMode, json_mode: JsonMode) -> None:
        self._tools, self._json = tools, json_mode

    def feed(self, text: str) -> str:
        self._tools.feed(text)
        return ""  # the content must be validated JSON: hold it all

    def finish(self, answer: str | None = None) -> ModeOutcome | str:
        outcome = self._tools.finish(answer)
        if isinstance(outcome, str) or outcome.calls:
            return outcome
        return self._json.finish(self._tools.answer if answer is None else answer)

    def correction(self, problem: str) -> str:
        return self._tools.correction(problem)


@dataclass(frozen=True, slots=True)
class FormattedPrompt:
    """The conversation with the request's tools and JSON instruction written in."""

    system: str
    turns: list[Turn]
    user_prefix: str  # tools of a user-turn format, before the rendered conversation


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What a request asked of the answer; `factory` gives each choice its filter."""

    reasoning: ReasoningMode
    tools: ToolRequest | None
    tool_format: ToolFormat
    json: JsonRequest | None
    retries: int

    @property
    def active(self) -> bool:
        return self.reasoning != "off" or self.tools is not None or self.json is not None

    def tools_prompt(self) -> str:
        """The tool definitions in the model family's format ('' when no tools are offered)."""
        if self.tools is None:
            return ""
        return self.tool_format.tools_prompt(self.tools.tools, self.tools.rule())

    def apply(self, system: str, turns: list[Turn], *, system_kept: bool = True) -> FormattedPrompt:
        """Tools into the system prompt (part of the unit's setup signature, as Qwen's template puts them;
        docs/tools.md says why) or before the user turn (Llama 3.2's format, or when the device would
        drop the system prompt: `system_kept` False); a JSON instruction at the end of the last turn, where
        a small model follows it best and where it does not split the unit pool."""
        if self.json is not None:
            last = turns[-1]
            turns = [*turns[:-1], replace(last, text=f"{last.text}\n\n{self.json.instruction()}")]
        tools = self.tools_prompt()
        if tools and system_kept and self.tool_format.placement == "system":
            return FormattedPrompt(f"{system}\n\n{tools}", turns, "")
        return FormattedPrompt(system, turns, tools)

    def mode(self) -> AnswerMode | None:
        tools = ToolsMode(self.tools, self.tool_format) if self.tools is not None else None
        json_mode = JsonMode(self.json) if self.json is not None else None
        if tools is not None and json_mode is not None:
            return _ToolsThenJson(tools, json_mode)
        if tools is not None:
            return tools
        return json_mode

    def factory(self, make_retry: RetryMaker) -> FilterFactory:
        return lambda index: ChoiceOutput(index, self, make_retry)


class ChoiceOutput:
    def __init__(self, index: int, spec: OutputSpec, make_retry: RetryMaker) -> None:
        self._index = index
        self._spec = spec
        self._splitter = ThinkSplitter(spec.reasoning) if spec.reasoning != "off" else None
        self._mode = spec.mode()
        self._retries_left = spec.retries
        self._make_retry = make_retry
        self._visible = ""  # content streamed so far

    def feed(self, text: str) -> list[ChoiceEvent]:
        if self._splitter is None:
            return self._answer_events(text)
        reasoning, answer = self._splitter.feed(text)
        events: list[ChoiceEvent] = [ChoiceReasoning(self._index, reasoning)] if reasoning else []
        return events + self._answer_events(answer)

    def _answer_events(self, answer: str) -> list[ChoiceEvent]:
        if not answer:
            return []
        visible = answer if self._mode is None else self._mode.feed(answer)
        if not visible:
            return []
        self._visible += visible
        return [ChoiceText(self._index, visible)]

    def finish(self, reason: FinishReason) -> Answer | Job:
        tail: list[ChoiceEvent] = []
        if self._splitter is not None:
            reasoning, answer = self._splitter.finish()
            tail = [ChoiceReasoning(self._index, reasoning)] if reasoning else []
            tail += self._answer_events(answer)
        if self._mode is None:
            return self._answer(ModeOutcome(""), reason, tail)
        return self._conclude(self._mode.finish(), reason, tail)

    def retried(self, text: str, reason: FinishReason) -> Answer | Job:
        assert self._mode is not None  # only a mode asks again
        answer = text
        if self._splitter is not None:  # a re-ask's own thinking is dropped (its tokens are counted)
            splitter = ThinkSplitter(self._spec.reasoning)
            answer = "".join(splitter.feed(text)[1] + splitter.finish()[1])
        return self._conclude(self._mode.finish(answer), reason, [])

    def _conclude(
        self, outcome: ModeOutcome | str, reason: FinishReason, tail: list[ChoiceEvent]
    ) -> Answer | Job:
        if isinstance(outcome, ModeOutcome):
            return self._answer(outcome, reason, tail)
        assert self._mode is not None
        if reason == "length":  # cut by max_tokens: a re-ask with the same budget would be cut again
            raise self._failure(f"{outcome} (the answer was cut at max_tokens)")
        if self._retries_left > 0:
            self._retries_left -= 1
            job = self._make_retry(self._mode.correction(outcome))
            if job is not None:
                return job
        raise self._failure(outcome)

    def _answer(self, outcome: ModeOutcome, reason: FinishReason, tail: list[ChoiceEvent]) -> Answer:
        events = list(tail)
        if outcome.late_text:
            events.append(ChoiceText(self._index, outcome.late_text))
        events += [ChoiceToolCall(self._index, i, call) for i, call in enumerate(outcome.calls)]
        finish: ChoiceFinishReason = "tool_calls" if outcome.calls else reason
        text = self._visible + outcome.late_text
        if outcome.calls:
            text = text.strip()
        # An empty think block (Qwen3 with thinking off: `/no_think` on AXCL) is no reasoning at all.
        splitter = self._splitter
        reasoning = splitter.reasoning if splitter and splitter.reasoning.strip() else None
        return Answer(text, finish, outcome.calls, reasoning, tuple(events))

    def _failure(self, problem: str) -> ModelOutputError:
        if self._spec.tools is not None and not isinstance(self._mode, JsonMode):
            return ModelOutputError(
                f"The model did not produce a valid tool call: {problem}.",
                param="tools",
                code="tool_call_invalid",
            )
        return ModelOutputError(
            f"The model did not produce valid JSON for response_format: {problem}.",
            param="response_format",
            code="structured_output_failed",
        )


def build_output_spec(body: Mapping[str, Any], model_name: str, options: Mapping[str, Any]) -> OutputSpec:
    """What the request asks of the answer, for the device model `model_name` with its config `options`
    (`reasoning`, `tool_format`, `output_retries`; see config.ModelSettings)."""
    configured = options.get("reasoning")
    reasoning: ReasoningMode = configured if configured else default_reasoning(model_name)
    return OutputSpec(
        reasoning=reasoning,
        tools=parse_tool_request(body),
        tool_format=format_for(model_name, options.get("tool_format")),
        json=parse_response_format(body.get("response_format")),
        retries=int(options.get("output_retries", 1)),
    )
