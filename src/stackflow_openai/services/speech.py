"""POST /v1/audio/speech and GET /v1/audio/voices, without HTTP: request → a stream of encoded audio.

The speech backend yields 16 kHz PCM one sentence at a time (protocol §5.4). Each piece goes through
time-stretch + resampling to 24 kHz (`PcmConverter`) and the format's incremental encoder, and whatever
bytes the codec has ready are yielded at once, so a client hears the first sentence while later ones are
still being synthesized. CPU work runs in a worker thread so a long sentence does not stall the event
loop for other clients; so does opening the renderer, whose first use loads numpy and PyAV
(`stackflow_openai.audio` loads them on demand).
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stackflow_openai.audio import DEVICE_RATE, MAX_SPEED, MIN_SPEED, OUTPUT_RATE, SpeechFormat
from stackflow_openai.backends.base import BackendError, ModelEntry, SpeechBackend
from stackflow_openai.errors import (
    InvalidRequestError,
    UnsupportedParameter,
    validation_error,
)
from stackflow_openai.services.generation import Detached
from stackflow_openai.services.params import IGNORED_HEADER, header_list
from stackflow_openai.services.registry import ModelRegistry, resolve_model
from stackflow_openai.sse import aclose_quietly, encode_event, error_event

__all__ = [
    "MAX_INPUT_CHARS",
    "SpeechRequest",
    "SpeechStream",
    "VoiceRef",
    "ignored_or_refused",
    "list_voices",
    "parse_speech_request",
    "start_speech",
]

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input`


def ignored_or_refused(entry: ModelEntry, ignored: list[str]) -> dict[str, str]:
    """The X-Ignored-Params header for `ignored`; with strict_params the request is refused instead."""
    if not ignored:
        return {}
    if entry.strict_params:
        raise UnsupportedParameter(
            f"The model '{entry.id}' does not support: {', '.join(ignored)}.", param=ignored[0]
        )
    return {IGNORED_HEADER: header_list(ignored, ", ")}


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object form of `voice`: {"id": "..."}."""

    model_config = ConfigDict(extra="forbid")
    id: str


class SpeechRequest(BaseModel):
    """The body of POST /v1/audio/speech (CreateSpeechRequest), fields in OpenAI's order."""

    model_config = ConfigDict(extra="allow")  # unknown keys are reported as ignored, not rejected

    model: str
    input: str
    instructions: str | None = None
    voice: str | VoiceRef
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    def ignored_params(self) -> list[str]:
        # The device's TTS takes text and a voice only: style instructions cannot be honoured.
        ignored = ["instructions"] if self.instructions else []
        return ignored + sorted(self.model_extra or {})


