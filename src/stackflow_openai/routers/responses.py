"""/v1/responses: create, retrieve, delete, list input items. HTTP only; the work is in
services/responses.py. A response belongs to the API key that created it (only its hash is kept)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from stackflow_openai.services import JsonResult, ServiceResult, StreamResult
from stackflow_openai.services.common import Chunk
from stackflow_openai.services.responses import ResponsesService
from stackflow_openai.sse import EventStreamResponse, aclose_quietly
from stackflow_openai.store import key_owner

from .common import serve_json_request, to_response

__all__ = ["router"]

router = APIRouter(tags=["responses"])


def _service(request: Request) -> ResponsesService:
    return request.app.state.responses_service  # type: ignore[no-any-return]


def _owner(request: Request) -> str:
    """The hashed key of the caller when keys are configured (the middleware has checked it), else ""."""
    if not request.app.state.settings.api_keys:
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return key_owner(token.strip() if scheme.lower() == "bearer" else None)


async def _frames(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    # The service frames every event itself (`event:` lines, no [DONE]: a Responses stream ends with
    # its response.completed / incomplete / failed event).
    try:
        assert isinstance(first, bytes)
        yield first
        async for chunk in rest:
            assert isinstance(chunk, bytes)
            yield chunk
    finally:
        await aclose_quietly(rest)


async def _respond(result: ServiceResult) -> Response:
    if isinstance(result, StreamResult):
        first = await anext(result.chunks)  # before the 200: errors until the device starts are statuses
        return EventStreamResponse(_frames(first, result.chunks), headers=result.headers)
    return await to_response(result)


@router.post("/v1/responses", summary="Create a model response (JSON or SSE stream)")
async def create_response(request: Request) -> Response:
    create = partial(request.app.state.responses_observed.create, owner=_owner(request))
    return await serve_json_request(request, create, _respond)


@router.get("/v1/responses/{response_id}", summary="Retrieve a stored response (or replay it as a stream)")
async def retrieve_response(
    response_id: str, request: Request, stream: bool = False, starting_after: int | None = None
) -> Response:
    service, owner = _service(request), _owner(request)
    if stream:
        frames = await service.replay(response_id, starting_after, owner=owner)
        return EventStreamResponse(_iterate(frames))
    return await to_response(JsonResult(await service.retrieve(response_id, owner=owner)))


async def _iterate(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


@router.post("/v1/responses/{response_id}/cancel", summary="Cancel a background response")
async def cancel_response(response_id: str, request: Request) -> dict[str, Any]:
    return await _service(request).cancel(response_id, owner=_owner(request))


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    return await _service(request).delete(response_id, owner=_owner(request))


@router.get("/v1/responses/{response_id}/input_items", summary="List a stored response's input items")
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    before: str | None = None,
    limit: int | None = None,
    order: str | None = None,
    include: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    # Declared for the OpenAPI document; the service validates them (OpenAI-shaped 400s).
    given = {"after": after, "before": before, "limit": limit, "order": order, "include": include}
    query = {name: value for name, value in given.items() if value is not None}
    return await _service(request).input_items(response_id, query, owner=_owner(request))
