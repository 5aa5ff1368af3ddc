"""End-to-end harness: emulator + gateway (uvicorn on a free port) in a background event loop.

The official OpenAI SDK (sync or async) is then pointed at `harness.base_url` from the test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from gateway_runner import BackgroundLoop, Gateway, start_gateway
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing


def write_llm_descriptor(catalogue: Path, mode: str, kv_cache_len: int, prefill_len: int) -> None:
    """Add to an emulator catalogue directory a Qwen-tokenised llm model with the given window: the
    device's max_token_len is its kv_cache_len, so a small one makes the device's own cap easy to reach."""
    descriptor = {
        "mode": mode,
        "type": "llm",
        "compile_flage": (
            f"pulsar2 llm_build --kv_cache_len {kv_cache_len} --prefill_len {prefill_len} --chip AX620E"
        ),
        "capabilities": ["text_generation", "chat"],
        "input_type": ["llm.utf-8", "llm.utf-8.stream"],
        "output_type": ["llm.utf-8", "llm.utf-8.stream"],
        "mode_param": {"tokenizer_type": 2, "cmm_size": 1000},
    }
    (catalogue / f"mode_{mode}.json").write_text(json.dumps(descriptor))


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

    def sdk(self, timeout: float = 30.0) -> openai.OpenAI:
        """The official (sync) OpenAI SDK pointed at the gateway; no retries, so a failure shows."""
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=timeout)

    @contextlib.contextmanager
    def serving(self) -> Iterator[Harness]:
        """`with Harness(...).start().serving() as h:` in a test or around a fixture's `yield`. Left without
        an error, the device must then hold no leaked unit; the harness stops either way."""
        try:
            yield self
            self.assert_no_leak()
        finally:
            self.stop()

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
