"""`stackflow-openai serve`: settings → registry → FastAPI app → uvicorn, optionally with an emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import uvicorn
from pydantic import SecretStr

from stackflow_openai.config import CONFIG_ENV, DeviceSettings, Settings, load_settings, parse_device

__all__ = ["build_settings", "config_path", "http_protocol", "http_settings", "serve", "uvicorn_config"]

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
    )


def http_protocol() -> str:
    """uvicorn's HTTP implementation: httptools (a C parser, a dependency of the project) when it can be
    imported, else uvicorn's pure-Python h11. httptools costs about a third less CPU per request and per
    streamed chunk (docs/performance.md)."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # e.g. a platform without a wheel: h11 works, only slower
        log.warning("httptools is not installed: serving HTTP with h11 (slower)")
        return "h11"
    return "httptools"


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    """The uvicorn options of `serve` (benchmarks/_servers.py builds its gateway with this too)."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        http=http_protocol(),
        log_level="warning",
        lifespan="on",
    )


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
        server = uvicorn.Server(uvicorn_config(app, settings.server.host, settings.server.port))
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
