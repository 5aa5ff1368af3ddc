"""End-to-end harness: emulator + gateway (uvicorn on a free port) in a background event loop.

The official OpenAI SDK (sync or async) is then pointed at `harness.base_url` from the test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.serve import http_settings

T = TypeVar("T")


class Harness:
    def __init__(
        self,
        settings: Settings | None = None,
        timing: Timing | None = None,
        emulator_kwargs: dict[str, Any] | None = None,
        engine: Any = None,
    ) -> None:
        self.settings = settings or Settings()
        self.engine = engine or ScriptedEngine(timing=timing or Timing())
        self.emulator_kwargs = emulator_kwargs or {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.emulator: Emulator
        self.registry: GatewayRegistry
        self.server: uvicorn.Server
        self.base_url = ""

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run a coroutine factory (or plain function) on the harness loop and return its result."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        fut: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return fut.result(timeout)

    def start(self) -> Harness:
        self.thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        if not hasattr(self, "emulator"):  # a test may start the emulator first (orphans)
            await self.start_emulator()
        self.settings.devices = [DeviceSettings(name="emu", host="127.0.0.1", port=self.emulator.port)]
        self.settings.server.port = 0
        self.registry = GatewayRegistry(self.settings)
        app = create_app(self.registry, http_settings(self.settings))
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._serve_task = asyncio.ensure_future(self.server.serve())
        for _ in range(500):
            if self.server.started or self._serve_task.done():
                break
            await asyncio.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("gateway did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def start_emulator(self) -> None:
        self.emulator = Emulator(engine=self.engine, hwinfo_delay=0.05, **self.emulator_kwargs)
        await self.emulator.start(host="127.0.0.1", port=0)

    def live_instances(self) -> list[dict[str, Any]]:
        return self.call(self.emulator.live_instances)

    def wait_generating(self, timeout: float = 10.0) -> None:
        """Block until some emulated unit is running an inference (instead of a sleep that races)."""
        deadline = time.monotonic() + timeout
        while not any(i["state"] == "busy" for i in self.live_instances()):
            if time.monotonic() > deadline:
                raise TimeoutError("no unit started generating")
            time.sleep(0.02)

    def pool_work_ids(self) -> list[str]:
        return self.call(lambda: [w for d in self.registry.devices for w in d.pool.work_ids()])

    def stop_gateway(self) -> None:
        async def _stop() -> None:
            self.server.should_exit = True
            await asyncio.wait_for(self._serve_task, 15)

        if not self._serve_task.done():
            self.call(_stop)

    def stop(self) -> None:
        try:
            self.stop_gateway()
            self.call(self.emulator.stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
