"""What the test harnesses share: an event loop in a background thread, and a gateway served by
uvicorn on a free port on that loop, built as `stackflow-openai serve` builds it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import Settings
from stackflow_openai.serve import http_settings


class BackgroundLoop:
    """An asyncio loop in a daemon thread; tests reach into it with `call`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run a coroutine factory (or plain function) on the loop and return its result."""

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        fut: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return fut.result(timeout)

    def stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Gateway:
    registry: GatewayRegistry
    server: uvicorn.Server
    task: asyncio.Future[None]
    port: int

    async def stop(self) -> None:
        if not self.task.done():
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 15)


async def start_gateway(settings: Settings) -> Gateway:
    """Serve the gateway for `settings` (devices already filled in) on 127.0.0.1, a free port."""
    registry = GatewayRegistry(settings)
    app = create_app(registry, http_settings(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        raise RuntimeError("gateway did not start")
    return Gateway(registry, server, task, server.servers[0].sockets[0].getsockname()[1])
