"""Setup and instance bookkeeping (protocol §1.4, §4, §6): ids, limits, validation, memory, routing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from emulator_helpers import (
    LLM_SETUP,
    SETUPS,
    RawClient,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    client_for,
    emu_fixture,  # noqa: F401 (a pytest fixture, used by name)
    started_emulator,
)
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing


async def setup_reply(client: RawClient, unit: str, data: Any) -> dict[str, Any]:
    return await client.call(unit, "setup", f"{unit}.setup", data)


async def test_work_ids_come_from_one_counter_shared_by_all_units(client: RawClient) -> None:
    assert await client.setup("asr") == "asr.1000"
    assert await client.setup("llm") == "llm.1001"
    failed = await setup_reply(client, "melotts", {**SETUPS["melotts"], "model": "no-such-model"})
    assert failed["error"]["code"] == -5 and failed["work_id"] == "melotts"
    assert await client.setup("melotts") == "melotts.1003"  # the failed setup used up 1002


@pytest.mark.parametrize(
    ("unit", "limit"), [("llm", 2), ("vlm", 2), ("melotts", 1), ("tts", 1), ("whisper", 1), ("asr", 1)]
)
async def test_instance_limits_give_minus_21(unit: str, limit: int) -> None:
    async with started_emulator(cmm_total_kib=10**8) as emu, client_for(emu) as client:
        for _ in range(limit):
            await client.setup(unit)
        reply = await setup_reply(client, unit, SETUPS[unit])
        assert (reply["error"], reply["work_id"]) == ({"code": -21, "message": "task full"}, unit)
        assert emu.state.next_work_id == 1000 + limit + 1  # -21 consumed a number too


@pytest.mark.parametrize(
    ("unit", "change"),
    [
        ("llm", {"model": None}),
        ("llm", {"enoutput": "yes"}),
        ("llm", {"prompt": 5}),
        ("llm", {"max_token_len": None}),
        ("llm", {"max_token_len": "1023"}),
        ("llm", {"enable_temperature": 1}),
        ("llm", {"model": "no-such-model"}),
        ("llm", {"model": "whisper-tiny"}),
        ("llm", {"input": ["llm.utf-8", 3]}),
        ("vlm", {"vpm_width": "364"}),
        ("melotts", {"input": None, "_drop": "input"}),
        ("whisper", {"language": None, "_drop": "language"}),
        ("asr", {"rule2": "long"}),
        ("tts", {"response_format": None, "_drop": "response_format"}),
    ],
)
async def test_bad_setup_fields_give_minus_5(client: RawClient, unit: str, change: dict[str, Any]) -> None:
    data = {**SETUPS[unit], **change}
    if "_drop" in change:
        del data[data.pop("_drop")]
    reply = await setup_reply(client, unit, data)
    expected_work_id = "asr" if unit == "whisper" else unit  # whisper's -5 copy-paste bug
    assert (reply["error"], reply["work_id"]) == (
        {"code": -5, "message": "Model loading failed."},
        expected_work_id,
    )


@pytest.mark.parametrize(
    ("unit", "work_id"), [("llm", "kws"), ("vlm", "kws"), ("melotts", "melotts"), ("whisper", "whisper")]
)
async def test_data_that_is_not_an_object_gives_minus_2(client: RawClient, unit: str, work_id: str) -> None:
    for data in ('{"model": "x"}', "hello"):  # a string holding JSON is still a string
        reply = await setup_reply(client, unit, data)
        assert (reply["error"], reply["work_id"]) == ({"code": -2, "message": "json format error."}, work_id)


async def test_setup_failure_reply_uses_the_setups_request_id(client: RawClient) -> None:
    rid = await client.send("llm", "setup", "llm.setup", {**LLM_SETUP, "model": "nope"})
    reply = await client.recv()
    assert reply["request_id"] == rid and reply["object"] == "None" and reply["data"] == "None"


async def test_cmminfo_follows_setups_and_exits(client: RawClient) -> None:
    llm = await client.setup("llm")
    whisper = await client.setup("whisper")
    used = (await client.call("sys", "cmminfo"))["data"]
    assert used == {"total": 3145728, "used": 560460 + 289132, "remain": 3145728 - 560460 - 289132}
    await client.call(llm, "exit")
    assert (await client.call("sys", "cmminfo"))["data"]["used"] == 289132
    await client.call(whisper, "exit")
    assert (await client.call("sys", "cmminfo"))["data"]["used"] == 0


async def test_setup_without_enough_memory_gives_minus_5() -> None:
    async with started_emulator(cmm_total_kib=1_000_000) as emu, client_for(emu) as client:
        await client.setup("llm")  # 560460 KiB
        reply = await setup_reply(client, "llm", LLM_SETUP)
        assert (reply["error"]["code"], reply["work_id"]) == (-5, "llm")
        assert await client.setup("melotts") == "melotts.1002"  # 59764 KiB still fits


async def test_setup_fields_override_descriptor_params(client: RawClient) -> None:
    # The descriptor says tokenizer_type 2; a setup value of the wrong type must be caught, and a
    # right-typed one accepted.
    assert (await setup_reply(client, "llm", {**LLM_SETUP, "tokenizer_type": "two"}))["error"]["code"] == -5
    assert (await setup_reply(client, "llm", {**LLM_SETUP, "tokenizer_type": 1}))["error"]["code"] == 0


async def test_taskinfo_lists_and_describes(client: RawClient) -> None:
    llm = await client.setup("llm", input=["llm.utf-8", "kws.1999"])
    listing = await client.call("llm", "taskinfo")
    assert (listing["object"], listing["data"], listing["work_id"]) == ("llm.tasklist", [llm], "llm")
    info = await client.call(llm, "taskinfo")
    assert info["object"] == "llm.taskinfo" and info["work_id"] == llm
    assert info["data"] == {
        "enoutput": True,
        "inputs": ["llm.utf-8", "kws.1999"],
        "model": LLM_SETUP["model"],
        "response_format": "llm.utf-8.stream",
    }
    assert (await client.call("whisper", "taskinfo"))["object"] == "whisper.tasklist"


async def test_enoutput_false_sends_nothing_but_control_replies(client: RawClient) -> None:
    work_id = await client.setup("llm", enoutput=False)
    await client.send(work_id, "inference", "llm.utf-8", "hello")
    await client.expect_silence()
    assert (await client.call(work_id, "taskinfo"))["data"]["enoutput"] is False


async def test_input_without_the_unit_tag_drops_inference_silently(client: RawClient) -> None:
    work_id = await client.setup("llm", input="tts.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", "hello")
    await client.expect_silence()


async def test_output_follows_the_last_connection_that_spoke(emu: Emulator) -> None:
    emu.faults.token_delay = 0.03
    async with client_for(emu) as owner, client_for(emu) as monitor:
        work_id = await owner.setup("llm")
        await owner.send(
            work_id, "inference", "llm.utf-8", "one two three four five six seven eight nine ten"
        )
        first = await owner.recv()
        assert first["data"]["finish"] is False
        info = await monitor.call(work_id, "taskinfo")  # taskinfo steals the stream
        assert info["object"] == "llm.taskinfo"
        stolen = await monitor.stream()
        assert stolen[-1]["data"]["delta"] == "" and stolen[-1]["data"]["finish"] is True
        # A delta already on its way may still reach the owner, but never the terminator.
        assert b'"finish":true' not in await owner.recv_raw()


async def test_instances_survive_a_disconnect(emu: Emulator) -> None:
    async with client_for(emu) as first:
        work_id = await first.setup("llm")
    async with client_for(emu) as second:
        assert (await second.call("llm", "taskinfo"))["data"] == [work_id]
        await second.send(work_id, "inference", "llm.utf-8", "still there", request_id="again")
        messages = await second.stream()
        assert {m["request_id"] for m in messages} == {"again"}
    assert [i["work_id"] for i in emu.live_instances()] == [work_id]


async def test_output_of_an_orphan_is_discarded(emu: Emulator) -> None:
    emu.faults.token_delay = 0.02
    async with client_for(emu) as first, client_for(emu) as second:
        work_id = await first.setup("llm")
        await first.send(work_id, "inference", "llm.utf-8", "a b c d e f g h")
        await first.close()
        await second.expect_silence(0.4)  # nothing leaks to other connections
        assert emu.live_instances()[0]["work_id"] == work_id


async def test_control_actions_wait_while_a_setup_loads() -> None:
    engine = ScriptedEngine(Timing(setup_delay=0.4))
    async with started_emulator(engine=engine) as emu, client_for(emu) as client:
        start = time.monotonic()
        setup_id = await client.send("llm", "setup", "llm.setup", LLM_SETUP)
        list_id = await client.send("llm", "taskinfo")
        ping_id = await client.send("sys", "ping")
        order = [(await client.recv())["request_id"] for _ in range(3)]
        assert order == [ping_id, setup_id, list_id]  # sys answers at once; the unit is busy
        assert time.monotonic() - start >= 0.35
        assert [i["state"] for i in emu.live_instances()] == ["ready"]


async def test_loading_instance_is_visible_and_drops_inference() -> None:
    engine = ScriptedEngine(Timing(setup_delay=0.5))
    async with started_emulator(engine=engine) as emu, client_for(emu) as client:
        await client.send("llm", "setup", "llm.setup", LLM_SETUP, request_id="s")
        await asyncio.sleep(0.1)
        assert emu.live_instances()[0]["state"] == "loading"
        await client.send("llm.1000", "inference", "llm.utf-8", "too early")  # no -4, no output
        assert (await client.recv())["request_id"] == "s"
        await client.expect_silence()


async def test_link_and_unlink(client: RawClient) -> None:
    llm = await client.setup("llm")
    asr = await client.setup("asr")
    assert (await client.call(llm, "link", "work_id", "kws.1999"))["error"]["code"] == -20  # not live
    assert (await client.call(llm, "link", "work_id", "tts.1003"))["error"]["code"] == -20  # not accepted
    reply = await client.call(llm, "link", "work_id", asr)
    assert (reply["error"]["code"], reply["work_id"]) == (0, llm)
    # A link whose tag matched is listed even when it failed (main_llm 736-742: push_back, then -20).
    assert (await client.call(llm, "taskinfo"))["data"]["inputs"] == ["llm.utf-8", "kws.1999", asr]
    assert (await client.call(llm, "unlink", "work_id", asr))["error"]["code"] == 0
    assert (await client.call(llm, "taskinfo"))["data"]["inputs"] == ["llm.utf-8", "kws.1999"]


async def test_whisper_and_asr_accept_pause_and_work(client: RawClient) -> None:
    whisper = await client.setup("whisper")
    assert (await client.call(whisper, "pause"))["error"]["code"] == 0
    assert (await client.call(whisper, "work"))["error"]["code"] == 0
    assert (await client.call("asr.1234", "work"))["error"]["code"] == -6
