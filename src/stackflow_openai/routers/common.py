"""What every OpenAI router needs: a bounded JSON body, and a service result as an HTTP response."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stackflow_openai.errors import APIError, InvalidRequestError
from stackflow_openai.services import JsonResult, ProxyResult, ServiceResult, StreamResult
from stackflow_openai.sse import ClosingStreamingResponse, EventStreamResponse, event_stream

__all__ = ["client_gone", "read_json_body", "respond_unless_gone", "serve_json_request", "to_response"]

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody receives it, but logs show what happened
# Starlette's JSONResponse calls json.dumps with options, which builds a new encoder for every response.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class _JsonResponse(Response):
    """The JSON response of a service: Starlette's JSONResponse bytes and headers, built directly (its
    json.dumps with options builds an encoder per response, and its header handling is generic)."""

    media_type = "application/json"

    def __init__(self, content: Any, headers: Mapping[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body = _JSON.encode(content).encode("utf-8")
        # The services' headers (X-Ignored-Params) never name the two set here.
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


def client_gone() -> APIError:
    """The client closed the connection before its request was complete: answered (to nobody) as an
    ordinary request error, so it is neither logged as a server failure nor counted as a 500."""
    return APIError(
        "The client closed the connection before the request body was complete.",
        code="client_closed_request",
        status_code=CLIENT_CLOSED,
    )


async def read_json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, read with the configured byte cap (413 beyond it)."""
    limit: int = request.app.state.settings.max_body_bytes
    too_large = APIError(
        f"The request body is larger than {limit} bytes.", code="request_too_large", status_code=413
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise too_large
    except ClientDisconnect:
        raise client_gone() from None
    try:
        # json.loads(raw, parse_constant=...) would build a decoder per call: the same steps, shared.
        body = _BODY_JSON.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    # Only a \\uD800-\\uDFFF escape can smuggle in a lone surrogate (raw UTF-8 cannot encode one):
    # look for the escape in the bytes first, so ordinary bodies pay one byte search.
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate_at(body)
        if where is not None:
            raise InvalidRequestError(
                f"The request body contains an unpaired UTF-16 surrogate (a \\uD800-\\uDFFF escape "
                f"without its pair) in '{where}': text must be valid Unicode.",
                param=where,
                code="invalid_json",
            )
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python would accept them, and could not send them back.
    raise ValueError(f"{name} is not a valid JSON value")


_BODY_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _lone_surrogate_at(body: Any) -> str | None:
    """The location (`messages[0].content`) of the first key or string holding a lone surrogate."""
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:  # iterative: the JSON parser already allowed deeper nesting than Python recursion
        where, value = pending.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return where or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else str(key)
                if _LONE_SURROGATE.search(key):
                    return where or "body"
                pending.append((name, item))
        elif isinstance(value, list):
            pending.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


async def to_response(result: ServiceResult) -> Response:
    if isinstance(result, JsonResult):
        return _JsonResponse(result.body, headers=result.headers)
    if isinstance(result, StreamResult):
        # Produce the first chunk before the 200 goes out: a busy pool, an unknown image or a device
        # that refuses the input still get a proper HTTP error status instead of an in-band one.
        first = await anext(result.chunks)
        return EventStreamResponse(event_stream(first, result.chunks), headers=result.headers)
    assert isinstance(result, ProxyResult)
    upstream = result.response
    media_type = upstream.headers.get("content-type", "application/json")
    return ClosingStreamingResponse(
        upstream.body, status_code=upstream.status_code, headers=dict(upstream.headers), media_type=media_type
    )


async def _disconnected(request: Request) -> None:
    # The body was read in full, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def serve_json_request(
    request: Request,
    create: Callable[[Mapping[str, Any]], Awaitable[ServiceResult]],
    build: Callable[[ServiceResult], Awaitable[Response]] = to_response,
) -> Response:
    """Read the body, run the service and `build` the response, cancelled if the client leaves first
    (`respond_unless_gone`). Streams watch for disconnects themselves once they start."""
    body = await read_json_body(request)

    async def respond() -> Response:
        return await build(await create(body))

    return await respond_unless_gone(request, respond)


async def respond_unless_gone(request: Request, respond: Callable[[], Awaitable[Response]]) -> Response:
    """`respond()`, whose body has been read in full; if the client disconnects before the response is
    ready (waiting for a unit, a whole non-stream generation or transcription), cancel the work so the
    device stops working for nobody.

    The work runs in this task, and a watcher task cancels it (one plain cancellation, which the
    services' clean-up survives) when the disconnect comes: a second task for the work cost an
    event-loop round trip per request (docs/performance.md)."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_disconnected(request))
    watching = True
    gone = False

    def on_disconnect(done: asyncio.Future[None]) -> None:
        nonlocal gone
        if done.cancelled():
            return
        done.exception()  # retrieved: a failed receive counts as a client gone too
        if watching:  # not once the work is over (this callback may run an iteration later)
            gone = True
            task.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        return await respond()
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:
            raise  # not (only) ours: e.g. the server shutting down
        log.info(
            "%s %s: the client disconnected before the response was ready", request.method, request.url.path
        )
        return Response(status_code=CLIENT_CLOSED)
    finally:
        watching = False
        watcher.cancel()
