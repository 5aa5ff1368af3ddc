"""`stackflow-openai serve`: settings → registry → FastAPI app → uvicorn, optionally with an emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

import uvicorn
from pydantic import SecretStr

from stackflow_openai.config import (
    CONFIG_ENV,
    DeviceSettings,
    ServerSettings,
    Settings,
    load_settings,
    parse_device,
)

__all__ = [
    "GatewayServer",
    "build_settings",
    "config_path",
    "http_protocol",
    "http_settings",
    "serve",
    "uvicorn_config",
]

log = logging.getLogger("stackflow_openai")


def config_path(args: argparse.Namespace) -> str | None:
    """--config, else $STACKFLOW_OPENAI_CONFIG, else none (defaults)."""
    return getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None


def build_settings(args: argparse.Namespace) -> Settings:
    """The file, then environment overrides (in load_settings), then command-line options."""
    settings = load_settings(config_path(args))
    if getattr(args, "device", None):
        settings.devices = [parse_device(d) for d in args.device]
    if getattr(args, "host", None):
        settings.server.host = args.host
    if getattr(args, "port", None) is not None:
        settings.server.port = args.port
    if getattr(args, "data_dir", None):
        settings.data_dir = args.data_dir
    for key in getattr(args, "api_key", None) or ():
        settings.auth.api_keys.append(SecretStr(key))
    return settings


def http_settings(settings: Settings):  # type: ignore[no-untyped-def]
    from stackflow_openai.app import HttpSettings

    return HttpSettings(
        image_max_bytes=settings.images.max_bytes,
        image_fetch_timeout=settings.images.fetch_timeout,
        image_allow_private=settings.images.allow_private,
        image_allowed_hosts=tuple(settings.images.allowed_hosts),
        max_body_bytes=settings.server.max_body_bytes,
        api_keys=tuple(settings.auth.key_values()),
        protect_health=settings.auth.protect_health,
        protect_metrics=settings.auth.protect_metrics,
        cors_origins=tuple(settings.server.cors_origins),
        data_dir=settings.data_dir or str(settings.state_path()),  # one directory unless told
        responses_retention_days=settings.responses.retention_days,
        responses_max_bytes=settings.responses.max_bytes,
        responses_default_truncation=settings.responses.default_truncation,
        playground=settings.playground,
        voice_pipelines={
            name: pipeline.model_dump(exclude_none=True)
            for name, pipeline in settings.realtime.pipelines.items()
        },
        realtime_idle_timeout=settings.realtime.idle_timeout,
        realtime_device_chain=settings.realtime.device_chain == "auto",
    )


def http_protocol(server: ServerSettings | None = None) -> str | type[asyncio.Protocol]:
    """uvicorn's HTTP implementation: httptools (a C parser, a dependency of the project) with the
    connection guards of ops/connections.py (header deadline, connection cap), else uvicorn's
    pure-Python h11 without them. httptools costs about a third less CPU per request and per streamed
    chunk (docs/performance.md)."""
    server = server or ServerSettings()
    try:
        import httptools  # noqa: F401
    except ImportError:  # e.g. a platform without a wheel: h11 works, only slower and unguarded
        log.warning("httptools is not installed: serving HTTP with h11 (slower, no header timeout)")
        return "h11"
    from stackflow_openai.ops.connections import guarded_protocol

    return guarded_protocol(header_timeout=server.header_timeout, max_connections=server.max_connections)


# uvicorn's own backstop after our grace period: streams have been ended by then (shutdown.py), so this
# only cancels what did not end in time (a client that does not read its error event).
_BACKSTOP = 5.0


def uvicorn_config(app: object, host: str, port: int, server: ServerSettings | None = None) -> uvicorn.Config:
    """The uvicorn options of `serve` (benchmarks/_servers.py builds its gateway with this too)."""
    server = server or ServerSettings()
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        http=http_protocol(server),
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=server.keep_alive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(server.shutdown_grace + _BACKSTOP),
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server that starts the app's shutdown deadline (shutdown.py) when it stops accepting."""

    def __init__(self, config: uvicorn.Config, grace: float) -> None:
        super().__init__(config)
        self.grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The app as given (config.loaded_app is wrapped in uvicorn's proxy middlewares).
        deadline = getattr(getattr(self.config.app, "state", None), "shutdown", None)
        if deadline is not None:
            deadline.begin(self.grace)
        await super().shutdown(sockets)


async def serve(args: argparse.Namespace) -> None:
    from stackflow_openai.app import create_app
    from stackflow_openai.backends.registry import GatewayRegistry

    settings = build_settings(args)
    emulator = None
    if args.emulator:
        from stackflow_openai.emulator import Emulator
        from stackflow_openai.emulator.engines.select import choose_engine

        engine, description = choose_engine(args.engine, realistic=args.realistic)
        emulator = Emulator(
            engine=engine,
            catalogue_dirs=tuple(getattr(args, "catalogue", None) or ()),
            board=getattr(args, "board", None) or "ax630c",
            units=getattr(args, "units", None),
        )
        await emulator.start(host="127.0.0.1", port=0)
        settings.devices = [DeviceSettings(name="emulator", host="127.0.0.1", port=emulator.port)]
        print(f"StackFlow emulator on 127.0.0.1:{emulator.port} ({emulator.board.description}, "
              f"units {emulator.generation.name}); {description}", flush=True)  # fmt: skip
    try:
        keys = len(settings.auth.key_values())
        log.info("API keys: %s", f"{keys} configured" if keys else "none (no authentication)")
        app = create_app(GatewayRegistry(settings), http_settings(settings))
        config = uvicorn_config(app, settings.server.host, settings.server.port, settings.server)
        server = GatewayServer(config, settings.server.shutdown_grace)
        await _serve_and_announce(server)
    finally:
        if emulator is not None:
            await emulator.stop()


async def _serve_and_announce(server: uvicorn.Server) -> None:
    task = asyncio.create_task(server.serve())
    # uvicorn offers no "started" event to await
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        print(f"OpenAI-compatible API on http://{host}:{port}/v1", flush=True)
    await task
