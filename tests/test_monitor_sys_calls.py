"""The device monitor asks a device only what it needs: no repeated sys calls right after it connects."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from emulator_helpers import started_emulator
from stackflow_openai.backends.devices import Device
from stackflow_openai.backends.monitor import DeviceMonitor
from stackflow_openai.config import DeviceSettings, Settings
from stackflow_openai.stackflow.connection import Connection


async def test_start_up_reads_models_and_stats_once_until_their_intervals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`start` reads lsmode and samples memory and temperature; the probes that follow only ping until
    `stats_interval` and `refresh_interval` have passed (each sys call costs the device a round trip)."""
    asked: Counter[str] = Counter()
    probed = asyncio.Event()  # several probes went by after the start-up reads
    request = Connection.request

    async def counting_request(self: Connection, work_id: str, action: str, **kwargs: Any) -> Any:
        asked[action] += 1
        if asked["ping"] >= 4:
            probed.set()
        return await request(self, work_id, action, **kwargs)

    monkeypatch.setattr(Connection, "request", counting_request)
    settings = Settings.model_validate(
        {"health": {"probe_interval": 0.05, "stats_interval": 60}, "discovery": {"refresh_interval": 60}}
    )
    async with started_emulator() as emu:
        device = Device(DeviceSettings(name="a", host="127.0.0.1", port=emu.port), settings)
        monitor = DeviceMonitor([device], settings, on_change=lambda: None)
        await monitor.start()
        try:
            assert device.up
            await asyncio.wait_for(probed.wait(), 10)
        finally:
            await monitor.stop()
            await device.client.close()
    assert asked["lsmode"] == 1, asked
    assert asked["hwinfo"] == 1, asked
    assert asked["cmminfo"] + asked["axcl_cmminfo"] <= 2, asked  # axcl_cmminfo once settles which to ask
    assert asked["version2"] == 1, asked
