"""The FastAPI application: routers, OpenAI-shaped errors everywhere, state on ``app.state``.

    app = create_app(registry, HttpSettings(...))

``app.state`` holds: registry, settings, tokenizers, images (ImageLoader), metrics, chat_service,
completion_service, model_service. The lifespan starts the registry, loads the tokenizers its models
need (in a thread), and on shutdown closes the image client and stops the registry.

Middlewares, outermost first: CORS (only when origins are configured), request id + access log +
metrics, API keys, body limits, and the last-resort 500. Routes: the OpenAI ones under /v1, and
/health, /ready, /metrics (routers/health.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stackflow_openai import __version__
from stackflow_openai.backends.base import BackendError
from stackflow_openai.errors import APIError, error_body, to_openai_error, validation_error
from stackflow_openai.ops.auth import ApiKeyAuth
from stackflow_openai.ops.limits import BodyLimit
from stackflow_openai.ops.metrics import Metrics
from stackflow_openai.ops.observe import ObservedService
from stackflow_openai.ops.reqlog import REQUEST_ID_HEADER, ObserveRequests
from stackflow_openai.routers import audio_router, chat_router, completions_router, models_router
from stackflow_openai.routers.health import router as health_router
from stackflow_openai.services import (
    ChatService,
    CompletionService,
    ImageLoader,
    ImagePolicy,
    ModelRegistry,
    ModelService,
)
from stackflow_openai.services.images import Resolver
from stackflow_openai.tokens import Tokenizers

__all__ = ["HttpSettings", "ModelRegistry", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class HttpSettings:
    image_max_bytes: int = 10 * 1024 * 1024
    image_fetch_timeout: float = 10.0
    image_allow_private: bool = False  # SSRF guard: allow image URLs on loopback/private/link-local hosts
    image_allowed_hosts: tuple[str, ...] = ()  # host or host:port strings fetched whatever they resolve to
    max_body_bytes: int = 32 * 1024 * 1024
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    protect_health: bool = False  # keys required on /health and /ready too
    protect_metrics: bool = False  # keys required on /metrics too
    cors_origins: tuple[str, ...] = ()  # empty: CORS off

    def __repr__(self) -> str:  # never show the keys
        return f"HttpSettings(api_keys={len(self.api_keys)} configured, cors_origins={self.cors_origins!r})"


def _error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = to_openai_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(_request: Request, exc: Exception) -> Response:
    return _error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error_response(validation_error(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        body = error_body(f"Invalid URL ({where})", "invalid_request_error", None, "unknown_url")
    elif exc.status_code == 405:
        body = error_body(
            f"Method not allowed ({where})", "invalid_request_error", None, "method_not_allowed"
        )
    else:
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        body = error_body(str(exc.detail), kind, None, f"http_{exc.status_code}")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class _UnexpectedErrors:
    """Last resort: an exception no handler knows becomes a logged 500 in OpenAI's shape (never a
    traceback body). Pure ASGI, so streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half a response is out: only closing the connection is left
            await _error_response(exc)(scope, receive, send)


def create_app(
    registry: ModelRegistry,
    settings: HttpSettings | None = None,
    *,
    tokenizers: Tokenizers | None = None,
    image_resolver: Resolver | None = None,
) -> FastAPI:
    """`tokenizers`: share one Tokenizers with the backends (and between test apps); `image_resolver`:
    replace DNS resolution for image URLs (tests)."""
    settings = settings or HttpSettings()
    tokenizers = tokenizers or Tokenizers()
    policy = ImagePolicy(
        max_bytes=settings.image_max_bytes,
        fetch_timeout=settings.image_fetch_timeout,
        allow_private=settings.image_allow_private,
        allowed_hosts=tuple(settings.image_allowed_hosts),
    )
    images = ImageLoader(policy, ImageLoader.new_client(), image_resolver)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            names = {e.chat.info.tokenizer for e in registry.list() if e.chat is not None}
            await anyio.to_thread.run_sync(tokenizers.warm, names)
            yield
        finally:
            await images.aclose()
            await registry.stop()

    app = FastAPI(title="stackflow-openai", version=__version__, lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.tokenizers = tokenizers
    app.state.images = images
    metrics = Metrics(lambda: getattr(registry, "devices", ()))
    attach = getattr(registry, "attach", None)
    if attach is not None:
        attach(metrics)  # pool timings and device errors
    app.state.metrics = metrics
    app.state.chat_service = ObservedService(ChatService(registry, tokenizers, images), registry, metrics)
    app.state.completion_service = ObservedService(CompletionService(registry, tokenizers), registry, metrics)
    app.state.model_service = ModelService(registry)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(BackendError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _add_middlewares(app, settings, metrics)

    app.include_router(chat_router)
    app.include_router(completions_router)
    app.include_router(models_router)
    app.include_router(audio_router)  # written by the audio helper (routers/audio.py)
    app.include_router(health_router)
    return app


def _add_middlewares(app: FastAPI, settings: HttpSettings, metrics: Metrics) -> None:
    # add_middleware puts each new one outside the previous ones: innermost first.
    app.add_middleware(_UnexpectedErrors)
    app.add_middleware(BodyLimit, default=settings.max_body_bytes)
    app.add_middleware(
        ApiKeyAuth,
        keys=settings.api_keys,
        protect_health=settings.protect_health,
        protect_metrics=settings.protect_metrics,
    )
    app.add_middleware(ObserveRequests, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "X-Ignored-Params", "Retry-After"],
        )
