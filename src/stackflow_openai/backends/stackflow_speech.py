"""Speech on StackFlow units: melotts, tts (SummerTTS, Kokoro) and cosy_voice (CosyVoice2); protocol §5.4.

Each unit and version ends its output differently (docs/protocol-notes.md 8, 17, 18), so the backend
drives each the one way that returns all of the audio and leaves nothing behind for the next request:

- melotts (every version) and tts from 1.7: the stream format, with the text closed by a breakpoint.
  Then every version sends one `finish:false` message per segment and exactly one empty `finish:true`
  end (melotts from dev, and on axcl, would send a second end message after an unclosed remainder).
- tts up to 1.6: the non-stream format, one message per segment and no end marker: counted.
- tts of unknown version (no `sys.version2`): one inference per segment, each sent without its
  breakpoint so that the unit speaks it as a final remainder, which both generations send; the empty
  end message 1.7 adds is skipped. The unit appends its own "." to each, so "?" is spoken as ".".
- cosy_voice: the stream format; the unit speaks the whole text as one utterance, in chunks ending
  with `finish:true`. Its voices are prompt directories (`prompt_dir`).

Every unit that resamples is asked for 16 kHz (`SPEECH_RATE`); the rate of what comes back is that of
the setup as the unit reads it (`output_rate`), and anything else is resampled here, so that no board
plays at the wrong speed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, DeviceTimeout
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.poolapi import UnitSource
from stackflow_openai.stackflow.setups import (
    SPEECH_RATE,
    TTS_TEXT_INPUT,
    cosy_voice_setup,
    melotts_setup,
    tts_setup,
)
from stackflow_openai.stackflow.unit import Unit, reply_text
from stackflow_openai.stackflow.versions import TTS_FINAL_ONLY

from .base import BackendInvalidRequest, BackendUnavailable
from .device_lease import device_lease

if TYPE_CHECKING:
    from stackflow_openai.audio import PcmConverter

__all__ = [
    "SPEECH_UNITS",
    "BreakpointSplitter",
    "SpeechVoice",
    "StackFlowSpeechBackend",
    "decode_pcm",
    "output_rate",
    "pcm_converter",
    "tts_segments",
]

SPEECH_UNITS = ("melotts", "tts", "cosy_voice")
# The tts units end a segment on each of these characters and synthesize every segment separately (§5.4).
BREAKPOINTS = frozenset(",.!?;，、。！？；")
SUMMER_RATE = 16000  # SummerTTS has no audio_rate: it always speaks at 16 kHz
COSY_DEFAULT_RATE = 48000  # dev:main_cosy_voice/src/runner/LLM.hpp 73-74

Driver = Callable[[Unit, str], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class SpeechVoice:
    """A voice: the device model that speaks it, and for CosyVoice2 the prompt directory it imitates."""

    model: ModelDescriptor
    prompt_dir: str | None = None


class BreakpointSplitter:
    """The tts and melotts units' own cut of their input (`task_user_data` in main_tts / main_melotts,
    `is_breakpoint`: protocol-notes.md 32), fed piece by piece: every breakpoint character closes a piece,
    even one holding nothing else; `flush` gives the remainder, which the unit speaks with "." appended."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        pieces: list[str] = []
        for char in text:
            self._pending += char
            if char in BREAKPOINTS:
                pieces.append(self._pending)
                self._pending = ""
        return pieces

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []


def tts_segments(text: str) -> list[str]:
    """The pieces the tts and melotts units synthesize for `text`, one message each on tts: "Hi.." is
    "Hi." and ".", and a non-empty remainder, however blank (" ", "\n"), is spoken with "." appended.
    Counting any other way leaves device messages unread, and they then arrive in the next request on
    the same instance."""
    splitter = BreakpointSplitter()
    return splitter.feed(text) + [rest + "." for rest in splitter.flush()]


def device_tts_text(text: str, *, close: bool = False) -> str:
    """`text` as sent to a TTS unit: no trailing blanks, never the exact string "None", and with
    `close`, ending on a breakpoint (the "." the unit itself would append to the remainder).

    A blank remainder would be synthesized as " ." for nothing; the units drop an input of exactly
    "None" without a reply, so it goes out as "None.", which they speak the same.
    """
    text = text.rstrip()
    if text == "None":
        return "None."
    return text + "." if close and text and text[-1] not in BREAKPOINTS else text


def output_rate(model: ModelDescriptor, setup: Mapping[str, Any]) -> int:
    """The sample rate of the PCM a unit set up with `setup` sends, where each unit reads it."""
    if model.unit == "tts" and model.mode.startswith("single-speaker"):
        return SUMMER_RATE
    for source in (setup, model.mode_param):  # CONFIG_AUTO_SET: the setup first, then the descriptor
        rate = source.get("audio_rate")
        if isinstance(rate, int) and not isinstance(rate, bool) and rate > 0:
            return rate
    return COSY_DEFAULT_RATE if model.unit == "cosy_voice" else SPEECH_RATE


def decode_pcm(reply_b64: str) -> bytes:
    """The PCM of one speech unit message (empty for an end message)."""
    try:
        return base64.b64decode(reply_b64, validate=True) if reply_b64 else b""
    except (binascii.Error, ValueError) as exc:
        raise BackendUnavailable(f"the device sent undecodable audio: {exc}") from exc


