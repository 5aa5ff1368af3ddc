"""Gateway (uvicorn, free port) in front of several emulators, all on one background event loop.

Emulators can be stopped and started again on the same port, or reset, while the gateway runs. The
device monitor is tuned to probe every 0.1 s so that tests see state changes quickly.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai

from gateway_runner import BackgroundLoop, Gateway, start_gateway
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, HealthSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.stackflow.connection import Connection

FAST_HEALTH = HealthSettings(probe_interval=0.1, probe_timeout=1.0, max_backoff=0.4, stats_interval=0.2)


class MultiHarness(BackgroundLoop):
    def __init__(
        self, names: list[str], settings: Settings | None = None, timing: Timing | None = None
    ) -> None:
        super().__init__()
        self.names = names
        self.settings = settings or Settings()
        if "health" not in self.settings.model_fields_set:
            self.settings.health = FAST_HEALTH
        self.timing = timing or Timing()
        self.emulators: dict[str, Emulator] = {}
        self.ports: dict[str, int] = {}
        self.gateway: Gateway
        self.base_url = ""

    @property
    def registry(self) -> GatewayRegistry:
        return self.gateway.registry

    # ---- plumbing ------------------------------------------------------------------------------
    def start(self, *, down: tuple[str, ...] = ()) -> MultiHarness:
        """Start the emulators (except `down`, whose ports are reserved) and the gateway."""
        self.thread.start()
        for name in self.names:
            self.call(lambda n=name: self._start_emulator(n))
        for name in down:
            self.stop_device(name)
        self.call(self._start_gateway)
        return self

    async def _start_emulator(self, name: str) -> None:
        emulator = Emulator(engine=ScriptedEngine(timing=self.timing), hwinfo_delay=0.05)
        await emulator.start("127.0.0.1", self.ports.get(name, 0))
        self.emulators[name] = emulator
        self.ports[name] = emulator.port

    async def _start_gateway(self) -> None:
        self.settings.devices = [
            DeviceSettings(name=n, host="127.0.0.1", port=self.ports[n]) for n in self.names
        ]
        self.gateway = await start_gateway(self.settings)
        self.base_url = f"http://127.0.0.1:{self.gateway.port}"

    def stop(self) -> None:
        async def _stop() -> None:
            await self.gateway.stop()
            for emulator in self.emulators.values():
                await emulator.stop()

        try:
            self.call(_stop)
        finally:
            self.stop_loop()

    # ---- devices -------------------------------------------------------------------------------
    def stop_device(self, name: str) -> None:
        """The device dies: every connection drops and the port refuses new ones."""
        emulator = self.emulators.pop(name)
        self.call(emulator.stop)

    def start_device(self, name: str) -> None:
        """A fresh device (no instances, work_ids from 1000 again) on the same port."""
        self.call(lambda: self._start_emulator(name))

    def reset_device(self, name: str) -> None:
        """What `sys.reset` does, sent by someone else (a script, another tool)."""

        async def reset() -> None:
            conn = await Connection.open("127.0.0.1", self.ports[name])
            try:
                await conn.request("sys", "reset", timeout=5)
            finally:
                await conn.close()

        self.call(reset)

    def live(self, name: str) -> list[str]:
        return sorted(i["work_id"] for i in self.call(self.emulators[name].live_instances))

    def pool_ids(self, name: str) -> list[str]:
        device = next(d for d in self.registry.devices if d.name == name)
        return sorted(self.call(device.pool.work_ids))

    def assert_no_leak(self) -> None:
        for name in self.emulators:
            assert self.live(name) == self.pool_ids(name), name

    # ---- HTTP ----------------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=30, **kwargs
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", timeout=10)

    def device_state(self, name: str) -> str:
        devices = self.get("/ready").json()["devices"]
        return next(str(d["state"]) for d in devices if d["name"] == name)

    def wait_for_state(self, name: str, state: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.device_state(name) != state:
            assert time.monotonic() < deadline, f"{name} never became {state}: {self.get('/ready').json()}"
            time.sleep(0.05)
