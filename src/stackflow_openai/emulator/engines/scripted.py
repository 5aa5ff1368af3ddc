"""The SCRIPTED engine: a deterministic stand-in for real models. It is a TEST TOOL.

Nothing here is a model. Outputs are pure functions of the inputs, so tests can predict them:

- LLM/VLM: the answer repeats the prompt's words ("You said 3 words: hello big world."), one piece
  per word-ish token; `max_new_tokens` cuts it. On a ctx unit, whose KV cache keeps earlier turns, it
  also repeats what it remembers ("... Before that you said: my name is Ann.") so that a test sees at
  once when one conversation's text reaches another. A prompt that carries tools or asks for JSON gets
  a call in its family's format or schema-valid JSON instead (scripted_tools.py). `prompt_tokens` counts
  the templated prompt with the Qwen tokenizer for the Qwen-family models (Qwen, InternVL, DeepSeek-R1
  distill: what the device counts with, device_tokens.py), else estimates (~3.5 ASCII characters per
  token, CJK characters about one each, plus the template).
- TTS: a non-silent 16 kHz s16le waveform, one short tone per character (pitch from the character),
  silence for spaces and punctuation; longer text gives longer audio, `speed` shortens it.
- ASR: one word per ~0.4 s of non-silent audio, picked from a fixed vocabulary by a checksum of
  that stretch of samples; silence gives ''. The same audio always gives the same words.

`Timing` adds realistic delays (`Timing.realistic()`); everything defaults to 0 so tests are fast.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import sys
import zlib
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from stackflow_openai.emulator.engines.base import History, LlmSettings
from stackflow_openai.emulator.engines.device_tokens import (
    counts_in_qwen_tokens,
    device_chat_template,
    qwen_encoder,
)
from stackflow_openai.emulator.engines.scripted_tools import scripted_json_answer, scripted_tool_answer
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = [
    "ScriptedAsrSession",
    "ScriptedEngine",
    "ScriptedLlmSession",
    "ScriptedTtsSession",
    "Timing",
    "estimate_tokens",
    "scripted_answer",
    "scripted_pieces",
]

SAMPLE_RATE = 16000
_WORD = re.compile(r"\w+")
_PIECE = re.compile(r"\s*(?:[A-Za-z0-9_']+|[^\sA-Za-z0-9_'])|\s+")
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_REMEMBERED_TURNS = 3  # earlier user turns a ctx answer repeats
_PAUSE_CHARS = frozenset(",.!?;:，、。！？；：")
_FRAME = SAMPLE_RATE // 100  # 10 ms
_SPEECH_LEVEL = 300  # mean |sample| above this is "speech" (same threshold as the asr unit)
_VOCAB = {
    "en": [
        "hello",
        "world",
        "river",
        "stone",
        "light",
        "music",
        "window",
        "garden",
        "yellow",
        "morning",
        "quiet",
        "paper",
        "orange",
        "silver",
        "number",
        "travel",
        "summer",
        "pocket",
        "island",
        "simple",
        "forest",
        "bridge",
        "market",
        "cloud",
    ],
    "zh": ["你好", "世界", "河流", "石头", "光", "音乐", "窗户", "花园", "早上", "安静", "纸", "银色"],
    "ja": ["こんにちは", "世界", "川", "石", "光", "音楽", "窓", "庭", "朝", "静か", "紙", "銀"],
}


@dataclass(frozen=True, slots=True)
class Timing:
    """Delays of the scripted engine, in seconds (0 = none). `tokens_per_second` 0 = unpaced."""

    setup_delay: float = 0.0
    time_to_first_token: float = 0.0
    # Prefill cost per prompt position, on top of time_to_first_token: a MODELLING CHOICE, not a measured
    # device figure (it makes what a ctx unit saves by prefilling only the new turn visible).
    prefill_seconds_per_token: float = 0.0
    tokens_per_second: float = 0.0
    synthesis_seconds_per_char: float = 0.0
    transcription_delay: float = 0.0

    @classmethod
    def realistic(cls) -> Timing:
        """About what a Module LLM (AX630C) does with a 0.5B model (protocol §6 timeouts table): a first
        token ~0.5 s after a typical 60-token prompt, 0.3 s fixed plus 3.5 ms per prompt position (an
        assumption: one 128-token prefill chunk in ~0.45 s; see docs/performance.md, "ctx models")."""
        return cls(
            setup_delay=5.0,
            time_to_first_token=0.3,
            prefill_seconds_per_token=0.0035,
            tokens_per_second=10.0,
            synthesis_seconds_per_char=0.01,
            transcription_delay=0.3,
        )


def scripted_answer(prompt: str, image_count: int = 0, history: History = ()) -> str:
    """The full answer the scripted LLM gives to `prompt` (before any token limit); with a ctx unit's
    `history`, the last earlier user turns it remembers are repeated after it."""
    words = _WORD.findall(prompt)
    if words:
        shown = " ".join(words[:48])
        body = f"You said {len(words)} word{'s' if len(words) != 1 else ''}: {shown}."
    else:
        body = "You said nothing."
    if image_count:
        body = f"I see {image_count} image{'s' if image_count != 1 else ''}. {body}"
    remembered = [text for role, text in history if role == "user"][-_REMEMBERED_TURNS:]
    if remembered:
        earlier = " | ".join(" ".join(_WORD.findall(text)[:16]) for text in remembered)
        body += f" Before that you said: {earlier}."
    return body


def scripted_pieces(text: str) -> list[str]:
    """Split an answer into token-like pieces (a word with its leading space, or one symbol)."""
    return _PIECE.findall(text)


def estimate_tokens(text: str) -> int:
    """Rough token count: special tokens 1 each, ~3.5 ASCII chars per token, other chars ~1 each."""
    specials = len(_SPECIAL.findall(text))
    plain = _SPECIAL.sub("", text)
    ascii_chars = sum(1 for c in plain if c.isascii())
    return specials + math.ceil(ascii_chars / 3.5 + (len(plain) - ascii_chars) * 0.9)


class ScriptedLlmSession:
    def __init__(
        self,
        model: ModelDescriptor,
        settings: LlmSettings,
        timing: Timing,
        encoder: Callable[[str], list[int]] | None,
    ) -> None:
        self.model = model
        self.settings = settings
        self._timing = timing
        self._encoder = encoder

    def prompt_tokens(self, prompt: str, system_prompt: str | None = None) -> int:
        templated = device_chat_template(self.model, system_prompt or self.settings.system_prompt, prompt)
        if self._encoder is not None:
            return len(self._encoder(templated))
        return estimate_tokens(templated)

    async def generate(
        self,
        prompt: str,
        *,
        images: list[bytes],
        max_new_tokens: int,
        history: History = (),
        prefill_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        answer = scripted_tool_answer(self.settings.system_prompt, prompt) or scripted_json_answer(prompt)
        text = answer or scripted_answer(prompt, len(images), history)
        pieces = scripted_pieces(text)[: max(0, max_new_tokens)]
        first = self._timing.time_to_first_token
        if self._timing.prefill_seconds_per_token > 0:
            positions = self.prompt_tokens(prompt) if prefill_tokens is None else prefill_tokens
            first += self._timing.prefill_seconds_per_token * positions
        for number, piece in enumerate(pieces):
            delay = first if number == 0 else self._token_interval()
            if delay > 0:
                await asyncio.sleep(delay)
            yield piece

    def count_output(self, pieces: list[str]) -> int:
        return len(pieces)  # one piece is one token here

    def _token_interval(self) -> float:
        tps = self._timing.tokens_per_second
        return 1.0 / tps if tps > 0 else 0.0

    async def close(self) -> None:
        return None


class ScriptedTtsSession:
    sample_rate = SAMPLE_RATE

    def __init__(self, model: ModelDescriptor, voice: str | None, timing: Timing) -> None:
        self.model = model
        self.voice = voice
        self._timing = timing

    async def synthesize(self, text: str, *, speed: float = 1.0) -> bytes:
        delay = self._timing.synthesis_seconds_per_char * len(text)
        if delay > 0:
            await asyncio.sleep(delay)
        return await asyncio.to_thread(render_speech, text, speed)

    async def close(self) -> None:
        return None


def render_speech(text: str, speed: float = 1.0) -> bytes:
    """The scripted TTS waveform for `text`: s16le mono at 16 kHz."""
    speed = speed if speed > 0 else 1.0
    tone_len = int(SAMPLE_RATE * 0.06 / speed)
    gap_len = int(SAMPLE_RATE * 0.03 / speed)
    pause_len = int(SAMPLE_RATE * 0.12 / speed)
    samples = array("h")
    for char in text:
        if char.isspace():
            samples.extend(array("h", bytes(2 * gap_len)))
        elif char in _PAUSE_CHARS:
            samples.extend(array("h", bytes(2 * pause_len)))
        else:
            samples.extend(_tone(180 + (ord(char) % 40) * 15, tone_len))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


@functools.lru_cache(maxsize=256)
def _tone(frequency: int, length: int) -> array[int]:
    fade = max(1, min(80, length // 4))  # 5 ms ramps: no clicks, clearly non-silent
    out = array("h", bytes(2 * length))
    for i in range(length):
        envelope = min(1.0, i / fade, (length - 1 - i) / fade)
        out[i] = int(9000 * envelope * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE))
    return out


class ScriptedAsrSession:
    def __init__(self, model: ModelDescriptor, timing: Timing) -> None:
        self.model = model
        self._timing = timing

    async def transcribe(self, pcm: bytes, *, language: str) -> str:
        if self._timing.transcription_delay > 0:
            await asyncio.sleep(self._timing.transcription_delay)
        return await asyncio.to_thread(transcribe_scripted, pcm, language)

    async def close(self) -> None:
        return None


def speech_frames(pcm: bytes) -> list[bool]:
    """Per 10 ms frame of s16le PCM: is it speech (mean |sample| above the silence level)?"""
    samples = array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    flags = []
    for start in range(0, len(samples), _FRAME):
        frame = samples[start : start + _FRAME]
        flags.append(sum(abs(s) for s in frame) / len(frame) > _SPEECH_LEVEL)
    return flags


def transcribe_scripted(pcm: bytes, language: str) -> str:
    """The scripted transcript of `pcm` (s16le 16 kHz mono): '' when there is no speech."""
    flags = speech_frames(pcm)
    vocab = _VOCAB.get(language, _VOCAB["en"])
    words: list[str] = []
    for start, end in _speech_segments(flags):
        count = max(1, round((end - start) / 40))  # ~0.4 s per word
        step = (end - start) / count
        for k in range(count):
            lo = 2 * _FRAME * (start + int(k * step))
            hi = 2 * _FRAME * (start + int((k + 1) * step))
            words.append(vocab[zlib.crc32(pcm[lo:hi]) % len(vocab)])
    if not words:
        return ""
    if language in _VOCAB and language != "en":
        return "".join(words)
    text = " ".join(words)
    return text[0].upper() + text[1:]


def _speech_segments(flags: list[bool], max_gap: int = 20) -> list[tuple[int, int]]:
    """Runs of speech frames, merging gaps shorter than `max_gap` frames (0.2 s)."""
    segments: list[tuple[int, int]] = []
    for index, is_speech in enumerate(flags):
        if not is_speech:
            continue
        if segments and index - segments[-1][1] < max_gap:
            segments[-1] = (segments[-1][0], index + 1)
        else:
            segments.append((index, index + 1))
    return segments


class ScriptedEngine:
    """Deterministic engine for tests and demos (see the module docstring). Not a model."""

    name = "scripted"

    def __init__(self, timing: Timing | None = None, *, tokenizer: str = "auto") -> None:
        if tokenizer not in ("auto", "estimate"):
            raise ValueError("tokenizer must be 'auto' or 'estimate'")
        self.timing = timing or Timing()
        self._tokenizer = tokenizer

    async def open_llm(self, model: ModelDescriptor, settings: LlmSettings) -> ScriptedLlmSession:
        if self.timing.setup_delay > 0:
            await asyncio.sleep(self.timing.setup_delay)
        encoder = None
        if self._tokenizer == "auto" and counts_in_qwen_tokens(model):
            encoder = await asyncio.to_thread(qwen_encoder)
        return ScriptedLlmSession(model, settings, self.timing, encoder)

    async def open_tts(self, model: ModelDescriptor, voice: str | None) -> ScriptedTtsSession:
        if self.timing.setup_delay > 0:
            await asyncio.sleep(self.timing.setup_delay)
        return ScriptedTtsSession(model, voice, self.timing)

    async def open_asr(self, model: ModelDescriptor) -> ScriptedAsrSession:
        if self.timing.setup_delay > 0:
            await asyncio.sleep(self.timing.setup_delay)
        return ScriptedAsrSession(model, self.timing)
