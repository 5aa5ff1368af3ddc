"""Transcription (whisper, asr) on StackFlow units (protocol §5.5); speech is in stackflow_speech.py."""

from __future__ import annotations

import base64
import logging
from typing import Any

from stackflow_openai.languages import WHISPER_LANGUAGES
from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, DeviceTimeout
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.poolapi import UnitSource
from stackflow_openai.stackflow.setups import (
    ASR_STREAM_INPUT,
    WHISPER_STREAM_INPUT,
    asr_setup,
    whisper_setup,
)
from stackflow_openai.stackflow.unit import Unit, reply_text

from .base import BackendInvalidRequest, BackendUnavailable
from .device_lease import device_lease

__all__ = ["StackFlowTranscriptionBackend"]

log = logging.getLogger(__name__)

# whisper and asr take 16 kHz mono s16le; 2.5 s of zeros lets the sherpa decoder reach its endpoint.
_RATE = 16000
_ASR_TAIL = bytes(2 * int(2.5 * _RATE))
# Whisper answers nothing at all for an empty result in languages other than en/ja (§5.5).
_SILENT_WHEN_EMPTY = frozenset({"en", "ja"})


class StackFlowTranscriptionBackend:
    window_seconds = 30.0  # whisper pads or cuts its mel input to 30 s (§5.5)
    can_translate = False  # the device units have no translate task
    # A sherpa asr unit up to 1.8 sends nothing when it heard nothing (§5.5, protocol-notes.md 7; from
    # 1.10, and on axcl, an empty final comes at the endpoint and ends the wait at once, note 20). It
    # decodes the whole upload in one call once the last chunk is in; these units are made to follow a live
    # microphone, so they decode at least as fast as real time: after `asr_grace` seconds plus
    # `asr_seconds_per_second` per second of audio sent (trailing silence included) without a message,
    # nothing is coming.
    asr_grace = 3.0
    asr_seconds_per_second = 1.0

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

    @property
    def streaming_asr(self) -> bool:
        """A sherpa streaming model: main_asr picks its engine by these name prefixes (`parse_config`)."""
        return self.model.unit == "asr" and self.model.mode.startswith(("sherpa-ncnn", "sherpa-onnx"))

    def language(self, requested: str | None) -> str | None:
        # whisper decodes in the language its setup names (English unless told otherwise); a sherpa asr
        # model knows one language, which lsmode does not name: only the config can say.
        if self.model.unit == "whisper":
            code = requested or self.default_language or "en"
            if code not in WHISPER_LANGUAGES:  # the unit would transcribe Chinese instead (languages.py)
                message = f"whisper cannot transcribe '{code}': use one of its codes, such as en, de or zh"
                raise BackendInvalidRequest(message, param="language", code="invalid_language")
            return code
        return self.default_language

    async def transcribe(
        self, pcm: bytes, *, language: str | None, prompt: str | None, translate: bool = False
    ) -> str:
        if translate:
            raise BackendInvalidRequest("this model cannot translate", param="model")
        language = self.language(language) or ""
        try:
            async with device_lease(self.pool, self.model, self.setup(language), pool_size=None) as unit:
                text, _ = await self.run(unit, pcm, language)
                return text
        except (ConnectionLost, DeviceError) as exc:
            raise BackendUnavailable(f"transcription failed on the device: {exc}") from exc

    def setup(self, language: str) -> dict[str, Any]:
        """The unit's setup for `language` (as `language()` resolved it; "" for none)."""
        if self.model.unit == "whisper":
            return whisper_setup(self.model.mode, language)
        return asr_setup(self.model.mode)

    async def run(self, unit: Unit, pcm: bytes, language: str) -> tuple[str, bool]:
        """Transcribe 16 kHz pcm on a unit set up with `setup(language)`: the text, and whether the unit
        sent a final result with any text in it (what a chained llm answers, protocol-notes.md 27)."""
        if self.model.unit == "whisper":
            return await self._run(unit, pcm, WHISPER_STREAM_INPUT, language)
        return await self._run(unit, pcm + _ASR_TAIL, ASR_STREAM_INPUT, language)

    def result_wait(self, audio_bytes: int) -> float:
        """How long to wait for each message after `audio_bytes` of PCM were sent."""
        if not self.streaming_asr:
            return self.result_timeout
        return self.asr_grace + self.asr_seconds_per_second * audio_bytes / (2 * _RATE)

    async def _run(self, unit: Unit, audio: bytes, obj: str, language: str) -> tuple[str, bool]:
        await unit.infer_base64_stream(base64.b64encode(audio).decode("ascii"), object=obj)
        wait = self.result_wait(len(audio))
        text = ""
        try:
            async for reply in unit.outputs(idle_timeout=wait, silence_ends=True):
                text = reply_text(reply)  # asr partials are cumulative: the last one is the whole text
        except DeviceTimeout as exc:
            if self.streaming_asr:
                # Nothing heard (no message at all), or no endpoint reached (a partial and no final; the
                # partial is the whole text, without the final's "."). Either way the recognizer stream
                # may not have been reset and would prefix the next request's text: have it exited.
                unit.mark_broken()
                return text, False
            if self.model.unit == "whisper" and language not in _SILENT_WHEN_EMPTY:
                return "", False  # silence is whisper's answer for "nothing heard" here
            unit.mark_broken()  # an answer may still come, into the next request: do not reuse it
            raise BackendUnavailable(f"the device did not answer the transcription: {exc}") from exc
        final = bool(text)
        return (text[:-1] if text.endswith(".") and self._final_has_period() else text), final

    def _final_has_period(self) -> bool:
        """Every final result gets "." appended (main_asr `task_output`, main_whisper), except from asr's
        offline engine (sense-voice) with inverse text normalisation on, whose punctuation is the model's."""
        if self.model.unit != "asr" or self.streaming_asr:
            return True
        return not self.model.mode_param.get("model_config.sense_voice.use_itn", False)
