"""End-to-end harness: emulator + gateway (uvicorn on a free port) in a background event loop.

The official OpenAI SDK (sync or async) is then pointed at `harness.base_url` from the test.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from gateway_runner import BackgroundLoop, Gateway, start_gateway
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing


class Harness(BackgroundLoop):
    def __init__(
        self,
        settings: Settings | None = None,
        timing: Timing | None = None,
        emulator_kwargs: dict[str, Any] | None = None,
        engine: Any = None,
    ) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.engine = engine or ScriptedEngine(timing=timing or Timing())
        self.emulator_kwargs = emulator_kwargs or {}
        self.emulator: Emulator
        self.gateway: Gateway
        self.base_url = ""
        self._own_data_dir: str | None = None  # a temporary data dir made here, removed by stop()

    @property
    def registry(self) -> GatewayRegistry:
        return self.gateway.registry

    def start(self) -> Harness:
        self.thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        if not hasattr(self, "emulator"):  # a test may start the emulator first (orphans)
            await self.start_emulator()
        self.settings.devices = [DeviceSettings(name="emu", host="127.0.0.1", port=self.emulator.port)]
        self.settings.server.port = 0
        if self.settings.data_dir is None:  # stored responses: never in the user's real data directory
            self.settings.data_dir = self._own_data_dir = tempfile.mkdtemp(prefix="stackflow-openai-test-")
        self.gateway = await start_gateway(self.settings)
        self.base_url = f"http://127.0.0.1:{self.gateway.port}/v1"

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

    def assert_no_leak(self, timeout: float = 5.0) -> None:
        """The emulator holds exactly the pool's instances (clean-ups may still be finishing: wait a bit),
        and no prompt ever overflowed a unit's prefill window."""
        deadline = time.monotonic() + timeout
        while True:
            live = sorted(i["work_id"] for i in self.live_instances())
            pooled = sorted(self.pool_work_ids())
            if live == pooled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert live == pooled, f"device has {live}, the gateway's pool has {pooled}"
        assert self.call(lambda: self.emulator.prefill_overflows) == 0, (
            "a prompt overflowed the prefill window"
        )

    def pool_work_ids(self) -> list[str]:
        return self.call(lambda: [w for d in self.registry.devices for w in d.pool.work_ids()])

    def stop_gateway(self) -> None:
        self.call(self.gateway.stop)

    def stop(self) -> None:
        try:
            self.stop_gateway()
            self.call(self.emulator.stop)
        finally:
            self.stop_loop()
            if self._own_data_dir is not None:
                shutil.rmtree(self._own_data_dir, ignore_errors=True)
