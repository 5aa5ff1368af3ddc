"""The OpenAPI document: FastAPI's, plus the request bodies and error responses the routes really have.

The JSON routes read and validate their bodies themselves (unknown parameters must be reported as
ignored, not refused, and the hot routes skip FastAPI's request parsing: docs/performance.md), so FastAPI
cannot see their request models. They are added here, once, when the document is first asked for: the
same pydantic models the services validate with (protocol/, services/speech.py), the multipart form of
the transcription routes, and the OpenAI error object for every error status a route can answer. Nothing
here runs per request.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from stackflow_openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Model,
    ModelList,
)
from stackflow_openai.services.speech import SpeechRequest
from stackflow_openai.services.transcription import TRANSCRIPTION_FORMATS

__all__ = ["install_openapi"]

_REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    SpeechRequest,
    ChatCompletion,
    Completion,
    Model,
    ModelList,
    ErrorResponse,
)
# path → (request model, response model for JSON 200s)
_JSON_BODIES: dict[str, tuple[type[BaseModel], type[BaseModel] | None]] = {
    "/v1/chat/completions": (ChatCompletionRequest, ChatCompletion),
    "/v1/completions": (CompletionRequest, Completion),
    "/v1/audio/speech": (SpeechRequest, None),
}
_FORM_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
_ERRORS = {
    "400": "Invalid request: the error names the parameter",
    "401": "Missing or wrong API key (when keys are configured)",
    "404": "Unknown model or URL",
    "413": "Request body too large",
    "503": "No unit free in time, queue full, device unreachable, or shutting down (see Retry-After)",
}


def _transcription_form(translate: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "audio: wav, mp3, flac, ogg, webm, m4a",
        },
        "model": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(TRANSCRIPTION_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    }
    if not translate:
        properties["language"] = {"type": "string", "description": "ISO-639-1 code, e.g. en"}
        properties["stream"] = {"type": "boolean", "default": False}
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": ["word", "segment"]},
        }
    return {"type": "object", "required": ["file", "model"], "properties": properties}


def _error_responses(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's validation shape: never sent, errors are OpenAI's 400s
    error = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}
    for status, description in _ERRORS.items():
        responses.setdefault(status, {"description": description, "content": error})
    responses["503"]["headers"] = {
        "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
    }


def _describe(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    _, definitions = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(definitions.get("$defs", {}))
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in _JSON_BODIES:
                request, response = _JSON_BODIES[path]
                ref = {"$ref": _REF.format(model=request.__name__)}
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref}},
                }
                if response is not None:
                    ok = operation.setdefault("responses", {}).setdefault("200", {"description": "OK"})
                    ok["content"] = {
                        "application/json": {"schema": {"$ref": _REF.format(model=response.__name__)}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    }
            elif path in _FORM_PATHS:
                form = _transcription_form(translate=path.endswith("translations"))
                operation["requestBody"] = {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": form}},
                }
            if path.startswith("/v1/"):
                _error_responses(operation)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built on the first request for it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _describe(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
