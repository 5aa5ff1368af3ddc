"""Server-sent events the way OpenAI streams them, and responses that always close their source.

Framing: ``data: <compact JSON>\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``. Once the 200 and the first
chunk are out, an error can only travel in-band: ``data: {"error": {...}}`` followed by ``[DONE]``
(what OpenAI's SDKs recognise as an error event).

Starlette's StreamingResponse stops iterating when the client goes away but does not close the body
iterator; `ClosingStreamingResponse` and `EventStreamResponse` do, inside a shielded scope, so the
generator chain down to the backend is closed (the unit paused, the lease released) even though the
request was cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from json.encoder import encode_basestring
from typing import Any

import anyio
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from stackflow_openai.errors import ServerShuttingDown, error_json, to_openai_error
from stackflow_openai.shutdown import SCOPE_KEY, ShutdownDeadline

__all__ = [
    "DONE_EVENT",
    "ClosingStreamingResponse",
    "EventStreamResponse",
    "aclose_quietly",
    "encode_error_event",
    "encode_event",
    "error_event",
    "event_stream",
    "text_event_encoder",
]

log = logging.getLogger(__name__)
DONE_EVENT = b"data: [DONE]\n\n"
_CLOSE_TIMEOUT = 30.0


# Raw UTF-8 (no \\u escapes) and no spaces: what OpenAI sends, and the smallest frames. One encoder for
# every event: json.dumps with options would build a new one per call (once per streamed delta).
_EVENT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + _EVENT_JSON.encode(payload).encode() + b"\n\n"


def encode_error_event(body: Mapping[str, Any]) -> bytes:
    """An error event, ASCII-escaped (`error_json`): its message may echo client text."""
    return b"data: " + error_json(body) + b"\n\n"


def error_event(exc: BaseException) -> bytes:
    """The in-band error event for `exc` (its OpenAI error body): how a stream whose 200 is out fails."""
    return encode_error_event(to_openai_error(exc)[1])


def text_event_encoder(chunk: Mapping[str, Any], placeholder: str) -> Callable[[str], bytes]:
    """`encode_event` for chunks that differ from `chunk` only in the one string field now holding
    `placeholder`: the event is framed once, and each text is only escaped into it (a C call) instead of
    running the JSON encoder over the whole chunk for every streamed delta. The bytes are the same."""
    marker = _EVENT_JSON.encode(placeholder).encode()
    head, found, tail = encode_event(chunk).partition(marker)
    if not found or marker in tail:
        raise ValueError("the placeholder must occur exactly once, as a whole string")

    def encode(text: str) -> bytes:
        return head + encode_basestring(text).encode() + tail

    return encode


async def aclose_quietly(iterator: object) -> None:
    """Close an async generator, shielded from the cancellation of a request whose client left."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None or getattr(iterator, "ag_frame", True) is None:
        return  # nothing to close, or a generator that already ran to its end
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await aclose()
        except Exception:
            log.warning("closing a stream failed", exc_info=True)


async def event_stream(
    first: Mapping[str, Any] | bytes, rest: AsyncIterator[Mapping[str, Any] | bytes]
) -> AsyncIterator[bytes]:
    """SSE bytes for a chunk stream whose first chunk was already produced (so errors before it could
    still become a normal HTTP error response). Chunks given as bytes are events already framed."""
    try:
        yield first if isinstance(first, bytes) else encode_event(first)
        async for chunk in rest:
            yield chunk if type(chunk) is bytes else encode_event(chunk)  # type: ignore[arg-type]
    except Exception as exc:  # the status line is gone: report in-band, as OpenAI does
        status, body, _headers = to_openai_error(exc)
        log.warning("stream ended by an error (%d): %s", status, body["error"]["message"])
        yield encode_error_event(body)
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


class EventStreamResponse(Response):
    """An SSE response (bytes already framed as events) that closes its body iterator however the
    stream ends, and stops it when the client goes away.

    The stream runs in the request's own task, and a watcher task cancels that task (one plain asyncio
    cancellation, which the services' clean-up survives) when the disconnect comes. Starlette's
    StreamingResponse runs the stream in an anyio task group instead (ASGI servers before spec 2.4):
    a second task, and cancel scopes whose set-up and delivery were a tenth of a short stream's CPU
    (docs/performance.md)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        # no-cache: never stored; X-Accel-Buffering: nginx in front must not hold back the tokens.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        streaming = True  # the watcher may stop the stream only while events are still coming
        gone = False

        def on_disconnect(watcher: asyncio.Future[None]) -> None:
            nonlocal gone
            if watcher.cancelled():
                return
            watcher.exception()  # retrieved: a failed receive counts as a client gone too
            if streaming:
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(on_disconnect)
        deadline: ShutdownDeadline | None = scope.get(SCOPE_KEY)
        if deadline is not None:
            deadline.add_stream(task)  # cancelled when the shutdown grace period is over
        iterator = self.body_iterator
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for chunk in iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            streaming = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            ending = deadline is not None and deadline.expired and not gone
            if not (gone or ending) or task.uncancel() > 0:
                raise  # not (only) ours
            if ending:
                streaming = False
                await aclose_quietly(iterator)  # the unit is paused (or exited) before the client hears
                await _end_for_shutdown(send)
            else:
                log.debug("the client left an event stream")
        except OSError:  # how ASGI servers of spec 2.4 and later report a gone client
            log.debug("the client left an event stream")
        finally:
            streaming = False
            watcher.cancel()
            if deadline is not None:
                deadline.discard_stream(task)
            await aclose_quietly(iterator)


async def _end_for_shutdown(send: Send) -> None:
    """The in-band end of a stream cut by the shutdown deadline: an error event, then [DONE]."""
    event = error_event(ServerShuttingDown("The server is shutting down; the response was cut short."))
    with anyio.move_on_after(2.0, shield=True):  # a client that does not read must not hold the shutdown
        try:
            event += DONE_EVENT
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
