"""POST /v1/audio/transcriptions and /v1/audio/translations, without HTTP.

Upload → 16 kHz mono PCM (FFmpeg) → windows shorter than the model's limit, cut at quiet points →
one `transcribe` call per window, in order → one segment per window with its time offsets → json, text,
srt, vtt, verbose_json, or SSE events.

Translation to English has three modes, chosen per model:
1. native: the ASR model translates itself (`TranscriptionBackend.can_translate`, whisper's translate task);
2. via chat: `ModelEntry.extra["translation_chat_model"]` names a chat model that translates each
   window's transcript;
3. neither: 400 `translation_not_supported`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stackflow_openai.audio import AudioDecodeError, Cue, to_srt, to_vtt
from stackflow_openai.backends.base import BackendError, ChatBackend, TranscriptionBackend, UnitSettings
from stackflow_openai.errors import APIError, InvalidRequestError, ServiceUnavailable
from stackflow_openai.languages import language_code, language_name
from stackflow_openai.services.generation import Detached
from stackflow_openai.services.params import TRANSLATION_HEADER
from stackflow_openai.services.registry import ModelRegistry, resolve_model
from stackflow_openai.services.speech import ignored_or_refused
from stackflow_openai.sse import aclose_quietly, encode_event, error_event

if TYPE_CHECKING:
    from stackflow_openai.audio import AudioWindow, WindowReader

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "MAX_UPLOAD_BYTES",
    "TRANSCRIPTION_FORMATS",
    "TRANSLATION_SYSTEM_PROMPT",
    "Segment",
    "Transcript",
    "TranscriptionJob",
    "TranscriptionRequest",
    "file_too_large",
    "parse_transcription_form",
    "prepare_transcription",
    "render_transcript",
    "stream_transcript",
]

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit: "Maximum content size limit (26214400)"
# A model's `max_audio_seconds` unless configured. Without a limit, the 25 MB upload cap admits about
# 36 h of FLAC silence: 4,600 windows of device time for one request.
DEFAULT_MAX_AUDIO_SECONDS = 7200.0
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
TRANSLATION_SYSTEM_PROMPT = "Translate the user's text to English. Reply with the translation only."
# `chunking_strategy` is acted on whatever it says: long audio is always cut at silences (see split.py).
_KNOWN_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "stream",
                 "chunking_strategy"}  # fmt: skip
_GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")


def file_too_large(size: int | None, *, what: str = "uploaded file") -> APIError:
    got = f" ({size} bytes)" if size is not None else ""
    return APIError(
        f"The {what} is too large{got}: the maximum file size is {MAX_UPLOAD_BYTES} bytes (25 MB).",
        param="file",
        code="file_too_large",
        status_code=413,
    )


@dataclass(slots=True)
class TranscriptionRequest:
    model: str
    file: bytes
    translate: bool = False
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float | None = None
    timestamp_granularities: list[str] = field(default_factory=lambda: ["segment"])
    stream: bool = False
    unknown_fields: list[str] = field(default_factory=list)

    def ignored_params(self) -> list[str]:
        ignored = []
        # The device decodes greedily, which is what temperature 0 asks for; anything else cannot be done.
        if self.temperature:
            ignored.append("temperature")
        if "word" in self.timestamp_granularities:
            ignored.append("timestamp_granularities")  # the device reports no word timings
        if self.stream and self.response_format not in ("json", "text"):
            ignored.append("response_format")  # a stream is always transcript.text.* events
        return ignored + self.unknown_fields


def parse_transcription_form(
    fields: Mapping[str, Sequence[str]], file: bytes | None, *, translate: bool
) -> TranscriptionRequest:
    """Validate the multipart text fields (the router reads `file`); every problem is a 400."""

    def one(name: str) -> str | None:
        values = fields.get(name)
        return values[-1] if values else None

    model = one("model")
    if not model:
        raise InvalidRequestError(
            "You must provide a model parameter.", param="model", code="missing_required"
        )
    if file is None:
        raise InvalidRequestError("You must provide a file parameter.", param="file", code="missing_required")
    fmt = one("response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise _invalid("response_format", f"must be one of {', '.join(TRANSCRIPTION_FORMATS)}")
    granularities = [g for name in _GRANULARITY_FIELDS for g in fields.get(name, [])] or ["segment"]
    if any(g not in ("word", "segment") for g in granularities):
        raise _invalid("timestamp_granularities", "each value must be 'word' or 'segment'")
    stream = (one("stream") or "false").strip().lower()
    if stream not in ("true", "false", "1", "0"):
        raise _invalid("stream", "must be true or false")
    return TranscriptionRequest(
        model=model,
        file=file,
        translate=translate,
        language=_language(one("language")),
        prompt=one("prompt") or None,
        response_format=fmt,
        temperature=_temperature(one("temperature")),
        timestamp_granularities=granularities,
        stream=stream in ("true", "1") and not translate,
        unknown_fields=sorted(
            k for k in fields if k not in _KNOWN_FIELDS and k not in _GRANULARITY_FIELDS and k != "file"
        )
        # OpenAI's translations endpoint has no streaming: a request for it is answered in one piece.
        + (["stream"] if translate and stream in ("true", "1") else []),
    )


def _invalid(param: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid value for '{param}': {problem}.", param=param, code="invalid_value")


def _language(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    try:
        return language_code(raw)
    except ValueError as exc:
        raise InvalidRequestError(
            f"Invalid 'language': {exc}.", param="language", code="invalid_language"
        ) from None


def _temperature(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _invalid("temperature", "must be a number") from None
    if not 0.0 <= value <= 1.0:
        raise _invalid("temperature", "must be between 0 and 1")
    return value


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    start: float
    end: float
    text: str


@dataclass(slots=True)
class Transcript:
    task: str  # "transcribe" | "translate"
    language: str
    duration: float
    segments: list[Segment]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


@dataclass(slots=True)
class TranscriptionJob:
    """A checked request whose audio is being decoded, ready to run window by window.

    The audio is decoded as the windows are transcribed (audio/windows.py, WindowReader): memory stays
    at about one window whatever the upload's length, and a client that leaves stops the decoding too.
    """

    request: TranscriptionRequest
    backend: TranscriptionBackend
    reader: WindowReader
    first: tuple[AudioWindow, bytes] | None  # decoded while preparing: a bad file is a 400, not a 200
    language: str
    headers: dict[str, str]
    native_translation: bool = False
    chat: ChatBackend | None = None
    duration: float = 0.0  # seconds of audio transcribed so far; all of it once the job has run

    async def segments(self) -> AsyncIterator[Segment]:
        """One segment per window that produced text, in order, with the window's time offsets."""
        number = 0
        item, self.first = self.first, None
        try:
            while item is not None:
                window, pcm = item
                text = await self.backend.transcribe(
                    pcm,
                    language=self.request.language,
                    prompt=self.request.prompt,
                    translate=self.native_translation,
                )
                del pcm, item  # not held while the next window decodes
                self.duration = window.end
                text = text.strip()
                if text and self.chat is not None:
                    text = await _chat_translate(self.chat, text)
                if text:
                    yield Segment(number, round(window.start, 3), round(window.end, 3), text)
                    number += 1
                item = await _next_window(self.reader)
        finally:
            # Also when the client has gone (the task cancelled): a decode still running in its
            # thread stops at its next frame.
            self.reader.close()

    async def run(self) -> Transcript:
        segments = [s async for s in self.segments()]
        task = "translate" if self.request.translate else "transcribe"
        return Transcript(task, self.language, round(self.duration, 3), segments)


