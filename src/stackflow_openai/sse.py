"""Server-sent events the way OpenAI streams them, and responses that always close their source.

Framing: ``data: <compact JSON>\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``. Once the 200 and the first
chunk are out, an error can only travel in-band: ``data: {"error": {...}}`` followed by ``[DONE]``
(what OpenAI's SDKs recognise as an error event).

Starlette's StreamingResponse stops iterating when the client goes away but does not close the body
iterator; `ClosingStreamingResponse` does, inside a shielded scope, so the generator chain down to the
backend is closed (the unit paused, the lease released) even though the request was cancelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from stackflow_openai.errors import to_openai_error

__all__ = [
    "DONE_EVENT",
    "ClosingStreamingResponse",
    "EventStreamResponse",
    "aclose_quietly",
    "encode_event",
    "event_stream",
]

log = logging.getLogger(__name__)
DONE_EVENT = b"data: [DONE]\n\n"
_CLOSE_TIMEOUT = 30.0


# Raw UTF-8 (no \\u escapes) and no spaces: what OpenAI sends, and the smallest frames. One encoder for
# every event: json.dumps with options would build a new one per call (once per streamed delta).
_EVENT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + _EVENT_JSON.encode(payload).encode() + b"\n\n"


async def aclose_quietly(iterator: object) -> None:
    """Close an async generator, shielded from the cancellation of a request whose client left."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await aclose()
        except Exception:
            log.warning("closing a stream failed", exc_info=True)


async def event_stream(
    first: Mapping[str, Any], rest: AsyncIterator[Mapping[str, Any]]
) -> AsyncIterator[bytes]:
    """SSE bytes for a chunk stream whose first chunk was already produced (so errors before it could
    still become a normal HTTP error response)."""
    try:
        yield encode_event(first)
        async for chunk in rest:
            yield encode_event(chunk)
    except Exception as exc:  # the status line is gone: report in-band, as OpenAI does
        status, body, _headers = to_openai_error(exc)
        log.warning("stream ended by an error (%d): %s", status, body["error"]["message"])
        yield encode_event(body)
    finally:
        await aclose_quietly(rest)
    yield DONE_EVENT


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body iterator however the stream ends."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await aclose_quietly(self.body_iterator)


class EventStreamResponse(ClosingStreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        # no-cache: never stored; X-Accel-Buffering: nginx in front must not hold back the tokens.
        all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        super().__init__(content, headers=all_headers, media_type=self.media_type)
