"""DeviceClient: sys calls, setup discipline (no leaks on failure), reset, adopt (fake device)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fake_device import FakeDevice, Request
from stackflow_openai.stackflow import (
    CmmInfo,
    ConnectionLost,
    DeviceClient,
    DeviceTimeout,
    HwInfo,
    ModelLoadFailed,
    TaskFull,
    TaskInfo,
    UnitCallFalse,
    UnitDoesNotExist,
    llm_setup,
)

SETUP = llm_setup("qwen2.5-0.5B-p256-ax630c", system_prompt="Be brief.", max_token_len=1023)


@pytest.fixture
async def device() -> AsyncIterator[FakeDevice]:
    dev = await FakeDevice().start()
    yield dev
    await dev.stop()


@pytest.fixture
async def client(device: FakeDevice) -> AsyncIterator[DeviceClient]:
    dev = DeviceClient("127.0.0.1", device.port, timeout=2.0, setup_timeout=5.0)
    await dev.connect()
    yield dev
    await dev.close()


async def answer(device: FakeDevice, action: str, **reply: object) -> Request:
    req = await device.next(action)
    await req.ok(**reply)  # type: ignore[arg-type]
    return req


async def test_sys_calls_are_typed(device: FakeDevice, client: DeviceClient) -> None:
    ping = asyncio.create_task(client.ping())
    await answer(device, "ping")
    assert await ping is None

    version = asyncio.create_task(client.version())
    await answer(device, "version", object="sys.utf-8", data="v1.6")
    assert await version == "v1.6"

    cmm = asyncio.create_task(client.cmminfo())
    await answer(device, "cmminfo", object="sys.cmminfo", data={"remain": 10, "total": 30, "used": 20})
    assert await cmm == CmmInfo(remain=10, total=30, used=20)

    hw = asyncio.create_task(client.hwinfo())
    eth = [{"ip": "192.168.20.186", "name": "eth0", "speed": "100"}]
    await answer(
        device,
        "hwinfo",
        object="sys.hwinfo",
        data={"cpu_loadavg": 12, "eth_info": eth, "mem": 41, "temperature": 47250},
    )
    assert await hw == HwInfo(cpu_loadavg=12, mem=41, temperature=47250, eth_info=eth)
    assert {r.link for r in device.log} == {device.link(0)}  # one shared sys connection


async def test_lsmode_returns_model_descriptors(device: FakeDevice, client: DeviceClient) -> None:
    call = asyncio.create_task(client.lsmode())
    descriptors = [
        {
            "mode": "qwen2.5-0.5B-p256-ax630c",
            "type": "llm",
            "capabilities": ["text_generation", "chat"],
            "compile_flage": "--kv_cache_len 1023 --prefill_len 256",
            "input_type": ["llm.utf-8"],
            "output_type": ["llm.utf-8.stream"],
            "mode_param": {"tokens_embed_size": 896},
        },
        {"mode": "melotts-en-us", "type": "tts", "mode_param": {}},
        "not a descriptor",
    ]
    await answer(device, "lsmode", object="sys.lsmode", data=descriptors)
    llm, tts = await call
    assert (llm.mode, llm.unit, llm.prefill_len, llm.kv_cache_len) == (
        "qwen2.5-0.5B-p256-ax630c",
        "llm",
        256,
        1023,
    )
    assert llm.capabilities == ("text_generation", "chat")
    assert (tts.unit, tts.prefill_len) == ("melotts", None)


async def test_tasklist_and_taskinfo(device: FakeDevice, client: DeviceClient) -> None:
    tasks = asyncio.create_task(client.tasklist("llm"))
    req = await answer(device, "taskinfo", object="llm.tasklist", data=["llm.1002", "llm.1003"])
    assert req.work_id == "llm" and await tasks == ["llm.1002", "llm.1003"]

    info = asyncio.create_task(client.taskinfo("llm.1002"))
    data = {"enoutput": True, "inputs": ["llm.utf-8"], "model": "qwen", "response_format": "llm.utf-8.stream"}
    req = await answer(device, "taskinfo", object="llm.taskinfo", data=data)
    assert req.work_id == "llm.1002"
    assert await info == TaskInfo("llm.1002", "qwen", "llm.utf-8.stream", True, ("llm.utf-8",))


async def test_exit_instance_and_its_errors(device: FakeDevice, client: DeviceClient) -> None:
    done = asyncio.create_task(client.exit_instance("llm.1002"))
    assert (await answer(device, "exit")).work_id == "llm.1002"
    await done
    missing = asyncio.create_task(client.exit_instance("llm.1099"))
    await (await device.next("exit")).error(-6, "Unit Does Not Exist")
    with pytest.raises(UnitDoesNotExist):
        await missing


async def test_reset_then_the_next_call_reconnects(device: FakeDevice, client: DeviceClient) -> None:
    reset = asyncio.create_task(client.reset())
    req = await device.next("reset")
    await req.ok(message="llm server restarting ...")
    await req.link.close()  # the device drops every connection
    await reset
    ping = asyncio.create_task(client.ping())
    again = await answer(device, "ping")
    await ping
    assert again.link is not req.link


async def test_sys_call_timeout(device: FakeDevice) -> None:
    async with DeviceClient("127.0.0.1", device.port, timeout=0.2) as dev:
        with pytest.raises(DeviceTimeout):
            await dev.ping()


# ---- open_unit --------------------------------------------------------------------------------


async def test_open_unit_uses_a_dedicated_connection(device: FakeDevice, client: DeviceClient) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    live.append("llm.1002")
    assert (setup.work_id, setup.msg["object"], setup.msg["data"]) == ("llm", "llm.setup", SETUP)
    assert list(setup.msg) == ["request_id", "work_id", "action", "object", "data"]
    sys_links = {r.link for r in device.log if r.action == "taskinfo"}
    assert setup.link not in sys_links
    await setup.ok(work_id="llm.1002")
    unit = await opening
    assert (unit.work_id, unit.unit, unit.setup, unit.busy, unit.broken) == (
        "llm.1002",
        "llm",
        SETUP,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("code", "message", "exc_type"),
    [
        (-5, "Model loading failed.", ModelLoadFailed),
        (-21, "task full", TaskFull),
        (-9, "unit call false", UnitCallFalse),
    ],
)
async def test_refused_setup_raises_and_leaves_nothing(
    device: FakeDevice, client: DeviceClient, code: int, message: str, exc_type: type[Exception]
) -> None:
    live = ["llm.1000"]
    device.serve_tasklist("llm", live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    await setup.error(code, message, work_id="llm")
    with pytest.raises(exc_type):
        await opening
    await asyncio.sleep(0.05)
    assert [r.action for r in device.log].count("exit") == 0
    assert setup.link.reader.at_eof()  # the client closed the setup connection
    assert live == ["llm.1000"]


async def test_setup_timeout_exits_the_instance_it_left(device: FakeDevice, client: DeviceClient) -> None:
    live = ["llm.1000"]  # someone else's, must survive
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP, timeout=0.3))
    await device.next("setup")
    live.append("llm.1001")  # the device created the instance but never answered
    with pytest.raises(DeviceTimeout):
        await opening  # at once: the clean-up goes on in the background
    await asyncio.wait_for(asyncio.gather(*client._reapers), 5)
    assert live == ["llm.1000"]
    assert [r.work_id for r in device.log if r.action == "exit"] == ["llm.1001"]


async def test_cancelled_setup_exits_the_instance_named_by_the_late_reply(
    device: FakeDevice, client: DeviceClient
) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening  # returns at once: the model keeps loading on the device
    live.append("llm.1001")
    await setup.ok(work_id="llm.1001")  # the load finishes later
    await client.close()  # waits for the background clean-up
    assert live == []
    [exit_req] = [r for r in device.log if r.action == "exit"]
    assert exit_req.work_id == "llm.1001" and exit_req.link is setup.link


async def test_cancelled_setup_without_reply_falls_back_to_the_task_list(
    device: FakeDevice, client: DeviceClient
) -> None:
    live = ["llm.1000"]  # someone else's, must survive
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP, timeout=0.3))
    await device.next("setup")
    live.append("llm.1001")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await client.close()
    assert live == ["llm.1000"]


async def test_cleanup_survives_a_cancellation_of_the_failing_setup(
    device: FakeDevice, client: DeviceClient
) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    exits: list[Request] = []
    exit_seen = asyncio.Event()

    async def slow_exit(req: Request) -> bool:
        if req.action != "exit":
            return False
        exits.append(req)
        exit_seen.set()
        await asyncio.sleep(0.2)
        live.remove(req.work_id)
        await req.ok()
        return True

    device.respond(slow_exit)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    live.append("llm.1001")
    await setup.link.close()  # the outcome is unknown: open_unit waits for its clean-up
    async with asyncio.timeout(2):
        await exit_seen.wait()  # the clean-up has started
    opening.cancel()  # impatient caller
    with pytest.raises(asyncio.CancelledError):
        await opening
    await client.close()  # waits for the background clean-up
    assert live == [] and [r.work_id for r in exits] == ["llm.1001"]


async def test_setup_connection_lost_exits_the_instance(device: FakeDevice, client: DeviceClient) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    live.append("llm.1001")
    await setup.link.close()
    with pytest.raises(ConnectionLost):
        await opening
    assert live == []


async def test_setups_of_one_unit_are_serialised(device: FakeDevice, client: DeviceClient) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    first = asyncio.create_task(client.open_unit("llm", SETUP))
    second = asyncio.create_task(client.open_unit("llm", SETUP))
    setup1 = await device.next("setup")
    with pytest.raises(TimeoutError):
        await device.next("setup", timeout=0.2)  # the second waits for the first
    live.append("llm.1002")
    await setup1.ok(work_id="llm.1002")
    setup2 = await device.next("setup")
    live.append("llm.1003")
    await setup2.ok(work_id="llm.1003")
    assert {(await first).work_id, (await second).work_id} == {"llm.1002", "llm.1003"}


async def test_close_exits_every_unit_still_open(device: FakeDevice) -> None:
    live: list[str] = []
    device.serve_tasklist("llm", live)
    device.serve_exit(live)
    client = DeviceClient("127.0.0.1", device.port, timeout=2.0)
    opening = asyncio.create_task(client.open_unit("llm", SETUP))
    setup = await device.next("setup")
    live.append("llm.1002")
    await setup.ok(work_id="llm.1002")
    unit = await opening
    await client.close()
    assert live == [] and unit.exited


async def test_adopt_unit_redirects_output_to_its_own_connection(
    device: FakeDevice, client: DeviceClient
) -> None:
    device.serve_exit(["llm.1005"])
    adopting = asyncio.create_task(client.adopt_unit("llm.1005"))
    req = await device.next("taskinfo")
    data = {"enoutput": True, "inputs": ["llm.utf-8"], "model": "qwen", "response_format": "llm.utf-8.stream"}
    await req.ok(object="llm.taskinfo", data=data)
    unit = await adopting
    assert req.work_id == "llm.1005" and req.link is not device.link(0)
    assert unit.setup == {
        "model": "qwen",
        "response_format": "llm.utf-8.stream",
        "enoutput": True,
        "input": ["llm.utf-8"],
    }
    assert unit.connection.peer.endswith(str(device.port)) and unit.streaming