async def _next_window(reader: WindowReader) -> tuple[AudioWindow, bytes] | None:
    try:
        return await asyncio.to_thread(reader.next_window)
    except AudioDecodeError as exc:  # damaged past the first window, or longer than allowed
        raise InvalidRequestError(exc.message, param="file", code=exc.code) from None


async def _chat_translate(chat: ChatBackend, text: str) -> str:
    # One lease per window rather than per request: the chat unit is not held while the ASR works.
    settings = UnitSettings(system_prompt=TRANSLATION_SYSTEM_PROMPT, max_token_len=chat.info.max_token_len)
    async with chat.lease(settings) as unit:
        parts = [delta async for delta in unit.generate(text, images=[])]
    return "".join(parts).strip()


async def prepare_transcription(registry: ModelRegistry, request: TranscriptionRequest) -> TranscriptionJob:
    """Pick the model and translation mode, open the audio and decode its first window; 4xx for any
    problem (a file longer than the model's `max_audio_seconds` is refused here when its container says
    so, or as soon as its decoded audio passes the limit)."""
    endpoint = "/v1/audio/translations" if request.translate else "/v1/audio/transcriptions"
    entry = resolve_model(registry, request.model, kinds=("transcription",), endpoint=endpoint)
    if entry.transcription is None:
        raise InvalidRequestError(f"The model '{entry.id}' has no transcription backend.", param="model")
    backend = entry.transcription
    headers = ignored_or_refused(entry, request.ignored_params())
    heard_in = backend.language(request.language)  # also refuses a language the model cannot take
    native, chat = False, None
    if request.translate:
        native, chat = _translation_mode(registry, entry.id, backend, entry.extra)
        if chat is not None:  # say which model's words these are: the ASR model did not translate
            headers[TRANSLATION_HEADER] = str(entry.extra["translation_chat_model"])
    limit = backend.window_seconds
    # Stay 2 s under the model's limit: its front end may pad or trim a little.
    longest = max(1.0, limit - min(2.0, limit * 0.1))
    max_seconds = float(entry.extra.get("max_audio_seconds") or DEFAULT_MAX_AUDIO_SECONDS)
    try:
        # Opening the file and decoding its first window take a moment: keep the event loop free.
        reader, first = await asyncio.to_thread(_open_windows, request.file, longest, max_seconds)
    except AudioDecodeError as exc:
        raise InvalidRequestError(exc.message, param="file", code=exc.code) from None
    language = "english" if request.translate else language_name(heard_in)
    return TranscriptionJob(request, backend, reader, first, language, headers, native, chat)


