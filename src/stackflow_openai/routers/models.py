"""GET /v1/models and GET /v1/models/{id}. Model ids may contain "/" (hence the path converter)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from stackflow_openai.services import ModelService

__all__ = ["router"]

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="List the models")
async def list_models(request: Request) -> dict[str, Any]:
    service: ModelService = request.app.state.model_service
    return service.list()


@router.get("/v1/models/{model_id:path}", summary="Retrieve a model")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    service: ModelService = request.app.state.model_service
    return service.get(model_id)
