"""Fault injection (in-process and over the wire) and the private introspection action."""

from __future__ import annotations

import time

import pytest

from emulator_helpers import (
    LLM_SETUP,
    RawClient,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    client_for,
    emu_fixture,  # noqa: F401 (a pytest fixture, used by name)
)
from stackflow_openai.emulator import Emulator, Faults
from stackflow_openai.emulator.engines.scripted import scripted_answer

QUESTION = "one two three four five six seven eight nine ten eleven twelve"


async def set_faults(client: RawClient, **changes: object) -> dict:
    reply = await client.call("sys", "x_emulator_faults", data=changes)
    assert reply["error"]["code"] == 0, reply
    assert reply["object"] == "sys.x_emulator_faults"
    return reply["data"]


async def test_drop_finish_in_process(emu: Emulator, client: RawClient) -> None:
    work_id = await client.setup("llm")
    emu.faults.drop_finish = 1
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    deltas = [await client.recv() for _ in range(6)]
    assert all(m["data"]["finish"] is False for m in deltas)
    await client.expect_silence()  # no terminator
    assert emu.faults.drop_finish == 0
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    assert (await client.stream())[-1]["data"]["finish"] is True  # only the next one was affected


async def test_drop_finish_over_the_wire_non_stream(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    data = await set_faults(client, drop_finish=1)
    assert data["drop_finish"] == 1 and set(data) == set(Faults().as_dict())
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    await client.expect_silence()


@pytest.mark.parametrize(("code", "work_id"), [(-5, "llm"), (-2, "kws"), (-21, "llm")])
async def test_fail_setup_with_a_code(client: RawClient, code: int, work_id: str) -> None:
    await set_faults(client, fail_setup=1, fail_setup_code=code)
    reply = await client.call("llm", "setup", "llm.setup", LLM_SETUP)
    assert (reply["error"]["code"], reply["work_id"]) == (code, work_id)
    assert await client.setup("llm") == "llm.1001"  # the failure consumed 1000


async def test_hang_setup_blocks_the_unit_until_reset(emu: Emulator) -> None:
    emu.faults.hang_setup = 1
    async with client_for(emu) as client:
        await client.send("llm", "setup", "llm.setup", LLM_SETUP)
        await client.send("llm", "taskinfo")  # queued behind the stuck setup
        await client.expect_silence(0.4)
        assert emu.live_instances() == [
            {
                "work_id": "llm.1000",
                "unit": "llm",
                "model": LLM_SETUP["model"],
                "state": "loading",
                "prefill_overflows": 0,
                "inputs": [],  # known once the setup is taken
            }
        ]
        assert (await client.call("vlm", "taskinfo"))["data"] == []  # other units are not blocked
        await client.call("sys", "reset")
        await client.expect_eof()
    async with client_for(emu) as client:
        assert await client.setup("llm") == "llm.1000"


async def test_close_mid_stream_after_k_deltas(emu: Emulator, client: RawClient) -> None:
    work_id = await client.setup("llm")
    await set_faults(client, close_mid_stream=1, close_after_deltas=2)
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    deltas = [await client.recv(), await client.recv()]
    assert [m["data"]["index"] for m in deltas] == [0, 1]
    await client.expect_eof()
    async with client_for(emu) as again:  # the instance itself is fine
        assert (await again.call(work_id, "taskinfo"))["error"]["code"] == 0


async def test_token_delay_slows_generation(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await set_faults(client, token_delay=0.02)
    start = time.monotonic()
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    assert (await client.recv())["data"] == scripted_answer(QUESTION)
    assert time.monotonic() - start >= 0.02 * 15
    cleared = await set_faults(client, token_delay=None)
    assert cleared["token_delay"] is None


@pytest.mark.parametrize(
    "data", [{"nope": 1}, {"drop_finish": "1"}, {"drop_finish": -1}, {"token_delay": True}, "x"]
)
async def test_bad_fault_updates_are_rejected_whole(emu: Emulator, client: RawClient, data: object) -> None:
    reply = await client.call("sys", "x_emulator_faults", data=data)
    assert reply["error"]["code"] == -2
    assert emu.faults == Faults()


async def test_introspection_over_the_wire_matches_in_process(emu: Emulator, client: RawClient) -> None:
    llm = await client.setup("llm")
    whisper = await client.setup("whisper")
    reply = await client.call("sys", "x_emulator_instances")
    assert reply["object"] == "sys.x_emulator_instances"
    assert (
        reply["data"]
        == emu.live_instances()
        == [
            {
                "work_id": llm,
                "unit": "llm",
                "model": LLM_SETUP["model"],
                "state": "ready",
                "prefill_overflows": 0,
                "inputs": ["llm.utf-8"],
            },
            {
                "work_id": whisper,
                "unit": "whisper",
                "model": "whisper-tiny",
                "state": "ready",
                "prefill_overflows": 0,
                "inputs": ["whisper.wav.base64"],
            },
        ]
    )
    assert reply["totals"] == {
        "prefill_overflows": 0,
        "next_work_id": 1002,
        "cmm_used": 560460 + 289132,
        "connections": 1,
    }
