"""The pool's view used to route between devices: capacity, unit states, and dead units after a reset."""

from __future__ import annotations

import asyncio

from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.connection import Connection
from stackflow_openai.stackflow.pool import DevicePool
from stackflow_openai.stackflow.setups import llm_setup, melotts_setup

LLM = "qwen2.5-0.5B-p256-ax630c"


async def test_capacity_unit_states_and_a_reset() -> None:
    emulator = Emulator(engine=ScriptedEngine(timing=Timing()), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    client = DeviceClient("127.0.0.1", emulator.port, timeout=5)
    pool = DevicePool(client, queue_timeout=2)
    try:
        models = {m.mode: m for m in await client.lsmode()}
        llm, melo = models[LLM], models["melotts-en-us"]
        setup = llm_setup(LLM, system_prompt="s", max_token_len=1023)
        other = llm_setup(LLM, system_prompt="t", max_token_len=1023)
        assert pool.capacity(llm, setup) == (2, 0)  # two llm slots, nothing warm
        async with pool.lease(llm, setup):
            assert pool.capacity(llm, setup) == (1, 0)
            assert pool.unit_states() == {("llm", "busy"): 1}
        assert pool.capacity(llm, setup) == (2, 1)  # a warm unit with this very setup
        assert pool.capacity(llm, setup, pool_size=1) == (1, 1)
        assert pool.capacity(llm, other, pool_size=1) == (1, 0)  # the idle one could be evicted
        async with pool.lease(melo, melotts_setup("melotts-en-us")):
            pass
        assert pool.unit_states() == {("llm", "idle"): 1, ("melotts", "idle"): 1}
        assert pool.capacity(models["single-speaker-english-fast"], {"model": "x"})[0] == 1  # shared slot

        # Someone resets the device: both units are dead, and their ids will be handed out again.
        conn = await Connection.open("127.0.0.1", emulator.port)
        await conn.request("sys", "reset", timeout=5)
        await conn.close()
        old = set(pool.work_ids())
        for _ in range(100):  # the connections' EOFs arrive within a few event-loop turns
            if await pool.prune() == 2:
                break
            await asyncio.sleep(0.02)
        assert pool.work_ids() == []
        async with pool.lease(llm, setup) as unit:
            assert unit.work_id in old  # the same id again (the device counts from 1000 again)...
        live = [i["work_id"] for i in emulator.live_instances()]
        assert live == pool.work_ids() == [unit.work_id]  # ...and the old handle did not exit it
    finally:
        await pool.close()
        await client.close()
        await emulator.stop()
