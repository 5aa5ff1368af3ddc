"""A reasoning model's <think> text, split from its answer as the output streams.

DeepSeek-R1 distills and Qwen3 write their chain of thought between `<think>` and `</think>` before the
answer; the device streams it all as one text. DeepSeek's own API and vLLM return that part as
`reasoning_content` and only the rest as `content`; so does the gateway, per model (config `reasoning`):

- "think": the output must start (after blanks) with `<think>`; otherwise it is all answer (Qwen3, whose
  template opens no think block, and which writes an empty one when thinking is off).
- "implicit": the thinking may begin without the tag, because the model's chat template already put
  `<think>\\n` after the assistant header (DeepSeek-R1 distill templates since early 2025); everything up
  to `</think>` is reasoning, and an output cut before `</think>` is all reasoning (as vLLM does).
- "off": no split.

The answer part alone goes on to tool-call parsing and JSON validation: the thinking never counts
against the client's answer format.
"""

from __future__ import annotations

from typing import Literal

from .limiter import partial_tail

__all__ = ["ReasoningMode", "ThinkSplitter", "default_reasoning"]

ReasoningMode = Literal["think", "implicit", "off"]
OPEN = "<think>"
CLOSE = "</think>"


def default_reasoning(model_id: str) -> ReasoningMode:
    """The split a model gets when its config says nothing (by its device name)."""
    name = model_id.lower()
    if name.startswith("deepseek-r1"):
        return "implicit"
    if name.startswith("qwen3"):
        return "think"
    return "off"


class ThinkSplitter:
    """Sans-IO: `feed` each released text, `finish` at the end; both give (reasoning, answer) pieces
    that are safe to release (a tag split across deltas is held until it is decided)."""

    def __init__(self, mode: ReasoningMode) -> None:
        self._state = "start" if mode != "off" else "answer"
        self._implicit = mode == "implicit"
        self._held = ""
        self._answer_started = mode == "off"  # leading blanks of the answer are dropped once
        self.reasoning = ""  # all the reasoning text so far

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        reasoning = answer = ""
        while True:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(OPEN):
                    self._enter_think(stripped[len(OPEN) :])
                elif OPEN.startswith(stripped):
                    return reasoning, answer  # blanks or a partial "<thi": undecided yet
                elif self._implicit:
                    self._enter_think(self._held)
                else:
                    self._state = "answer"
            elif self._state == "think":
                end = self._held.find(CLOSE)
                if end < 0:
                    keep = partial_tail(self._held, CLOSE)
                    cut = len(self._held) - keep
                    reasoning += self._take_reasoning(cut)
                    return reasoning, answer
                reasoning += self._take_reasoning(end)
                self._held = self._held[len(CLOSE) :]
                self._state = "answer"
            else:
                answer += self._take_answer()
                return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """The output ended: whatever was held back."""
        if self._state == "think":
            return self._take_reasoning(len(self._held)), ""
        if self._state == "start" and self._implicit and self._held.strip():
            self._enter_think(self._held.lstrip()[len(OPEN) :])  # only a partial "<think" came
            return self._take_reasoning(len(self._held)), ""
        self._state = "answer"
        return "", self._take_answer()

    def _enter_think(self, rest: str) -> None:
        self._state = "think"
        self._held = rest

    def _take_reasoning(self, end: int) -> str:
        piece = self._held[:end]
        if not self.reasoning:
            piece = piece.lstrip("\n")  # "<think>\n" is how both families open it
        self._held = self._held[end:]
        self.reasoning += piece
        return piece

    def _take_answer(self) -> str:
        piece, self._held = self._held, ""
        if not self._answer_started:
            piece = piece.lstrip()
            self._answer_started = bool(piece)
        return piece
