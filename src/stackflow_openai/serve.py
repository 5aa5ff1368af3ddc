"""`stackflow-openai serve`: settings → registry → FastAPI app → uvicorn, optionally with an emulator."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from stackflow_openai.config import DeviceSettings, Settings, load_settings, parse_device

__all__ = ["build_settings", "http_settings", "serve"]

log = logging.getLogger("stackflow_openai")


def build_settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.device:
        settings.devices = [parse_device(d) for d in args.device]
    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    return settings


def http_settings(settings: Settings):  # type: ignore[no-untyped-def]
    from stackflow_openai.app import HttpSettings

    return HttpSettings(
        image_max_bytes=settings.images.max_bytes,
        image_fetch_timeout=settings.images.fetch_timeout,
        image_allow_private=settings.images.allow_private,
        image_allowed_hosts=tuple(settings.images.allowed_hosts),
        max_body_bytes=settings.server.max_body_bytes,
    )


async def serve(args: argparse.Namespace) -> None:
    from stackflow_openai.app import create_app
    from stackflow_openai.backends.registry import GatewayRegistry

    settings = build_settings(args)
    emulator = None
    if args.emulator:
        from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing

        timing = Timing.realistic() if args.realistic else Timing()
        emulator = Emulator(engine=ScriptedEngine(timing=timing))
        await emulator.start(host="127.0.0.1", port=0)
        settings.devices = [DeviceSettings(name="emulator", host="127.0.0.1", port=emulator.port)]
        print(f"StackFlow emulator (scripted test engine) on 127.0.0.1:{emulator.port}", flush=True)
    try:
        app = create_app(GatewayRegistry(settings), http_settings(settings))
        config = uvicorn.Config(
            app, host=settings.server.host, port=settings.server.port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        await _serve_and_announce(server)
    finally:
        if emulator is not None:
            await emulator.stop()


async def _serve_and_announce(server: uvicorn.Server) -> None:
    import asyncio

    task = asyncio.create_task(server.serve())
    # uvicorn offers no "started" event to await
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        print(f"OpenAI-compatible API on http://{host}:{port}/v1", flush=True)
    await task
