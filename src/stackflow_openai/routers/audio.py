"""HTTP for /v1/audio/*: parse the request, hand it to the audio services, pick the response type."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.services.speech import list_voices, parse_speech_request, start_speech
from stackflow_openai.services.transcription import (
    MAX_UPLOAD_BYTES,
    file_too_large,
    parse_transcription_form,
    prepare_transcription,
    render_transcript,
    stream_transcript,
)
from stackflow_openai.sse import ClosingStreamingResponse, EventStreamResponse

from .common import client_gone, read_json_body, respond_unless_gone

__all__ = ["router"]

router = APIRouter(tags=["audio"])

_FORM_SLACK = 64 * 1024  # room for the multipart boundaries and text fields around a 25 MB file


@router.post("/v1/audio/speech")
async def create_speech(request: Request) -> Response:
    body = await read_json_body(request)
    speech = await start_speech(request.app.state.registry, parse_speech_request(body))
    if speech.media_type == "text/event-stream":
        return EventStreamResponse(speech.body, headers=speech.headers)
    # Closing the body on disconnect closes the backend's generator: the TTS unit is freed at once.
    return ClosingStreamingResponse(speech.body, media_type=speech.media_type, headers=speech.headers)


@router.get("/v1/audio/voices")
async def get_voices(request: Request, model: str | None = None) -> dict[str, Any]:
    return list_voices(request.app.state.registry, model)


@router.post("/v1/audio/transcriptions")
async def create_transcription(request: Request) -> Response:
    return await _transcribe(request, translate=False)


@router.post("/v1/audio/translations")
async def create_translation(request: Request) -> Response:
    return await _transcribe(request, translate=True)


async def _transcribe(request: Request, *, translate: bool) -> Response:
    fields, file = await _read_form(request)
    parsed = parse_transcription_form(fields, file, translate=translate)

    async def respond() -> Response:
        # A client that leaves cancels this: decoding stops and the unit of the window being
        # transcribed is returned (TranscriptionJob.segments).
        job = await prepare_transcription(request.app.state.registry, parsed)
        if parsed.stream:
            events = await stream_transcript(job)
            return EventStreamResponse(events, headers=job.headers)
        body, media_type = render_transcript(await job.run(), parsed.response_format)
        if isinstance(body, dict):
            return JSONResponse(body, headers=job.headers)
        return Response(body, media_type=media_type, headers=job.headers)

    return await respond_unless_gone(request, respond)


async def _read_form(request: Request) -> tuple[dict[str, list[str]], bytes | None]:
    """Text fields by name, and the `file` part's bytes; refuses oversized uploads early."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_UPLOAD_BYTES + _FORM_SLACK:
        raise file_too_large(int(length), what="request body")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("The request must be multipart/form-data.", code="invalid_content_type")
    try:
        form = await request.form(max_files=1, max_fields=100)
    except ClientDisconnect:
        raise client_gone() from None
    except HTTPException as exc:
        raise InvalidRequestError(
            f"Malformed multipart body: {exc.detail}", code="invalid_multipart"
        ) from None
    fields: dict[str, list[str]] = {}
    file: bytes | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "file":
                    file = await value.read(MAX_UPLOAD_BYTES + 1)
                    if len(file) > MAX_UPLOAD_BYTES:
                        raise file_too_large(value.size)
                else:
                    fields.setdefault(key, [])  # an unexpected file part: reported as ignored
            else:
                fields.setdefault(key, []).append(value)
    finally:
        await form.close()
    return fields, file
