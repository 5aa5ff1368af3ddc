"""GET /health (the process answers), GET /ready (a device is up with models), GET /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from stackflow_openai import __version__
from stackflow_openai.ops.metrics import CONTENT_TYPE

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process is running")
async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", summary="Readiness: devices reachable and models loaded (503 when none is)")
async def ready(request: Request) -> Response:
    registry = request.app.state.registry
    models = sorted(e.id for e in registry.list())
    devices = registry.device_status() if hasattr(registry, "device_status") else []
    is_ready = registry.ready() if hasattr(registry, "ready") else bool(models)
    body = {"status": "ready" if is_ready else "not ready", "devices": devices, "models": models}
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
