"""WebSocket for /v1/realtime?model=ID: the handshake (API key, model) and the socket's read loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from stackflow_openai.errors import APIError, error_body, to_openai_error
from stackflow_openai.realtime import RealtimeSession, SessionConfig, VoiceServices, resolve_pipeline

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    state = websocket.app.state
    if not state.auth.allows_websocket(websocket.scope):
        body = error_body("Incorrect or missing API key.", "invalid_request_error", None, "invalid_api_key")
        await _deny(websocket, 401, body)
        return
    settings = state.settings
    try:
        pipeline = resolve_pipeline(
            state.registry,
            websocket.query_params.get("model"),
            settings.voice_pipelines,
            device_chain=settings.realtime_device_chain,
        )
        services = VoiceServices(state.registry, state.chat_core.plan, pipeline)
        config = SessionConfig(model=websocket.query_params.get("model", ""), voice=pipeline.voice or "alloy")
        if pipeline.speech_model is None:
            config.output_modalities = ["text"]
        services.check(None)
    except APIError as exc:
        status, body, _ = to_openai_error(exc)
        await _deny(websocket, status, body)
        return
    # Browsers offer "realtime" beside the key protocol; the server must pick one it was offered.
    protocol = "realtime" if "realtime" in websocket.scope.get("subprotocols", ()) else None
    await websocket.accept(subprotocol=protocol)
    session = RealtimeSession(websocket.send_json, services, config)
    # WebSockets bypass the HTTP access log (ops/reqlog.py): a session gets its own two lines.
    log.info("realtime session %s opened: %s", session.id, pipeline)
    started = time.monotonic()
    try:
        await session.start()
        await _read(websocket, session, settings.realtime_idle_timeout)
    except WebSocketDisconnect:
        pass
    finally:
        await session.close()  # units paused and returned before the handler ends
    log.info("realtime session %s closed after %.1f s", session.id, time.monotonic() - started)


async def _read(websocket: WebSocket, session: RealtimeSession, idle_timeout: float) -> None:
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), timeout=idle_timeout)
        except TimeoutError:
            if session.busy:
                continue
            await session.error("The session was idle too long and is closed.", code="session_idle_timeout",
                                param=None, event_id=None)  # fmt: skip
            await websocket.close(code=1000)
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None and message.get("bytes") is not None:
            await session.error("Send events as text frames of JSON.", code="invalid_json", param=None,
                                event_id=None)  # fmt: skip
            continue
        await session.handle(text or "")


async def _deny(websocket: WebSocket, status: int, body: dict[str, object]) -> None:
    """An HTTP error instead of the upgrade where the server supports it (uvicorn does), else a close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    else:
        await websocket.close(code=1008, reason=json.dumps(body)[:120])
