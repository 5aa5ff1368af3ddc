"""llm-sys dispatch and sys actions (protocol §2.3, §3): error codes, silence, replies' format."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from emulator_helpers import (
    RawClient,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    client_for,
    emu_fixture,  # noqa: F401 (a pytest fixture, used by name)
    request,
    started_emulator,
)
from stackflow_openai.emulator import Emulator
from stackflow_openai.emulator.catalogue import BUILTIN_CATALOGUE_DIR
from stackflow_openai.stackflow.models import ModelDescriptor


def error(reply: dict) -> tuple[int, str]:
    return reply["error"]["code"], reply["error"]["message"]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"request_id":"1","work_id":"sys","action":"ping"',  # closed below: not JSON
        b'{"request_id":1,"work_id":"sys","action":"ping"}',
        b'{"request_id":"1","action":"ping"}',
        b'{"request_id":"1","work_id":5,"action":"ping"}',
        b'{"request_id":"1","work_id":"sys","action":null}',
        b'{"request_id":"1","work_id":"sys","action":"ping","data":NaN}',
        b'{"request_id":"1","work_id":"sys","action":"\xff"}',
    ],
)
async def test_bad_envelopes_get_minus_2_from_sys(client: RawClient, frame: bytes) -> None:
    if not frame.endswith(b"}"):
        frame += b",}"
    await client.send_raw(frame + b"\n")
    reply = await client.recv()
    assert error(reply) == (-2, "json format error")
    assert reply["request_id"] == "0" and reply["work_id"] == "sys"
    assert reply["object"] == "None" and reply["data"] == "None"


@pytest.mark.parametrize("action", ["taskinfo", "setup", "dance"])
async def test_unknown_sys_actions_get_minus_3(client: RawClient, action: str) -> None:
    reply = await client.call("sys", action)
    assert error(reply) == (-3, "action match false") and reply["work_id"] == "sys"


@pytest.mark.parametrize("work_id", ["llm.1000", "llm", "sys", "melotts.77"])
async def test_inference_to_a_non_instance_gets_minus_4(client: RawClient, work_id: str) -> None:
    reply = await client.call(work_id, "inference", "llm.utf-8", "hi")
    assert error(reply) == (-4, "inference data push false") and reply["work_id"] == work_id


async def test_inference_after_exit_gets_minus_4(client: RawClient) -> None:
    work_id = await client.setup("llm")
    assert (await client.call(work_id, "exit"))["error"]["code"] == 0
    assert error(await client.call(work_id, "inference", "llm.utf-8", "hi"))[0] == -4


async def test_unit_not_installed_gets_minus_9() -> None:
    async with started_emulator(installed_units=("llm",)) as emu, client_for(emu) as client:
        reply = await client.call("melotts", "setup", "melotts.setup", {"model": "melotts-en-us"})
        assert error(reply) == (-9, "unit call false") and reply["work_id"] == "melotts"
        assert error(await client.call("camera.1001", "taskinfo"))[0] == -9
        assert (await client.call("llm", "taskinfo"))["error"]["code"] == 0


async def test_unknown_action_on_installed_unit_is_silent(client: RawClient) -> None:
    await client.send("llm", "dance")
    await client.send("whisper.1000", "reboot")
    await client.expect_silence()


@pytest.mark.parametrize(
    ("unit", "action"),
    [
        ("llm", "work"),
        ("vlm", "work"),
        ("melotts", "work"),
        ("tts", "work"),
        ("melotts", "pause"),
        ("tts", "pause"),
    ],
)
async def test_unimplemented_unit_actions_get_minus_18(client: RawClient, unit: str, action: str) -> None:
    reply = await client.call(f"{unit}.1000", action)
    assert error(reply) == (-18, "not have unit action!") and reply["work_id"] == f"{unit}.1000"


@pytest.mark.parametrize("action", ["exit", "pause", "taskinfo", "link", "unlink"])
async def test_control_on_unknown_instance_gets_minus_6_echoing_work_id(
    client: RawClient, action: str
) -> None:
    reply = await client.call("llm.4242", action, "work_id", "kws.1000")
    assert error(reply) == (-6, "Unit Does Not Exist") and reply["work_id"] == "llm.4242"


async def test_ping_version_lstask(client: RawClient) -> None:
    ping = await client.call("sys", "ping")
    assert (ping["object"], ping["data"], error(ping)) == ("None", "None", (0, ""))
    version = await client.call("sys", "version")
    assert (version["object"], version["data"]) == ("sys.utf-8", "v1.6")
    assert error(await client.call("sys", "lstask")) == (-10, "Not available at the moment.")
    echoed = await client.call("", "ping")  # "" is routed as sys but echoed as sent
    assert echoed["work_id"] == "" and echoed["error"]["code"] == 0


async def test_replies_are_compact_sorted_with_integer_created(client: RawClient) -> None:
    await client.send_raw(request("c1", "sys", "cmminfo"))
    line = (await client.recv_raw()).decode()
    assert line.endswith("\n") and line.count("\n") == 1 and " " not in line
    keys = list(json.loads(line))
    assert keys == sorted(keys) == ["created", "data", "error", "object", "request_id", "work_id"]
    created = json.loads(line)["created"]
    assert isinstance(created, int) and abs(created - time.time()) < 5


async def test_non_ascii_output_is_raw_utf8(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", "你好 café")
    raw = await client.recv_raw()
    assert "café".encode() in raw and b"\\u" not in raw


async def test_lsmode_serves_the_catalogue(client: RawClient, emu: Emulator) -> None:
    reply = await client.call("sys", "lsmode")
    assert reply["object"] == "sys.lsmode" and reply["work_id"] == "sys"
    models = {entry["mode"]: ModelDescriptor.from_json(entry) for entry in reply["data"]}
    assert models.keys() == {d.mode for d in emu.catalogue}
    p256 = models["qwen2.5-0.5B-p256-ax630c"]
    assert (p256.unit, p256.prefill_len, p256.kv_cache_len, p256.cmm_size) == ("llm", 256, 1023, None)
    assert models["qwen2.5-0.5B-prefill-20e"].prefill_len == 128
    assert models["internvl2.5-1B-364-ax630c"].prefill_len == 256
    expected_units = {
        "melotts-en-us": "melotts",
        "melotts-zh-cn": "melotts",
        "melotts-ja-jp": "melotts",
        "single-speaker-english-fast": "tts",
        "whisper-tiny": "whisper",
        "whisper-base": "whisper",
        "sherpa-ncnn-streaming-zipformer-20M-2023-02-17": "asr",
        # type kws: a keyword spotter, whatever its name's prefix says
        "sherpa-onnx-kws-zipformer-gigaspeech-3.3M-2024-01-01": "kws",
        "silero-vad": "vad",
    }
    assert {mode: models[mode].unit for mode in expected_units} == expected_units
    assert reply["data"] == [json.loads(path.read_text()) for path in sorted(
        BUILTIN_CATALOGUE_DIR.glob("*.json"))]  # fmt: skip


async def test_cmminfo_reports_kib(client: RawClient) -> None:
    reply = await client.call("sys", "cmminfo")
    assert reply["object"] == "sys.cmminfo"
    assert reply["data"] == {"remain": 3145728, "total": 3145728, "used": 0}


async def test_hwinfo_is_late_and_out_of_order(client: RawClient) -> None:
    await client.send("sys", "hwinfo", request_id="hw")
    await client.send("sys", "ping", request_id="pg")
    first, second = await client.recv(), await client.recv()
    assert (first["request_id"], second["request_id"]) == ("pg", "hw")
    assert second["object"] == "sys.hwinfo" and second["work_id"] == "sys"
    assert set(second["data"]) == {"cpu_loadavg", "eth_info", "mem", "temperature"}
    assert {"ip", "name", "speed"} <= set(second["data"]["eth_info"][0])


async def test_hwinfo_takes_about_one_second_by_default() -> None:
    async with started_emulator(hwinfo_delay=1.0) as emu, client_for(emu) as client:
        start = time.monotonic()
        reply = await client.call("sys", "hwinfo")
        assert reply["object"] == "sys.hwinfo"
        assert 0.9 <= time.monotonic() - start < 2.0


async def test_reset_acks_then_drops_every_connection_and_forgets_everything(emu: Emulator) -> None:
    async with client_for(emu) as first, client_for(emu) as second:
        assert await first.setup("llm") == "llm.1000"
        assert await first.setup("whisper") == "whisper.1001"
        reply = await second.call("sys", "reset")
        assert error(reply) == (0, "llm server restarting ...") and reply["object"] == "None"
        await asyncio.gather(first.expect_eof(), second.expect_eof())
    assert emu.live_instances() == []
    async with client_for(emu) as again:
        assert (await again.call("llm", "taskinfo"))["data"] == []
        assert (await again.call("sys", "cmminfo"))["data"]["used"] == 0
        assert await again.setup("llm") == "llm.1000"  # the counter starts over