def parse_speech_request(body: Any) -> SpeechRequest:
    """Validate a decoded JSON body; every problem is a 400 naming the parameter."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    try:
        request = SpeechRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    if not request.input.strip():
        raise InvalidRequestError("'input' must not be empty.", param="input", code="invalid_value")
    if len(request.input) > MAX_INPUT_CHARS:
        raise InvalidRequestError(
            f"'input' is {len(request.input)} characters long; the maximum is {MAX_INPUT_CHARS}.",
            param="input",
            code="string_above_max_length",
        )
    return request


@dataclass(slots=True)
class SpeechStream:
    media_type: str
    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


class _Renderer:
    """16 kHz device PCM → encoded bytes in the requested format, at `speed`.

    Build it in a worker thread: the first one imports numpy and PyAV (~0.25 s).
    """

    def __init__(self, fmt: SpeechFormat, speed: float) -> None:
        from stackflow_openai.audio import PcmConverter, open_encoder

        self.encoder = open_encoder(fmt, sample_rate=OUTPUT_RATE)
        self.converter = PcmConverter(DEVICE_RATE, OUTPUT_RATE, speed=speed)

    def feed(self, pcm: bytes) -> bytes:
        return self.encoder.feed(self.converter.feed(pcm))

    def finish(self) -> bytes:
        return self.encoder.feed(self.converter.finish()) + self.encoder.finish()


async def start_speech(registry: ModelRegistry, request: SpeechRequest) -> SpeechStream:
    """Check the request, start synthesis and wait for the first sentence.

    Waiting here (not in the body) lets a busy or failing device still become a proper HTTP error.
    """
    entry = resolve_model(registry, request.model, kinds=("speech",), endpoint="/v1/audio/speech")
    backend = _speech_backend(entry)
    voice = request.voice_id
    if voice not in backend.voices:
        raise InvalidRequestError(
            f"Unknown voice '{voice}' for model '{entry.id}'. Valid voices: {', '.join(backend.voices)}.",
            param="voice",
            code="invalid_voice",
        )
    headers = ignored_or_refused(entry, request.ignored_params())
    # Before synthesis starts, so a cancellation here leaves nothing running on the device.
    renderer = await asyncio.to_thread(_Renderer, request.response_format, request.speed)
    # Read from helper tasks: a client that leaves must not cancel the backend's own clean-up (generation.py).
    pieces = Detached(backend.synthesize(request.input, voice=voice))
    try:
        first: bytes | None = await anext(pieces)
    except StopAsyncIteration:
        first = None  # nothing to say (e.g. punctuation only): a valid, empty file
    except BaseException:
        await pieces.aclose()  # e.g. cancelled while waiting: the backend is still running
        raise
    audio = _render(pieces, first, renderer)
    if request.stream_format == "sse":
        usage = _usage(request.input)
        return SpeechStream("text/event-stream", _sse_events(audio, usage), headers)
    return SpeechStream(renderer.encoder.content_type, audio, headers)


def _speech_backend(entry: ModelEntry) -> SpeechBackend:
    if entry.speech is None:
        raise InvalidRequestError(f"The model '{entry.id}' has no speech backend.", param="model")
    return entry.speech


async def _render(
    pieces: AsyncIterator[bytes], first: bytes | None, renderer: _Renderer
) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            if out := await asyncio.to_thread(renderer.feed, first):
                yield out
            async for piece in pieces:
                if out := await asyncio.to_thread(renderer.feed, piece):
                    yield out
        if out := await asyncio.to_thread(renderer.finish):
            yield out
    finally:
        # Frees the device unit when the client goes away mid-stream. The renderer is left to the garbage
        # collector: a worker thread may still be inside it after a cancellation.
        await aclose_quietly(pieces)


def _usage(text: str) -> dict[str, int]:
    # The device counts no tokens. input_tokens is an estimate (about 4 UTF-8 bytes per token, OpenAI's
    # rule of thumb); output_tokens is 0 because no audio tokens exist on this path.
    input_tokens = max(1, math.ceil(len(text.encode("utf-8")) / 4))
    return {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}


async def _sse_events(audio: AsyncIterator[bytes], usage: dict[str, int]) -> AsyncIterator[bytes]:
    """speech.audio.delta events (base64 of the encoded format) then speech.audio.done with usage."""
    try:
        async for chunk in audio:
            yield encode_event(
                {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode("ascii")}
            )
        yield encode_event({"type": "speech.audio.done", "usage": usage})
    except BackendError as exc:
        # Headers are gone: the OpenAI SDKs raise on an event carrying an `error` object.
        yield error_event(exc)
    finally:
        await aclose_quietly(audio)


def list_voices(registry: ModelRegistry, model_id: str | None) -> dict[str, Any]:
    """GET /v1/audio/voices: {"voices": [{"id", "name", "model"}]} for one speech model or all of them."""
    if model_id is not None:
        entries = [resolve_model(registry, model_id, kinds=("speech",), endpoint="/v1/audio/voices")]
    else:
        entries = [e for e in registry.list() if e.kind == "speech" and e.speech is not None]
    voices = []
    for entry in entries:
        names: dict[str, str] = entry.extra.get("voice_names", {})
        for voice in _speech_backend(entry).voices:
            voices.append({"id": voice, "name": names.get(voice, voice), "model": entry.id})
    return {"object": "list", "voices": voices}
