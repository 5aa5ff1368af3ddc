"""Connection: correlation, pipelining, routing, error mapping, timeouts, drops (fake device)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from fake_device import REACE_RESET_LINE, FakeDevice, reply_dict
from stackflow_openai.stackflow import (
    ActionMatchFalse,
    Base64DecodeError,
    Connection,
    ConnectionLost,
    DeviceError,
    DeviceTimeout,
    FileError,
    InferencePushFalse,
    JsonFormatError,
    LinkFalse,
    ModelLoadFailed,
    ModelRunFailed,
    NotAvailable,
    NoUnitAction,
    ReaceReset,
    Reply,
    StreamIndexError,
    TaskFull,
    UnitCallFalse,
    UnitDoesNotExist,
    UnitError,
)
from stackflow_openai.stackflow.codec import dump_reply


@pytest.fixture
async def device() -> AsyncIterator[FakeDevice]:
    dev = await FakeDevice().start()
    yield dev
    await dev.stop()


@pytest.fixture
async def conn(device: FakeDevice) -> AsyncIterator[Connection]:
    connection = await Connection.open("127.0.0.1", device.port, connect_timeout=2)
    yield connection
    await connection.close()


async def next_item(queue: asyncio.Queue[Reply | BaseException]) -> Reply | BaseException:
    async with asyncio.timeout(2):
        return await queue.get()


async def test_request_gets_its_reply(device: FakeDevice, conn: Connection) -> None:
    call = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    req = await device.next("ping")
    assert req.raw == f'{{"request_id":"{req.request_id}","work_id":"sys","action":"ping"}}'.encode()
    assert req.request_id.isalnum()
    await req.ok(work_id="sys")
    reply = await call
    assert reply.ok and reply.data == "None" and reply.request_id == req.request_id


async def test_pipelined_requests_answered_out_of_order(device: FakeDevice, conn: Connection) -> None:
    calls = [asyncio.create_task(conn.request("sys", "version", timeout=2)) for _ in range(8)]
    reqs = [await device.next("version") for _ in calls]
    assert len({r.request_id for r in reqs}) == 8  # unique ids on one connection
    assert len({r.link for r in reqs}) == 1  # all on the same connection, without waiting
    for req in reversed(reqs):
        await req.ok(object="sys.utf-8", data=f"answer-{req.request_id}")
    for call, req in zip(calls, reqs, strict=True):
        assert (await call).data == f"answer-{req.request_id}"


async def test_replies_split_at_arbitrary_byte_boundaries(device: FakeDevice, conn: Connection) -> None:
    calls = [asyncio.create_task(conn.request("sys", "lsmode", timeout=3)) for _ in range(3)]
    reqs = [await device.next("lsmode") for _ in calls]
    texts = ["ascii } { \\ text", "ünïcödé €", "😀 emoji 你好"]
    stream = b"".join(
        dump_reply(r.reply(object="sys.lsmode", data=[{"mode": t}])) for r, t in zip(reqs, texts, strict=True)
    )
    rng = random.Random(7)
    pos, link = 0, reqs[0].link
    while pos < len(stream):
        step = rng.choice([1, 1, 2, 3, 5, 64])
        await link.write(stream[pos : pos + step])
        pos += step
        await asyncio.sleep(0)
    assert [(await c).data[0]["mode"] for c in calls] == texts


async def test_replies_glued_with_unit_output_are_routed(device: FakeDevice, conn: Connection) -> None:
    queue = conn.subscribe("llm.1002")
    call = asyncio.create_task(conn.request("llm.1002", "pause", timeout=2))
    req = await device.next("pause")
    terminator = reply_dict(
        "i1", "llm.1002", object="llm.utf-8.stream", data={"delta": "", "finish": True, "index": 3}
    )
    await req.link.write(dump_reply(terminator) + dump_reply(req.reply()))  # terminator first, one read
    assert (await call).request_id == req.request_id
    item = await next_item(queue)
    assert isinstance(item, Reply) and item.data["finish"] is True and item.request_id == "i1"


ERRORS: list[tuple[int, str, type[DeviceError]]] = [
    (-2, "json format error.", JsonFormatError),
    (-3, "action match false", ActionMatchFalse),
    (-4, "inference data push false", InferencePushFalse),
    (-5, "Model loading failed.", ModelLoadFailed),
    (-6, "Unit Does Not Exist", UnitDoesNotExist),
    (-9, "unit call false", UnitCallFalse),
    (-10, "Not available at the moment.", NotAvailable),
    (-11, "Model run failed.", ModelRunFailed),
    (-17, "file does not exist.", FileError),
    (-18, "not have unit action!", NoUnitAction),
    (-20, "link false", LinkFalse),
    (-21, "task full", TaskFull),
    (-22, "kws error", UnitError),
    (-23, "Base64 decoding error.", Base64DecodeError),
    (-25, "Stream data index error.", StreamIndexError),
    (-99, "something new", DeviceError),
]


@pytest.mark.parametrize(("code", "message", "exc_type"), ERRORS)
async def test_every_error_code_maps_to_its_exception(
    device: FakeDevice, conn: Connection, code: int, message: str, exc_type: type[DeviceError]
) -> None:
    call = asyncio.create_task(conn.request("llm.1002", "taskinfo", timeout=2))
    req = await device.next("taskinfo")
    await req.error(code, message)
    with pytest.raises(exc_type) as info:
        await call
    assert type(info.value) is exc_type
    assert (info.value.code, info.value.message, info.value.work_id) == (code, message, "llm.1002")
    assert info.value.request_id == req.request_id


async def test_reace_reset_fails_every_pending_waiter(device: FakeDevice, conn: Connection) -> None:
    queue = conn.subscribe("llm.1002")
    calls = [asyncio.create_task(conn.request("sys", "cmminfo", timeout=2)) for _ in range(2)]
    reqs = [await device.next("cmminfo") for _ in calls]
    await reqs[0].link.write(REACE_RESET_LINE)  # no newline, as the daemon sends it
    for call in calls:
        with pytest.raises(ReaceReset) as info:
            await call
        assert info.value.code == -1 and info.value.message == "reace reset"
    assert isinstance(await next_item(queue), ReaceReset)
    # The connection itself is still usable.
    again = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    await (await device.next("ping")).ok()
    assert (await again).ok


async def test_reace_reset_followed_by_a_reply_in_the_same_read(device: FakeDevice, conn: Connection) -> None:
    first = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    req1 = await device.next("ping")
    await req1.link.write(REACE_RESET_LINE)
    with pytest.raises(ReaceReset):
        await first
    second = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    req2 = await device.next("ping")
    await req2.link.write(REACE_RESET_LINE + dump_reply(req2.reply()))
    # The reset line fails the waiter before the reply (in the same read) could reach it.
    with pytest.raises(ReaceReset):
        await second


async def test_json_format_error_with_request_id_zero_fails_pending(
    device: FakeDevice, conn: Connection
) -> None:
    call = asyncio.create_task(conn.request("sys", "hwinfo", timeout=2))
    req = await device.next("hwinfo")
    await req.link.send(reply_dict("0", "sys", code=-2, message="json format error"))
    with pytest.raises(JsonFormatError) as info:
        await call
    assert info.value.message == "json format error" and info.value.request_id == "0"


@pytest.mark.parametrize("code", [-11, -23, -25])
async def test_inference_errors_with_bare_unit_name_reach_that_units_subscribers(
    device: FakeDevice, conn: Connection, code: int
) -> None:
    llm_a, llm_b, vlm = conn.subscribe("llm.1002"), conn.subscribe("llm.1003"), conn.subscribe("vlm.1004")
    # A control request is pending; the device stamps the error with that request's id (§2.4).
    pending = asyncio.create_task(conn.request("llm", "taskinfo", timeout=0.5))
    req = await device.next("taskinfo")
    await req.link.send(reply_dict(req.request_id, "llm", code=code, message="boom"))
    for queue in (llm_a, llm_b):
        item = await next_item(queue)
        assert isinstance(item, Reply) and item.code == code and item.work_id == "llm"
    assert vlm.empty()
    with pytest.raises(DeviceTimeout):  # the error did not resolve the unrelated control request
        await pending


async def test_unit_output_is_routed_by_work_id_not_request_id(device: FakeDevice, conn: Connection) -> None:
    mine, other = conn.subscribe("llm.1002"), conn.subscribe("llm.1003")
    rid = await conn.send({"work_id": "llm.1002", "action": "inference", "object": "llm.utf-8", "data": "hi"})
    req = await device.next("inference")
    assert req.request_id == rid and req.msg["data"] == "hi"
    await req.link.send(reply_dict("stale-id", "llm.1002", object="llm.utf-8", data="hello"))
    item = await next_item(mine)
    assert isinstance(item, Reply) and item.data == "hello"
    assert other.empty()


async def test_unrouted_replies_are_kept_for_diagnostics(device: FakeDevice, conn: Connection) -> None:
    call = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    req = await device.next("ping")
    await req.link.send(reply_dict("nobody", "llm.1009", data="stolen output"), req.reply())
    await call
    assert [r.work_id for r in conn.unrouted] == ["llm.1009"]


async def test_timeout_raises_device_timeout_and_late_reply_is_harmless(
    device: FakeDevice, conn: Connection
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeviceTimeout):
        await conn.request("sys", "hwinfo", timeout=0.2)
    assert loop.time() - start < 1.0
    late = await device.next("hwinfo")
    await late.ok(object="sys.hwinfo", data={})
    call = asyncio.create_task(conn.request("sys", "ping", timeout=2))
    await (await device.next("ping")).ok()
    assert (await call).ok and not conn.closed


async def test_dropped_connection_fails_waiters_and_subscribers(device: FakeDevice, conn: Connection) -> None:
    queue = conn.subscribe("llm.1002")
    call = asyncio.create_task(conn.request("llm.1002", "pause", timeout=5))
    req = await device.next("pause")
    delta = reply_dict(
        "i1", "llm.1002", object="llm.utf-8.stream", data={"delta": "Hel", "finish": False, "index": 0}
    )
    await req.link.send(delta)
    await req.link.close()
    with pytest.raises(ConnectionLost):
        await call
    first, second = await next_item(queue), await next_item(queue)
    assert isinstance(first, Reply) and isinstance(second, ConnectionLost)
    assert conn.closed
    with pytest.raises(ConnectionLost):
        await conn.request("sys", "ping", timeout=2)
    assert isinstance(await next_item(conn.subscribe("llm.1003")), ConnectionLost)


async def test_close_fails_pending_and_is_idempotent(device: FakeDevice, conn: Connection) -> None:
    call = asyncio.create_task(conn.request("sys", "ping", timeout=5))
    await device.next("ping")
    await conn.close()
    await conn.close()
    with pytest.raises(ConnectionLost):
        await call


async def test_connect_to_closed_port_raises_connection_lost() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionLost):
        await Connection.open("127.0.0.1", port, connect_timeout=2)


async def test_requests_with_braces_reach_the_device_intact(device: FakeDevice, conn: Connection) -> None:
    data = {"prompt": "use {curly} and \\ backslash }", "model": "m"}
    call = asyncio.create_task(conn.request("llm", "setup", object="llm.setup", data=data, timeout=2))
    req = await device.next("setup")
    assert req.msg["data"] == data and req.link.framer.resets == 0
    await req.ok(work_id="llm.1002")
    assert (await call).work_id == "llm.1002"
    assert device.garbage == []


async def test_request_ids_differ_between_connections(device: FakeDevice) -> None:
    # Unit output carries the request_id of whichever connection last sent an inference; random
    # per-connection prefixes keep it from ever matching another connection's waiter.
    first = await Connection.open("127.0.0.1", device.port)
    second = await Connection.open("127.0.0.1", device.port)
    try:
        ids = {first.new_request_id(), second.new_request_id()}
        assert len(ids) == 2 and all(i.isalnum() for i in ids)
    finally:
        await first.close()
        await second.close()
