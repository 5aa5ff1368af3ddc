"""Request body limits per route, enforced before a byte reaches a parser.

JSON routes take `server.max_body_bytes`; audio uploads OpenAI's 25 MB (plus room for the multipart
framing). A declared Content-Length over the limit is refused at once; a chunked body is counted as
it arrives and the read fails with the same 413 as soon as it passes the limit (so nothing large is
spooled to disk by the multipart parser first).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Message, Receive, Scope

from stackflow_openai.errors import APIError
from stackflow_openai.services.transcription import MAX_UPLOAD_BYTES, file_too_large

__all__ = ["AUDIO_UPLOAD_LIMIT", "BodyLimit", "RequestTooLarge"]

AUDIO_UPLOAD_LIMIT = MAX_UPLOAD_BYTES + 64 * 1024
_AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")


class RequestTooLarge(APIError):
    status_code = 413
    code = "request_too_large"


class BodyLimit:
    """The body limits of the operations middleware (app.py): `refusal` before the request is served,
    `counted` around its `receive`."""

    def __init__(self, *, default: int, per_path: Mapping[str, int] | None = None) -> None:
        self.default = default
        self.per_path = (
            dict(per_path) if per_path is not None else dict.fromkeys(_AUDIO_ROUTES, AUDIO_UPLOAD_LIMIT)
        )

    def _limit(self, scope: Scope) -> tuple[int, bool]:
        path = scope.get("path", "").rstrip("/")
        return self.per_path.get(path, self.default), path in _AUDIO_ROUTES

    def refusal(self, scope: Scope) -> APIError | None:
        """The 413 for a declared Content-Length over the limit, or None."""
        declared = _content_length(scope)
        if declared is None:
            return None
        limit, audio = self._limit(scope)
        if declared <= limit:
            return None
        return _too_large(limit, declared, audio)

    def counted(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` that raises the 413 error as soon as the body read so far passes the limit."""
        limit, audio = self._limit(scope)
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit, None, audio)
            return message

        return counted_receive


def _too_large(limit: int, size: int | None, audio: bool) -> APIError:
    if audio:  # the audio routes' own wording and code (file_too_large)
        return file_too_large(size, what="request body")
    return RequestTooLarge(f"The request body is larger than {limit} bytes.")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
