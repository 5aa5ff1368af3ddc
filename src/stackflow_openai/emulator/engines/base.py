"""What an emulated unit needs from the thing that actually computes: the engine Protocol.

An engine is chosen per emulator (or per catalogue entry) and asked, at each `setup`, for a session
bound to one model. Sessions are async: CPU-bound engines run their work off the event loop (a
thread) and must not block it. The emulated units own everything protocol-related (segmentation,
base64, grouping of LLM tokens into deltas, terminators, error codes); engines only compute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["AsrSession", "Engine", "History", "LlmSession", "LlmSettings", "LocalEngineError", "TtsSession"]


class LocalEngineError(RuntimeError):
    """A local model failed while computing (llama.cpp error, bad audio, ...). Defined here, below
    local.py and its per-kind modules, so that they share it without importing each other."""


# Earlier turns a "ctx" unit keeps in its KV cache: (role, text) pairs, oldest first, roles user/assistant.
History = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """What an llm/vlm `setup` fixes for the life of the instance (protocol §4.1)."""

    system_prompt: str
    max_token_len: int  # prompt + generated positions (protocol §6)
    temperature: float | None = None  # None: the flag was off
    top_p: float | None = None
    top_k: int | None = None


class LlmSession(Protocol):
    def prompt_tokens(self, prompt: str, system_prompt: str | None = None) -> int:
        """Tokens of the templated prompt (system + user turn), as the device counts them; under
        `system_prompt` instead of the setup's when given."""
        ...

    def generate(
        self,
        prompt: str,
        *,
        images: list[bytes],
        max_new_tokens: int,
        history: History = (),
        prefill_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        """Text pieces (about one token each), at most `max_new_tokens` device tokens in all. The consumer
        may stop iterating at any time (pause).

        `history`: what a ctx unit's KV cache holds before this turn (the answer may use it).
        `prefill_tokens`: positions this inference prefills (a ctx unit prefills only the new turn);
        None: the whole templated prompt. Engines with a timing model charge prefill by it."""
        ...

    def count_output(self, pieces: list[str]) -> int:
        """Device tokens these generated pieces stand for (the unit compares it with its cap to tell an
        end of sequence from an end by max_token_len)."""
        ...

    async def close(self) -> None: ...


class TtsSession(Protocol):
    sample_rate: int  # always 16000: units resample before handing audio out

    async def synthesize(self, text: str, *, speed: float = 1.0) -> bytes:
        """One segment of text → s16le mono PCM at `sample_rate`."""
        ...

    async def close(self) -> None: ...


class AsrSession(Protocol):
    async def transcribe(self, pcm: bytes, *, language: str) -> str:
        """s16le mono 16 kHz PCM → text, without the device's trailing '.'; '' when nothing was heard."""
        ...

    async def close(self) -> None: ...


class Engine(Protocol):
    name: str

    async def open_llm(self, model: ModelDescriptor, settings: LlmSettings) -> LlmSession: ...

    async def open_tts(self, model: ModelDescriptor, voice: str | None) -> TtsSession: ...

    async def open_asr(self, model: ModelDescriptor) -> AsrSession: ...
