"""POST /v1/completions: HTTP only; the work is in services/completions.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from stackflow_openai.services import CompletionService

from .common import serve_json_request

__all__ = ["router"]

router = APIRouter(tags=["completions"])


@router.post("/v1/completions", summary="Create a text completion (JSON or SSE stream)")
async def create_completion(request: Request) -> Response:
    service: CompletionService = request.app.state.completion_service
    return await serve_json_request(request, service.create)