def pcm_converter(rate: int, target: int = SPEECH_RATE, speed: float = 1.0) -> PcmConverter:
    """A resampler from a unit's rate; imported here, so that numpy and PyAV load only when one is needed."""
    from stackflow_openai.audio import PcmConverter

    return PcmConverter(rate, target, speed=speed)


class StackFlowSpeechBackend:
    """One OpenAI speech model; each voice name maps to a device model (melotts voices are models)."""

    def __init__(
        self, pool: UnitSource, voices: Mapping[str, ModelDescriptor | SpeechVoice], *, idle_timeout: float
    ) -> None:
        self.pool = pool
        self._voices = {n: v if isinstance(v, SpeechVoice) else SpeechVoice(v) for n, v in voices.items()}
        self.voices = list(self._voices)
        self.idle_timeout = idle_timeout

    def voice(self, name: str) -> SpeechVoice | None:
        return self._voices.get(name)

    def plan(self, voice: SpeechVoice, text: str) -> tuple[dict[str, Any], str, Driver]:
        """The setup, the text to send and the way to read the output, for this unit and version."""
        model = voice.model
        if model.unit == "melotts":
            return melotts_setup(model.mode), device_tts_text(text, close=True), self._stream
        if model.unit == "cosy_voice":
            setup = cosy_voice_setup(model.mode, prompt_dir=voice.prompt_dir)
            return setup, device_tts_text(text), self._stream
        version = self.pool.unit_version("tts")
        if version is None:
            return tts_setup(model.mode), device_tts_text(text), self._one_segment_at_a_time
        if version >= TTS_FINAL_ONLY:
            return tts_setup(model.mode, stream=True), device_tts_text(text, close=True), self._stream
        return tts_setup(model.mode), device_tts_text(text), self._counted_segments

    async def synthesize(self, text: str, *, voice: str) -> AsyncIterator[bytes]:
        target = self._voices.get(voice)
        if target is None:
            raise BackendInvalidRequest(
                f"unknown voice {voice!r}; valid: {', '.join(self.voices)}", param="voice"
            )
        setup, text, driver = self.plan(target, text)
        if not text:
            return  # the units drop empty input without a reply
        rate = output_rate(target.model, setup)
        converter = None if rate == SPEECH_RATE else await asyncio.to_thread(pcm_converter, rate)
        try:
            async with device_lease(self.pool, target.model, setup, pool_size=None) as unit:
                async for pcm in driver(unit, text):
                    if converter is not None:
                        pcm = await asyncio.to_thread(converter.feed, pcm)
                    if pcm:
                        yield pcm
            if converter is not None and (tail := await asyncio.to_thread(converter.finish)):
                yield tail
        except (DeviceTimeout, ConnectionLost) as exc:
            raise BackendUnavailable(f"the device stopped answering: {exc}") from exc
        except DeviceError as exc:
            raise BackendUnavailable(f"speech synthesis failed on the device: {exc}") from exc

    async def _stream(self, unit: Unit, text: str) -> AsyncIterator[bytes]:
        """One inference, read up to its (first) `finish:true` message."""
        await unit.infer(text, object=TTS_TEXT_INPUT)
        async for reply in unit.outputs(idle_timeout=self.idle_timeout):
            if pcm := decode_pcm(reply_text(reply)):
                yield pcm

    async def _counted_segments(self, unit: Unit, text: str) -> AsyncIterator[bytes]:
        """tts ≤ 1.6 sends one message per segment and no end marker: read exactly as many as it sends."""
        await unit.infer(text, object=TTS_TEXT_INPUT)
        expected = len(tts_segments(text))
        received = 0
        try:
            while received < expected:
                async for reply in unit.outputs(idle_timeout=self.idle_timeout):
                    received += 1
                    yield decode_pcm(reply_text(reply))
        finally:
            if received < expected:
                # Stopped early (client gone, -11, timeout): the unit looks idle between segments but
                # still owes the rest, which would land in the next request. Have the pool exit it.
                unit.mark_broken()

    async def _one_segment_at_a_time(self, unit: Unit, text: str) -> AsyncIterator[bytes]:
        """tts of unknown version: each segment as a final remainder, which 1.6 and 1.7 both send."""
        pending = False
        try:
            for segment in tts_segments(text):
                piece = segment[:-1]  # without its breakpoint: the unit appends "." and speaks it at once
                if not piece.strip():
                    continue  # punctuation or blanks alone
                await unit.infer(" None" if piece == "None" else piece, object=TTS_TEXT_INPUT)
                pending = True
                pcm = await self._next_audio(unit)
                pending = False
                yield pcm
        finally:
            if pending:
                unit.mark_broken()  # its audio would otherwise open the next request on this instance

    async def _next_audio(self, unit: Unit) -> bytes:
        """The next non-empty message: 1.7's empty end messages (maybe the last segment's) are skipped."""
        while True:
            async for reply in unit.outputs(idle_timeout=self.idle_timeout):
                if pcm := decode_pcm(reply_text(reply)):
                    return pcm
