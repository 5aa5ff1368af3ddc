"""What a Realtime session runs on: the chat, transcription and speech services of the gateway.

A session names a chat model (`?model=`), or a voice pipeline from the config (`realtime.pipelines`) that
names the chat, transcription and speech models and the voice. For a plain chat model the models
that `whisper-1` and `tts-1` stand for are used (else the first of each kind), with the speech model's first
voice.

Units are leased per stage and given back at once (one transcription per user turn, one chat generation and
one speech stream per sentence per response), so a session holds no device unit while the user is silent
and other HTTP clients share the same pools. A turn the device can answer by itself runs instead on its
own asr -> llm -> melotts chain, with units reserved for the session (chain.py, chained.py).
"""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stackflow_openai.backends.base import ModelEntry
from stackflow_openai.errors import InvalidRequestError, ModelNotFoundError
from stackflow_openai.services.common import GenerationPlan
from stackflow_openai.services.registry import ModelRegistry, resolve_model
from stackflow_openai.services.speech import parse_speech_request, start_speech
from stackflow_openai.services.transcription import parse_transcription_form, prepare_transcription
from stackflow_openai.sse import aclose_quietly

__all__ = ["VoicePipeline", "VoiceServices", "resolve_pipeline"]

_INPUT_RATE = 24_000


@dataclass(frozen=True, slots=True)
class VoicePipeline:
    chat_model: str
    transcription_model: str | None
    speech_model: str | None
    voice: str | None
    language: str | None = None
    device_chain: bool = False  # turns may run on the device's own asr -> llm -> melotts chain (chained.py)


def resolve_pipeline(
    registry: ModelRegistry,
    model: str | None,
    pipelines: Mapping[str, Mapping[str, Any]],
    *,
    device_chain: bool = False,
) -> VoicePipeline:
    """The pipeline a `?model=` names; raises the OpenAI error a wrong name gets."""
    if not model:
        raise InvalidRequestError("Name a model: /v1/realtime?model=ID.", param="model", code="missing_model")
    configured = pipelines.get(model)
    if configured is not None:
        chain = configured.get("device_chain")
        return VoicePipeline(
            chat_model=configured["chat_model"],
            transcription_model=configured.get("transcription_model"),
            speech_model=configured.get("speech_model"),
            voice=configured.get("voice"),
            language=configured.get("language"),
            device_chain=device_chain if chain is None else chain == "auto",
        )
    entry = resolve_model(registry, model, kinds=("chat",), endpoint="/v1/realtime")
    asr = _default(registry, "whisper-1", "transcription")
    tts = _default(registry, "tts-1", "speech")
    voice = tts.speech.voices[0] if tts is not None and tts.speech is not None and tts.speech.voices else None
    return VoicePipeline(
        entry.id, asr.id if asr else None, tts.id if tts else None, voice, device_chain=device_chain
    )


def _default(registry: ModelRegistry, alias: str, kind: str) -> ModelEntry | None:
    """The model a hard-coded OpenAI name stands for (whisper-1, tts-1), else the first of its kind."""
    entry = registry.get(alias)
    if entry is not None and entry.kind == kind:
        return entry
    return next((e for e in registry.list() if e.kind == kind), None)


def _wav(pcm24: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(_INPUT_RATE)
        wav.writeframes(pcm24)
    return out.getvalue()


class VoiceServices:
    """The three stages, in the gateway's own services (same errors, pools and limits as HTTP)."""

    def __init__(
        self,
        registry: ModelRegistry,
        plan: Callable[[dict[str, Any]], Awaitable[GenerationPlan]],
        pipeline: VoicePipeline,
    ) -> None:
        self._registry = registry
        self._plan = plan
        self.pipeline = pipeline

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    def check(self, voice: str | None) -> None:
        """Fail early (at connect or session.update) on a model or voice the gateway cannot serve."""
        for name in (self.pipeline.chat_model, self.pipeline.transcription_model, self.pipeline.speech_model):
            if name is not None and self._registry.get(name) is None:
                raise ModelNotFoundError(name, (e.id for e in self._registry.list()))
        speech = self._registry.get(self.pipeline.speech_model) if self.pipeline.speech_model else None
        backend = speech.speech if speech is not None else None
        if voice is not None and backend is not None and voice not in backend.voices:
            raise InvalidRequestError(
                f"Unknown voice '{voice}'. Valid voices: {', '.join(backend.voices)}.",
                param="session.audio.output.voice",
                code="invalid_voice",
            )

    async def plan(self, body: dict[str, Any]) -> GenerationPlan:
        return await self._plan({**body, "model": self.pipeline.chat_model, "stream": True})

    async def transcribe(self, pcm24: bytes, language: str | None) -> str:
        if self.pipeline.transcription_model is None:
            raise InvalidRequestError(
                "No transcription model is served, so audio input cannot be understood.",
                code="transcription_unavailable",
            )
        fields = {"model": [self.pipeline.transcription_model], "response_format": ["json"]}
        if language or self.pipeline.language:
            fields["language"] = [str(language or self.pipeline.language)]
        request = parse_transcription_form(fields, _wav(pcm24), translate=False)
        job = await prepare_transcription(self._registry, request)
        return (await job.run()).text.strip()

    async def speak(self, text: str, voice: str, speed: float) -> AsyncIterator[bytes]:
        """pcm16 mono 24 kHz of `text`, piece by piece."""
        if self.pipeline.speech_model is None:
            raise InvalidRequestError(
                "No speech model is served: use output_modalities ['text'].", code="speech_unavailable"
            )
        request = parse_speech_request(
            {
                "model": self.pipeline.speech_model,
                "input": text,
                "voice": voice,
                "response_format": "pcm",
                "speed": speed,
            }
        )
        stream = await start_speech(self._registry, request)
        try:
            async for piece in stream.body:
                yield piece
        finally:
            await aclose_quietly(stream.body)
