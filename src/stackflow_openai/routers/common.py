"""What every OpenAI router needs: a bounded JSON body, and a service result as an HTTP response."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stackflow_openai.errors import APIError, InvalidRequestError
from stackflow_openai.services import JsonResult, ProxyResult, ServiceResult, StreamResult
from stackflow_openai.sse import ClosingStreamingResponse, EventStreamResponse, event_stream

__all__ = ["read_json_body", "serve_json_request", "to_response"]

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody receives it, but logs show what happened


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
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return body


async def to_response(result: ServiceResult) -> Response:
    if isinstance(result, JsonResult):
        return JSONResponse(result.body, headers=result.headers)
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
    request: Request, create: Callable[[Mapping[str, Any]], Awaitable[ServiceResult]]
) -> Response:
    """Read the body, run the service and build the response; if the client disconnects before the
    response is ready (waiting for a unit, or a whole non-stream generation), cancel the work so the
    device stops generating for nobody. Streams watch for disconnects themselves once they start."""
    body = await read_json_body(request)

    async def produce() -> Response:
        return await to_response(await create(body))

    work = asyncio.ensure_future(produce())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})
    if work.cancelled():
        log.info(
            "%s %s: the client disconnected before the response was ready", request.method, request.url.path
        )
        return Response(status_code=CLIENT_CLOSED)
    return work.result()
