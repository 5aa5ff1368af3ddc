"""The HTTP layer's exception tree and its one translation into OpenAI's error body.

Every failure a client sees has the shape ``{"error": {"message", "type", "param", "code"}}`` with
``code`` a string. Services raise `APIError` subclasses; backends raise `BackendError` subclasses
(backends/base.py); `to_openai_error` maps both (and anything unexpected) exactly once.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stackflow_openai.backends.base import (
    BackendBusy,
    BackendError,
    BackendInvalidRequest,
    BackendUnavailable,
)

__all__ = [
    "APIError",
    "ContextLengthExceeded",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NotFoundError",
    "ServerShuttingDown",
    "ServiceUnavailable",
    "UnsupportedParameter",
    "error_body",
    "error_json",
    "format_param",
    "to_openai_error",
    "validation_error",
]

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with a known HTTP status and OpenAI error fields."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})


class InvalidRequestError(APIError):
    pass


class UnsupportedParameter(InvalidRequestError):
    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequestError):
    code = "context_length_exceeded"


class NotFoundError(APIError):
    # OpenAI itself answers unknown models and URLs with type invalid_request_error and status 404.
    status_code = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model_id: str, available: Iterable[str]) -> None:
        names = sorted(available)
        listing = ", ".join(names) if names else "(none)"
        super().__init__(f"The model '{model_id}' does not exist. Available models: {listing}", param="model")
        self.model_id = model_id
        self.available = names


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ServerShuttingDown(ServiceUnavailable):
    """The shutdown deadline (shutdown.py) ended the request: a 503, or in-band once a stream has begun."""

    code = "server_shutting_down"


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_json(body: Mapping[str, Any]) -> bytes:
    """An error body as compact, ASCII-escaped JSON. Error messages echo client text (a model name, a URL,
    a field value): escaped, a lone surrogate or anything else UTF-8 cannot carry still makes a valid
    body, never an encoder failure (a 500, or a stream broken halfway)."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def _retry_after(seconds: float) -> str:
    # Retry-After takes whole seconds; never 0, which clients would read as "retry in a busy loop".
    return str(max(1, math.ceil(seconds)))


def to_openai_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; unexpected ones are logged and become a bare 500."""
    if isinstance(exc, APIError):
        return exc.status_code, error_body(exc.message, exc.error_type, exc.param, exc.code), exc.headers
    if isinstance(exc, BackendBusy):
        body = error_body(exc.message, "server_error", None, exc.code)
        return 503, body, {"Retry-After": _retry_after(exc.retry_after)}
    if isinstance(exc, BackendUnavailable):
        return 503, error_body(exc.message, "server_error", None, exc.code), {}
    if isinstance(exc, BackendInvalidRequest):
        return 400, error_body(exc.message, "invalid_request_error", exc.param, exc.code), {}
    if isinstance(exc, BackendError):
        log.error("backend error: %s", exc.message)
        return 502, error_body(exc.message, "server_error", None, exc.code), {}
    log.error("unexpected error while serving a request", exc_info=exc)
    body = error_body(
        "The server had an error while processing your request.", "server_error", None, "internal_error"
    )
    return 500, body, {}


def _is_union_label(segment: str) -> bool:
    """pydantic puts union branch names (``str``, ``list[str]``, ``ContentPart``) into error locations."""
    return (
        "[" in segment
        or segment in {"str", "int", "float", "bool", "list", "dict", "none"}
        or segment[:1].isupper()
        or segment.startswith(("function-", "lax-", "json-", "tagged-union"))
    )


def format_param(loc: Sequence[int | str]) -> str | None:
    """('messages', 0, 'content', 1, 'image_url') → 'messages[0].content[1].image_url'."""
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif segment in ("body", "query", "path") and not out:
            continue  # FastAPI's location prefix is not part of the parameter name
        elif not _is_union_label(segment):
            out += f".{segment}" if out else segment
    return out or None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """The most specific pydantic/FastAPI error as one OpenAI 400 naming the field."""
    if not errors:
        return InvalidRequestError("Invalid request body.")
    # Prefer the deepest location; among equals, a constraint failure over a union branch's type mismatch
    # ("at most 4 items" says more than "not a valid string" for a list of five stop strings).
    best = max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))
    param = format_param(best.get("loc", ()))
    message = str(best.get("msg", "Invalid value"))
    text = f"Invalid value for '{param}': {message}" if param else message
    return InvalidRequestError(text, param=param, code="invalid_value")
