"""Stop sequences and the max_tokens cap, applied by the gateway to a stream of text deltas.

The device knows neither: it ends on EOS or at its own max_token_len (prompt + generated, protocol §6).
So the gateway watches the text as it arrives, cuts it *before* the first stop sequence or at exactly
`budget` tokens, and tells the caller to stop consuming (closing the generator pauses the unit).

Streaming must never emit text that a later delta could turn into the start of a stop sequence. The
limiter therefore holds back the longest tail of the text that is a prefix of some stop sequence, and
releases it once it can no longer match (or when the generation ends).

Counting the whole text again on every delta made a long stream quadratic (a 900-token answer spent
most of the gateway's CPU in the tokenizer: docs/performance.md). So the text is counted in two parts:
a prefix counted once, up to a word boundary well behind the growing end, plus the tail after it.
At a boundary between a letter and a following space or punctuation mark no token spans the cut,
for Qwen's BPE (its pre-tokenizer never joins a letter with a following non-letter) and for the
estimate counter (letter runs end there; each part rounds up, so the sum can only over-count). The
sum is therefore exact or an upper bound, and the exact count of the whole text is taken only once
the sum reaches the budget. And since neither counter ever gives an ASCII character more than one token
(a byte-level BPE token is at least one byte; the estimate weighs a byte at most 1), an ASCII tail
shorter than what is left of the budget is not counted at all: most deltas of a long answer cost no
tokenizer call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from stackflow_openai.tokens import TokenCounter, truncate_to_tokens

__all__ = ["DEVICE_CAP_SLACK", "FinishReason", "OutputLimiter", "Step", "partial_tail"]

FinishReason = Literal["stop", "length"]

# The device ends a generation at its max_token_len without saying so: its finish message is the same as
# at an end of sequence (main_llm's task_output). At that cap it has generated room + 1 tokens (LLM.hpp
# counts the first token before its decode loop), and a stream loses the group it still held (up to 2
# tokens; more while the text ends in byte 0xBD: docs/protocol-notes.md, item 2); re-counting the text
# may differ by a token. So an end within this many tokens of the room is the device's cap.
DEVICE_CAP_SLACK = 4
_REBASE_AFTER = 128  # tail characters that trigger counting a longer prefix once
_REBASE_KEEP = 32  # characters left in the tail: a boundary never sits at the growing end
_CUT_AFTER_LETTER = frozenset(" ,.!?;:，。！？；：、")
# Counters known to give an ASCII text at most one token per character (see the module doc).
_AT_MOST_ONE_PER_ASCII_CHAR = frozenset({"qwen", "estimate"})


@dataclass(frozen=True, slots=True)
class Step:
    text: str  # new text that is safe to send to the client now
    done: bool  # the output is complete: stop consuming the generation


class OutputLimiter:
    def __init__(
        self, counter: TokenCounter, *, stops: Sequence[str], budget: int, room: int | None = None
    ) -> None:
        """`budget`: tokens the request allows; `room`: tokens the device can still generate after the
        prompt (its max_token_len less the prompt), to tell its silent cap from an end of sequence."""
        self._counter = counter
        self._room = room
        self._stops = [s for s in dict.fromkeys(stops) if s]  # "" would match everywhere: ignore it
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._budget = budget
        self._text = ""  # everything received so far
        self._emitted = 0  # characters of _text already released
        self._searched = 0  # stop sequences cannot start before this index (already searched)
        self._first_hit: tuple[int, int] | None = None  # (start, end) of the earliest stop found so far
        self._counted = 0  # characters of _text in the counted prefix (always at a boundary)
        self._counted_tokens = 0
        self._ascii_bound = getattr(counter, "name", None) in _AT_MOST_ONE_PER_ASCII_CHAR
        self.final_text: str | None = None
        self.finish_reason: FinishReason = "stop"

    @property
    def text(self) -> str:
        """The output so far: final once `done` was returned or `finish()` was called."""
        return self._text if self.final_text is None else self.final_text

    def feed(self, delta: str) -> Step:
        if self.final_text is not None:
            return Step("", True)
        self._text += delta
        # Token by token, the generation would end after `budget` tokens whatever follows; only a stop
        # sequence completed within those tokens counts. So cap first, then look for stops.
        capped = self._reaches_budget()
        text = truncate_to_tokens(self._counter, self._text, self._budget) if capped else self._text
        cut = self._find_stop(text)
        # A longer stop that began before this one may still complete ('<' is found in '><', but the
        # stop '><<' would cut at 0): decide once the text can no longer extend it, so the cut never
        # depends on how the text was split into deltas.
        if cut is not None and (capped or not self._partial_match_before(cut)):
            return self._end(text[:cut], "stop")
        if capped:
            return self._end(text, "length")
        safe = len(self._text) - self._partial_stop_tail()
        return Step(self._release(safe if cut is None else min(safe, cut)), False)

    def finish(self) -> str:
        """The generation ended on its own: release whatever was held back. It is an end by length
        when the device ran out of room (see DEVICE_CAP_SLACK), else an end of sequence."""
        if self.final_text is not None:
            return ""
        cut = self._find_stop(self._text)
        if cut is not None:
            return self._end(self._text[:cut], "stop").text
        return self._end(self._text, "length" if self._device_capped() else "stop").text

    def _device_capped(self) -> bool:
        room = self._room
        if room is None:
            return False
        text, near = self._text, room - DEVICE_CAP_SLACK
        if self._ascii_bound and text.isascii() and len(text) < near:
            return False  # at most one token per character: a short answer needs no count (module doc)
        return self._counter.count(text) >= near

    def _end(self, text: str, reason: FinishReason) -> Step:
        released = self._text[: self._emitted]
        if not text.startswith(released):
            # Tokenization at the cut can differ from a shorter text's; never take back sent text.
            text = released
        self.final_text = text
        self.finish_reason = reason
        return Step(text[self._emitted :], True)

    def _reaches_budget(self) -> bool:
        """count(text) >= budget, counting only the tail in the common case (see the module doc)."""
        text = self._text
        if len(text) - self._counted > _REBASE_AFTER:
            cut = self._boundary_before(len(text) - _REBASE_KEEP)
            if cut > self._counted:
                self._counted_tokens += self._counter.count(text[self._counted : cut])
                self._counted = cut
        tail = text[self._counted :]
        if self._ascii_bound and tail.isascii() and self._counted_tokens + len(tail) < self._budget:
            return False
        if self._counted_tokens + self._counter.count(tail) < self._budget:
            return False
        return self._counter.count(text) >= self._budget

    def _boundary_before(self, end: int) -> int:
        """The last index k in (counted, end] with a letter before it and a space or punctuation at it."""
        text = self._text
        for k in range(end, self._counted, -1):
            if text[k] in _CUT_AFTER_LETTER and text[k - 1].isalpha():
                return k
        return self._counted

    def _release(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self._text[self._emitted : end]
        self._emitted = end
        return out

    def _find_stop(self, text: str) -> int | None:
        """Index of the first complete stop sequence in `text` (a prefix of the text received)."""
        if not self._stops:
            return None
        start = self._searched
        found = [(i, i + len(s)) for s in self._stops if (i := text.find(s, start)) >= 0]
        if self._first_hit is not None:
            found.append(self._first_hit)
        hits = [hit for hit in found if hit[1] <= len(text)]  # a capped text may be shorter
        # Next time, only a stop starting in the last (longest - 1) characters can be new.
        self._searched = max(start, len(text) - self._longest_stop + 1)
        self._first_hit = min(hits) if hits else self._first_hit
        return min(hits)[0] if hits else None

    def _partial_match_before(self, index: int) -> bool:
        """Some stop sequence starts before `index` and could still be completed by later text."""
        return len(self._text) - self._partial_stop_tail() < index

    def _partial_stop_tail(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop sequence."""
        return max((partial_tail(self._text, stop) for stop in self._stops), default=0)


def partial_tail(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`: text to hold back,
    since the next delta may complete the marker (stop sequences here, think tags, tool-call tags)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