def _open_windows(
    data: bytes, longest: float, max_seconds: float
) -> tuple[WindowReader, tuple[AudioWindow, bytes] | None]:
    # Imported here, in the worker thread: the first audio request loads numpy and PyAV (~0.25 s),
    # which a chat-only gateway never needs, without stalling the event loop.
    from stackflow_openai.audio import WindowReader

    reader = WindowReader(
        data, max_seconds=longest, search_seconds=min(4.0, longest / 4), max_audio_seconds=max_seconds
    )
    try:
        return reader, reader.next_window()
    except BaseException:
        reader.close()
        raise


def _translation_mode(
    registry: ModelRegistry, model_id: str, backend: TranscriptionBackend, extra: Mapping[str, Any]
) -> tuple[bool, ChatBackend | None]:
    if backend.can_translate:
        return True, None
    chat_id = extra.get("translation_chat_model")
    if not chat_id:
        raise InvalidRequestError(
            f"The model '{model_id}' cannot translate: it has no translation mode and no chat model to "
            "translate with (none on its device, or discovery.auto_translation_model is off and no "
            "translation_chat_model is configured). Use /v1/audio/transcriptions instead.",
            param="model",
            code="translation_not_supported",
        )
    chat_entry = registry.get(chat_id)
    if chat_entry is None or chat_entry.kind != "chat" or chat_entry.chat is None:
        raise ServiceUnavailable(
            f"The chat model '{chat_id}' that translates for '{model_id}' is not available.",
            code="translation_model_unavailable",
        )
    return False, chat_entry.chat


def render_transcript(transcript: Transcript, fmt: str) -> tuple[str | dict[str, Any], str]:
    """(body, media type) of a finished transcript in `fmt`; a dict body is JSON."""
    cues = [Cue(s.start, s.end, s.text) for s in transcript.segments]
    if fmt == "text":
        return transcript.text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(cues), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(cues), "text/vtt; charset=utf-8"
    usage = {"type": "duration", "seconds": transcript.duration}
    if fmt == "verbose_json":
        body: dict[str, Any] = {
            "task": transcript.task,
            "language": transcript.language,
            "duration": transcript.duration,
            "text": transcript.text,
            "segments": [_verbose_segment(s) for s in transcript.segments],
        }
        if transcript.task == "transcribe":
            body["usage"] = usage
        return body, "application/json"
    if transcript.task == "translate":
        return {"text": transcript.text}, "application/json"  # CreateTranslationResponseJson has no usage
    return {"text": transcript.text, "usage": usage}, "application/json"


def _verbose_segment(segment: Segment) -> dict[str, Any]:
    encoded = segment.text.encode("utf-8")
    return {
        "id": segment.id,
        "seek": round(segment.start * 100),  # whisper counts seek in 10 ms mel frames
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        # The device reports neither tokens nor probabilities: empty tokens and neutral values. The
        # compression ratio is computed from the text as whisper does (a repetition detector).
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": round(len(encoded) / len(zlib.compress(encoded)), 4),
        "no_speech_prob": 0.0,
    }


async def stream_transcript(job: TranscriptionJob) -> AsyncIterator[bytes]:
    """SSE body: a transcript.text.delta per segment, then transcript.text.done.

    The first segment is awaited before returning, so a busy device is still an HTTP error.
    """
    # Read from helper tasks: a client that leaves must not cancel the backend's own clean-up (generation.py).
    segments = Detached(job.segments())
    try:
        first = await anext(segments, None)
    except BaseException:
        await segments.aclose()  # e.g. cancelled while waiting: the backend is still running
        raise
    return _events(segments, first)


async def _events(segments: AsyncIterator[Segment], first: Segment | None) -> AsyncIterator[bytes]:
    texts: list[str] = []
    segment = first
    try:
        while segment is not None:
            yield encode_event(
                {"type": "transcript.text.delta", "delta": (" " if texts else "") + segment.text}
            )
            texts.append(segment.text)
            segment = await anext(segments, None)
        yield encode_event({"type": "transcript.text.done", "text": " ".join(texts)})
    except (BackendError, APIError) as exc:
        # Headers are gone: the OpenAI SDKs raise on an event carrying an `error` object.
        yield error_event(exc)
    finally:
        await aclose_quietly(segments)
