"""POST /v1/chat/completions: HTTP only; the work is in services/chat.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from stackflow_openai.services import ChatService

from .common import serve_json_request

__all__ = ["router"]

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", summary="Create a chat completion (JSON or SSE stream)")
async def create_chat_completion(request: Request) -> Response:
    service: ChatService = request.app.state.chat_service
    return await serve_json_request(request, service.create)
