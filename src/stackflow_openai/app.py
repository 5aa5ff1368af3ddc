"""The FastAPI application: routers, OpenAI-shaped errors everywhere, state on ``app.state``.

    app = create_app(registry, HttpSettings(...))

``app.state`` holds: registry, settings, tokenizers, images (ImageLoader), metrics, chat_service,
completion_service, model_service, responses_service (and responses_observed: it with metrics). The
lifespan starts the registry, and on shutdown closes the image client, the response store and the
registry. Tokenizers load on the first request that needs one (Qwen's BPE: ~40 MiB and ~0.3 s, in a
worker thread), so a gateway that serves only audio or other models never pays for it.

Middlewares, outermost first: CORS (only when origins are configured), then ONE operations middleware
(`_Operations`): request id + access log + metrics, API keys, body limits, the last-resort 500, and the
two hot routes served without FastAPI's routing. Routes: the OpenAI ones under /v1, and /health,
/ready, /metrics (routers/health.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from stackflow_openai import __version__
from stackflow_openai.backends.base import BackendError
from stackflow_openai.errors import (
    APIError,
    ServerShuttingDown,
    error_body,
    error_json,
    to_openai_error,
    validation_error,
)
from stackflow_openai.ops.auth import ApiKeyAuth
from stackflow_openai.ops.limits import BodyLimit
from stackflow_openai.ops.metrics import Metrics
from stackflow_openai.ops.observe import ObservedService
from stackflow_openai.ops.reqlog import REQUEST_ID_HEADER, RequestObservation
from stackflow_openai.playground import mount_playground
from stackflow_openai.routers import (
    audio_router,
    chat_router,
    completions_router,
    models_router,
    responses_router,
)
from stackflow_openai.routers.chat import create_chat_completion
from stackflow_openai.routers.completions import create_completion
from stackflow_openai.routers.health import router as health_router
from stackflow_openai.routers.openapi import install_openapi
from stackflow_openai.routers.realtime import router as realtime_router
from stackflow_openai.services import (
    ChatService,
    CompletionService,
    ImageLoader,
    ImagePolicy,
    ModelRegistry,
    ModelService,
)
from stackflow_openai.services.images import Resolver
from stackflow_openai.services.params import DROPPED_HEADER, IGNORED_HEADER, TRANSLATION_HEADER
from stackflow_openai.services.responses import ResponsesService
from stackflow_openai.shutdown import SCOPE_KEY as SHUTDOWN_KEY
from stackflow_openai.shutdown import ShutdownDeadline
from stackflow_openai.store import SqliteResponseStore
from stackflow_openai.store.sqlite import DB_NAME
from stackflow_openai.tokens import Tokenizers

__all__ = ["HttpSettings", "ModelRegistry", "create_app"]

log = logging.getLogger(__name__)
STOP_TIMEOUT = 10.0  # seconds the lifespan gives the registry to exit every unit at shutdown


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
    data_dir: str | None = None  # stored responses go here; None: in memory only (tests, embedding)
    responses_retention_days: float = 30.0
    responses_max_bytes: int = 256 * 1024 * 1024
    responses_default_truncation: str = "disabled"  # for requests that set none (OpenAI's default)
    playground: bool = True  # the browser playground at GET / (playground/)

    voice_pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)  # Realtime: name -> models
    realtime_idle_timeout: float = 300.0  # seconds without a client event before a session is closed
    realtime_device_chain: bool = False  # voice turns may run on the device's own chain (realtime/chained.py)

    def __repr__(self) -> str:  # never show the keys
        return f"HttpSettings(api_keys={len(self.api_keys)} configured, cors_origins={self.cors_origins!r})"


class _ErrorJSON(JSONResponse):
    """An error body, ASCII-escaped (`error_json`): it may echo client text."""

    def render(self, content: Any) -> bytes:
        return error_json(content)


def _error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = to_openai_error(exc)
    return _ErrorJSON(body, status_code=status, headers=headers)


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
    return _ErrorJSON(body, status_code=exc.status_code, headers=exc.headers)


Endpoint = Callable[[StarletteRequest], Awaitable[Response]]


class _Operations:
    """The operations layer as ONE pure ASGI middleware: request id, access log line and request metrics
    (ops/reqlog.py), API keys (ops/auth.py), body limits (ops/limits.py), and the last resort: an
    exception no handler knows becomes a logged 500 in OpenAI's shape (never a traceback body).

    These were four middlewares, and every message of every response went through each of them. The
    hot routes (POST /v1/chat/completions and /v1/completions) are also served from here, straight to
    their endpoint functions: FastAPI's routing, dependency and exception layers cost about as much as
    the rest of the gateway's own work per request (docs/performance.md). The routes stay declared in
    FastAPI (OpenAPI document, 405 for other methods); errors get the same handling (`to_openai_error`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        auth: ApiKeyAuth,
        limits: BodyLimit,
        hot_routes: dict[str, tuple[BaseRoute, Endpoint]],
        deadline: ShutdownDeadline,
    ) -> None:
        self.app = app
        self.deadline = deadline
        self.metrics = metrics
        self.auth = auth
        self.limits = limits
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observation = RequestObservation(scope, send, self.metrics)
        send = observation.send
        task = asyncio.current_task()
        assert task is not None
        deadline = self.deadline
        scope[SHUTDOWN_KEY] = deadline  # event streams end themselves at the deadline (sse.py)
        deadline.track(task, lambda: observation.started)
        try:
            if deadline.expired:
                raise _shutting_down()
            refusal = self.auth.refusal(scope) or self.limits.refusal(scope)
            if refusal is not None:
                await _error_response(refusal)(scope, receive, send)
                return
            receive = observation.receive(self.limits.counted(scope, receive))
            hot = self.hot_routes.get(scope["path"]) if scope["method"] == "POST" else None
            try:
                if hot is not None and not scope.get("root_path"):
                    await _serve_hot(hot, scope, receive, send)
                else:
                    await self.app(scope, receive, send)
            except Exception as exc:
                if observation.started:
                    raise  # half a response is out: only closing the connection is left
                await _error_response(exc)(scope, receive, send)
        except asyncio.CancelledError:
            # The shutdown deadline cancels requests still waiting (for a unit, for the device) with no
            # response begun: they get a 503 rather than a closed connection.
            if not (deadline.expired and not observation.started and task.uncancel() == 0):
                raise
            await _error_response(_shutting_down())(scope, receive, send)
        finally:
            deadline.untrack(task)
            observation.finish()


