"""Speech (melotts, tts) and transcription (whisper, asr) on StackFlow units (protocol §5.4, §5.5)."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import AsyncIterator, Mapping

from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, DeviceTimeout
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.pool import UnitSource
from stackflow_openai.stackflow.setups import (
    ASR_STREAM_INPUT,
    TTS_TEXT_INPUT,
    WHISPER_STREAM_INPUT,
    asr_setup,
    melotts_setup,
    tts_setup,
    whisper_setup,
)
from stackflow_openai.stackflow.unit import Unit, reply_text

from .base import BackendInvalidRequest, BackendUnavailable
from .device_lease import device_lease

__all__ = ["StackFlowSpeechBackend", "StackFlowTranscriptionBackend", "tts_segments"]

log = logging.getLogger(__name__)

# The TTS units cut text after each of these and synthesize every piece separately (§5.4).
_SEGMENT_END = re.compile(r"(?<=[,.!?;，、。！？；])")
# whisper and asr take 16 kHz mono s16le; 2.5 s of zeros lets the sherpa decoder reach its endpoint.
_RATE = 16000
_ASR_TAIL = bytes(2 * int(2.5 * _RATE))
# Whisper answers nothing at all for an empty result in languages other than en/ja (§5.5).
_SILENT_WHEN_EMPTY = frozenset({"en", "ja"})


def tts_segments(text: str) -> list[str]:
    return [piece for piece in _SEGMENT_END.split(text) if piece.strip()]


def _pcm(reply_b64: str) -> bytes:
    try:
        return base64.b64decode(reply_b64, validate=True) if reply_b64 else b""
    except (binascii.Error, ValueError) as exc:
        raise BackendUnavailable(f"the device sent undecodable audio: {exc}") from exc


class StackFlowSpeechBackend:
    """One OpenAI speech model; each voice name maps to a device TTS model (melotts voices are models)."""

    def __init__(
        self, pool: UnitSource, voices: Mapping[str, ModelDescriptor], *, idle_timeout: float
    ) -> None:
        self.pool = pool
        self._voices = dict(voices)
        self.voices = list(self._voices)
        self.idle_timeout = idle_timeout

    async def synthesize(self, text: str, *, voice: str) -> AsyncIterator[bytes]:
        model = self._voices.get(voice)
        if model is None:
            raise BackendInvalidRequest(
                f"unknown voice {voice!r}; valid: {', '.join(self.voices)}", param="voice"
            )
        setup = melotts_setup(model.mode) if model.unit == "melotts" else tts_setup(model.mode)
        try:
            async with device_lease(self.pool, model, setup, pool_size=None) as unit:
                await unit.infer(text, object=TTS_TEXT_INPUT)
                if unit.streaming:
                    async for reply in unit.outputs(idle_timeout=self.idle_timeout):
                        yield _pcm(reply_text(reply))
                else:
                    # tts sends one message per segment and no end marker: count the segments.
                    for _ in tts_segments(text):
                        async for reply in unit.outputs(idle_timeout=self.idle_timeout):
                            yield _pcm(reply_text(reply))
        except (DeviceTimeout, ConnectionLost) as exc:
            raise BackendUnavailable(f"the device stopped answering: {exc}") from exc
        except DeviceError as exc:
            raise BackendUnavailable(f"speech synthesis failed on the device: {exc}") from exc


class StackFlowTranscriptionBackend:
    window_seconds = 30.0  # whisper pads or cuts its mel input to 30 s (§5.5)
    can_translate = False  # the device units have no translate task

    def __init__(
        self,
        pool: UnitSource,
        model: ModelDescriptor,
        *,
        default_language: str | None = None,
        result_timeout: float = 20.0,
    ) -> None:
        self.pool = pool
        self.model = model
        self.default_language = default_language
        self.result_timeout = result_timeout

    def language(self, requested: str | None) -> str | None:
        # whisper decodes in the language its setup names (English unless told otherwise); a sherpa asr
        # model knows one language, which lsmode does not name: only the config can say.
        if self.model.unit == "whisper":
            return (requested or self.default_language or "en").lower()
        return self.default_language

    async def transcribe(
        self, pcm: bytes, *, language: str | None, prompt: str | None, translate: bool = False
    ) -> str:
        if translate:
            raise BackendInvalidRequest("this model cannot translate", param="model")
        language = self.language(language) or ""
        if self.model.unit == "whisper":
            setup, obj, audio = whisper_setup(self.model.mode, language), WHISPER_STREAM_INPUT, pcm
        else:
            setup, obj, audio = asr_setup(self.model.mode), ASR_STREAM_INPUT, pcm + _ASR_TAIL
        try:
            async with device_lease(self.pool, self.model, setup, pool_size=None) as unit:
                return await self._run(unit, audio, obj, language)
        except (ConnectionLost, DeviceError) as exc:
            raise BackendUnavailable(f"transcription failed on the device: {exc}") from exc

    async def _run(self, unit: Unit, audio: bytes, obj: str, language: str) -> str:
        await unit.infer_base64_stream(base64.b64encode(audio).decode("ascii"), object=obj)
        text = ""
        try:
            async for reply in unit.outputs(idle_timeout=self.result_timeout, silence_ends=True):
                text = reply_text(reply)  # asr partials are cumulative: the last one is the whole text
        except DeviceTimeout:
            if self.model.unit == "whisper" and language not in _SILENT_WHEN_EMPTY:
                return ""  # silence is whisper's answer for "nothing heard" here
            raise
        # Both units append "." to every result; take exactly that one off.
        return text[:-1] if text.endswith(".") else text
