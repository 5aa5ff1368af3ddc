"""The pool keeps its books when the task holding a lease is cancelled.

Starlette cancels a response whose client went away through an anyio cancel scope, which cancels
every later await of the task too, the clean-up in `finally` blocks included. A lease ended that way
must still free its place and leave nothing on the device.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.pool import DevicePool
from stackflow_openai.stackflow.setups import llm_setup

LLM = "qwen2.5-0.5B-p256-ax630c"
SETUP = llm_setup(LLM, system_prompt="s", max_token_len=1023)


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Emulator, DevicePool]]:
    emulator = Emulator(engine=ScriptedEngine(timing=Timing(tokens_per_second=50)))
    await emulator.start("127.0.0.1", 0)
    client = DeviceClient("127.0.0.1", emulator.port, timeout=5)
    pool = DevicePool(client, queue_timeout=1)
    try:
        yield emulator, pool
    finally:
        await pool.close()
        await client.close()
        await emulator.stop()


async def settled(emulator: Emulator, pool: DevicePool) -> None:
    for _ in range(200):
        live = sorted(i["work_id"] for i in emulator.live_instances())
        if live == sorted(pool.work_ids()) and pool.stats()["busy"] == 0:
            return
        await asyncio.sleep(0.02)


async def test_a_busy_unit_left_in_a_cancelled_scope_is_exited_and_its_place_freed(
    parts: tuple[Emulator, DevicePool],
) -> None:
    emulator, pool = parts
    model = {m.mode: m for m in await pool.client.lsmode()}[LLM]
    with anyio.CancelScope() as scope:
        async with pool.lease(model, SETUP, pool_size=1) as unit:
            output = unit.generate("w " * 40)
            await output.__anext__()  # the unit is generating, and nobody will read the rest
            scope.cancel()
            await anyio.sleep(5)  # cancelled at once; so is every await of the release
    await settled(emulator, pool)
    assert pool.stats() == {"instances": 0, "busy": 0, "idle": 0, "waiting": 0}
    assert emulator.live_instances() == []
    async with pool.lease(model, SETUP, pool_size=1) as unit:  # the only place is free again
        assert "".join([p async for p in unit.generate("a b")])


async def test_a_setup_cancelled_while_evicting_frees_its_reserved_place(
    parts: tuple[Emulator, DevicePool],
) -> None:
    emulator, pool = parts
    model = {m.mode: m for m in await pool.client.lsmode()}[LLM]
    async with pool.lease(model, SETUP, pool_size=1):
        pass  # one idle instance with setup A
    other = llm_setup(LLM, system_prompt="t", max_token_len=1023)
    emulator.faults.token_delay = None
    with anyio.CancelScope() as scope:
        scope.cancel()  # the lease must evict A to set up B, and every await is cancelled
        async with pool.lease(model, other, pool_size=1):
            pytest.fail("the lease cannot be had in a cancelled scope")
    await settled(emulator, pool)
    assert pool.stats()["busy"] == 0 and pool.stats()["waiting"] == 0
    async with pool.lease(model, other, pool_size=1) as unit:
        assert "".join([p async for p in unit.generate("a b")])
    await settled(emulator, pool)
    assert [i["work_id"] for i in emulator.live_instances()] == pool.work_ids()