def _shutting_down() -> ServerShuttingDown:
    return ServerShuttingDown("The server is shutting down; retry on another instance or after it restarts.")


async def _serve_hot(hot: tuple[BaseRoute, Endpoint], scope: Scope, receive: Receive, send: Send) -> None:
    route, endpoint = hot
    scope["route"] = route  # what the router would set: the metrics' route label
    try:
        response = await endpoint(StarletteRequest(scope, receive, send))
    except Exception as exc:  # what the app's exception handlers do (errors raised before a response)
        response = _error_response(exc)
    await response(scope, receive, send)


def _hot_routes() -> dict[str, tuple[BaseRoute, Endpoint]]:
    hot: dict[str, tuple[BaseRoute, Endpoint]] = {}
    for router, endpoint in ((chat_router, create_chat_completion), (completions_router, create_completion)):
        for route in router.routes:
            if isinstance(route, APIRoute) and route.endpoint is endpoint and "POST" in (route.methods or ()):
                hot[route.path] = (route, endpoint)
    return hot


async def _bounded(step: Awaitable[None], what: str) -> None:
    """A shutdown step, bounded: a hung device must not hold the process past the service manager's
    stop timeout (docs/deployment.md)."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await step
    except TimeoutError:
        log.error("%s took over %g s", what, STOP_TIMEOUT)


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
    images = ImageLoader(policy, resolver=image_resolver)

    deadline = ShutdownDeadline()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            deadline.expire()  # whatever still runs (a server that did not call begin()) ends now
            await images.aclose()
            # Background responses: cancelled and stored so.
            await _bounded(app.state.responses_service.close(), "cancelling the background responses")
            await store.close()
            # Exits every unit; what a hung device kept is exited as an orphan at the next start
            # (pool.cleanup_orphans).
            await _bounded(registry.stop(), "stopping the devices' units (some may remain on a device)")

    app = FastAPI(title="stackflow-openai", version=__version__, lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.tokenizers = tokenizers
    app.state.images = images
    app.state.shutdown = deadline  # serve.py calls begin(grace) when the server stops accepting
    metrics = Metrics(lambda: getattr(registry, "devices", ()))
    attach = getattr(registry, "attach", None)
    if attach is not None:
        attach(metrics)  # pool timings and device errors
    app.state.metrics = metrics
    auth = ApiKeyAuth(
        settings.api_keys, protect_health=settings.protect_health, protect_metrics=settings.protect_metrics
    )
    app.state.auth = auth  # the operations middleware checks HTTP; the realtime route checks its socket
    chat = ChatService(registry, tokenizers, images)
    app.state.chat_service = ObservedService(chat, registry, metrics)
    app.state.chat_core = chat  # plans for front ends that render events themselves (realtime)
    app.state.completion_service = ObservedService(CompletionService(registry, tokenizers), registry, metrics)
    app.state.model_service = ModelService(registry)
    store = SqliteResponseStore(  # opened on first use: a gateway that never stores creates no file
        f"{settings.data_dir}/{DB_NAME}" if settings.data_dir else None,
        retention_days=settings.responses_retention_days,
        max_bytes=settings.responses_max_bytes,
    )
    app.state.responses_service = ResponsesService(
        registry, tokenizers, images, store, default_truncation=settings.responses_default_truncation
    )
    app.state.responses_observed = ObservedService(app.state.responses_service, registry, metrics)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(BackendError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _add_middlewares(app, settings, metrics, deadline, auth)

    app.include_router(chat_router)
    app.include_router(completions_router)
    app.include_router(models_router)
    app.include_router(audio_router)  # written by the audio helper (routers/audio.py)
    app.include_router(responses_router)
    app.include_router(health_router)
    app.include_router(realtime_router)
    if settings.playground:
        mount_playground(app)
    install_openapi(app)  # request bodies and error responses in /openapi.json (routers/openapi.py)
    return app


def _add_middlewares(
    app: FastAPI, settings: HttpSettings, metrics: Metrics, deadline: ShutdownDeadline, auth: ApiKeyAuth
) -> None:
    # add_middleware puts each new one outside the previous ones: innermost first.
    app.add_middleware(
        _Operations,
        metrics=metrics,
        auth=auth,
        limits=BodyLimit(default=settings.max_body_bytes),
        hot_routes=_hot_routes(),
        deadline=deadline,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                REQUEST_ID_HEADER,
                IGNORED_HEADER,
                DROPPED_HEADER,
                TRANSLATION_HEADER,
                "X-Images-Dropped",
                "Retry-After",
            ],
        )
