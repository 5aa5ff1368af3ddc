"""The device client against the real emulator: every action, every reachable error code, and
the no-leak discipline (setups that fail, are cancelled or time out; dropped connections)."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import io
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from PIL import Image

from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.emulator.engines.scripted import scripted_answer
from stackflow_openai.stackflow import (
    ActionMatchFalse,
    Base64DecodeError,
    Connection,
    ConnectionLost,
    DeviceClient,
    DeviceTimeout,
    InferencePushFalse,
    JsonFormatError,
    LinkFalse,
    ModelLoadFailed,
    ModelRunFailed,
    NotAvailable,
    NoUnitAction,
    ReaceReset,
    StreamIndexError,
    TaskFull,
    UnitBroken,
    UnitCallFalse,
    UnitDoesNotExist,
    asr_setup,
    llm_setup,
    melotts_setup,
    tts_setup,
    vlm_setup,
    whisper_setup,
)

LLM = "qwen2.5-0.5B-p256-ax630c"
VLM = "internvl2.5-1B-364-ax630c"
SETUP = llm_setup(LLM, system_prompt="Be {brief}.", max_token_len=1023)
MakeEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def make_emulator() -> AsyncIterator[MakeEmulator]:
    started: list[Emulator] = []

    async def make(timing: Timing | None = None, **kwargs: Any) -> Emulator:
        kwargs.setdefault("hwinfo_delay", 0.05)
        emu = Emulator(
            engine=kwargs.pop("engine", None) or ScriptedEngine(timing=timing or Timing()), **kwargs
        )
        await emu.start(host="127.0.0.1", port=0)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()


@pytest.fixture
async def emu(make_emulator: MakeEmulator) -> Emulator:
    return await make_emulator()


@pytest.fixture
async def dev(emu: Emulator) -> AsyncIterator[DeviceClient]:
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0, setup_timeout=5.0) as client:
        yield client


def pcm_tone(seconds: float, freq: float = 440.0) -> bytes:
    samples = array.array(
        "h", (int(8000 * math.sin(2 * math.pi * freq * i / 16000)) for i in range(int(16000 * seconds)))
    )
    return samples.tobytes()


async def wait_until(condition: Callable[[], bool], limit: float = 2.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - polling emulator state, no event to wait on
            await asyncio.sleep(0.01)


# ---- sys ---------------------------------------------------------------------------------------


async def test_sys_calls(emu: Emulator, dev: DeviceClient) -> None:
    await dev.ping()
    assert await dev.version() == "v1.6"
    models = {m.mode: m for m in await dev.lsmode()}
    assert models[LLM].unit == "llm" and models[LLM].prefill_len == 256
    assert models["whisper-tiny"].unit == "whisper" and models["melotts-en-us"].unit == "melotts"
    cmm = await dev.cmminfo()
    assert cmm.total > 0 and cmm.remain + cmm.used == cmm.total
    hw = await dev.hwinfo()
    assert hw.temperature > 1000 and 0 <= hw.mem <= 100 and hw.eth_info
    assert await dev.tasklist("llm") == []


async def test_pipelined_sys_calls_complete_out_of_order(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(hwinfo_delay=0.3)
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0) as dev:
        finished: list[str] = []

        async def run(name: str, call: Awaitable[Any]) -> None:
            await call
            finished.append(name)

        await asyncio.gather(
            run("hwinfo", dev.hwinfo()), run("ping", dev.ping()), run("version", dev.version())
        )
        assert finished[-1] == "hwinfo"  # sent first, answered last, on the same connection


async def test_low_level_sys_errors(emu: Emulator, dev: DeviceClient) -> None:
    conn = await Connection.open("127.0.0.1", emu.port)
    try:
        with pytest.raises(ActionMatchFalse):  # there is no sys.taskinfo (-3)
            await conn.request("sys", "taskinfo", timeout=2)
        with pytest.raises(NotAvailable):  # -10
            await conn.request("sys", "lstask", timeout=2)
        with pytest.raises(UnitDoesNotExist):  # -6
            await dev.exit_instance("llm.1999")
    finally:
        await conn.close()


async def test_bad_json_and_stray_brace_fail_whatever_is_in_flight(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(hwinfo_delay=0.3)
    conn = await Connection.open("127.0.0.1", emu.port)
    try:
        pending = asyncio.create_task(conn.request("sys", "hwinfo", timeout=2))
        await asyncio.sleep(0.05)
        await conn.send_raw(b'{"request_id":1,"work_id":"sys","action":"ping"}')  # numeric id: -2
        with pytest.raises(JsonFormatError):
            await pending
        pending = asyncio.create_task(conn.request("sys", "hwinfo", timeout=2))
        await asyncio.sleep(0.05)
        await conn.send_raw(b"}")  # stray closer: -1 reace reset, no newline
        with pytest.raises(ReaceReset):
            await pending
        assert (await conn.request("sys", "ping", timeout=2)).ok  # the connection survives
    finally:
        await conn.close()


async def test_uninstalled_unit_is_unit_call_false(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(installed_units=["llm"])
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0) as dev:
        with pytest.raises(UnitCallFalse):  # -9
            await dev.open_unit("whisper", whisper_setup("whisper-tiny", "en"))
    assert emu.live_instances() == []


# ---- llm -----------------------------------------------------------------------------------------


async def test_llm_lifecycle_with_braces_in_prompt_and_system_prompt(
    emu: Emulator, dev: DeviceClient
) -> None:
    unit = await dev.open_unit("llm", SETUP)
    assert unit.work_id.startswith("llm.") and await dev.tasklist("llm") == [unit.work_id]
    prompt = 'def f(x): { return "\\\\" } — ünï 😀'
    text = "".join([piece async for piece in unit.generate(prompt)])
    assert text == scripted_answer(prompt)
    info = await dev.taskinfo(unit.work_id)
    assert (info.model, info.response_format, info.enoutput) == (LLM, "llm.utf-8.stream", True)
    await unit.exit()
    assert emu.live_instances() == [] and unit.exited


async def test_llm_non_stream(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", llm_setup(LLM, system_prompt="x", max_token_len=1023, stream=False))
    assert [p async for p in unit.generate("one two three")] == [scripted_answer("one two three")]
    await unit.exit()


async def test_pause_mid_generation_then_reuse(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    emu.faults.token_delay = 0.02
    long_prompt = " ".join(f"word{i}" for i in range(40))
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in unit.generate(long_prompt):
            pieces.append(piece)

    consumer = asyncio.create_task(consume())
    await wait_until(lambda: bool(pieces))
    await unit.pause(timeout=2)
    await asyncio.wait_for(consumer, 2)
    assert 0 < len("".join(pieces)) < len(scripted_answer(long_prompt))
    assert not unit.busy and not unit.broken
    emu.faults.token_delay = None
    assert "".join([p async for p in unit.generate("again please")]) == scripted_answer("again please")
    await unit.exit()


async def test_abandoned_generation_is_paused_and_the_unit_reused(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    emu.faults.token_delay = 0.02
    async with contextlib.aclosing(unit.generate(" ".join(["talk"] * 40))) as gen:
        async for _ in gen:
            break
    assert not unit.busy and not unit.broken
    emu.faults.token_delay = None
    assert "".join([p async for p in unit.generate("fresh start")]) == scripted_answer("fresh start")
    await unit.exit()
    assert emu.live_instances() == []


async def test_cancelled_consumer_leaves_a_clean_unit(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    emu.faults.token_delay = 0.02
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in unit.generate(" ".join(["talk"] * 40)):
            started.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 2)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert not unit.busy and not unit.broken
    emu.faults.token_delay = None
    assert "".join([p async for p in unit.generate("next")]) == scripted_answer("next")
    await unit.exit()


async def test_connection_dropped_mid_stream(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    emu.faults.close_mid_stream = 1
    emu.faults.close_after_deltas = 1
    pieces: list[str] = []
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(3):
            async for piece in unit.generate("tell me a long story about rivers"):
                pieces.append(piece)
    assert unit.broken and len(pieces) <= 1
    assert len(emu.live_instances()) == 1  # a disconnect does not free the instance (§1.4)
    await unit.exit()  # goes through a fresh connection
    assert emu.live_instances() == []


async def test_missing_finish_is_an_idle_timeout(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    emu.faults.drop_finish = 1
    with pytest.raises(DeviceTimeout):
        async for _ in unit.generate("hello", idle_timeout=0.3):
            pass
    assert unit.broken
    with pytest.raises(UnitBroken):
        await unit.infer("x", object="llm.utf-8")
    await unit.exit()
    assert emu.live_instances() == []


async def test_exited_behind_the_handles_back_is_inference_push_false(
    emu: Emulator, dev: DeviceClient
) -> None:
    unit = await dev.open_unit("llm", SETUP)
    await dev.exit_instance(unit.work_id)
    with pytest.raises(InferencePushFalse):  # -4
        async for _ in unit.generate("hello", idle_timeout=2):
            pass
    assert unit.broken
    await unit.exit()  # -6 now: counts as exited
    assert unit.exited


async def test_work_on_llm_is_no_unit_action_and_link_false(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    with pytest.raises(NoUnitAction):  # -18
        await unit.connection.request(unit.work_id, "work", timeout=2)
    with pytest.raises(LinkFalse):  # -20: llm links only asr/kws
        await unit.connection.request(unit.work_id, "link", object="work_id", data="melotts.1999", timeout=2)
    await unit.exit()


async def test_stream_index_gap_is_stream_index_error(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    await unit.infer({"delta": "hello", "index": 1, "finish": True}, object="llm.utf-8.stream")
    with pytest.raises(StreamIndexError):  # -25, bare unit name, another request's id
        async for _ in unit.outputs(idle_timeout=2):
            pass
    assert not unit.broken
    await unit.infer_chunks(["hello ", "again"], object="llm.utf-8.stream")
    text = "".join([r.data["delta"] async for r in unit.outputs(idle_timeout=2)])
    assert text == scripted_answer("hello again")
    await unit.exit()


async def test_instance_limit_is_task_full_and_failed_setups_leak_nothing(
    emu: Emulator, dev: DeviceClient
) -> None:
    first = await dev.open_unit("llm", SETUP)
    second = await dev.open_unit("llm", SETUP)
    with pytest.raises(TaskFull):  # -21: llm allows 2
        await dev.open_unit("llm", SETUP)
    assert {i["work_id"] for i in emu.live_instances()} == {first.work_id, second.work_id}
    await first.exit()
    await second.exit()
    with pytest.raises(ModelLoadFailed):  # -5: unknown model
        await dev.open_unit("llm", llm_setup("no-such-model", system_prompt="", max_token_len=127))
    emu.faults.fail_setup = 1
    emu.faults.fail_setup_code = -2
    with pytest.raises(JsonFormatError) as info:  # llm reports -2 as "kws" (copy-paste bug)
        await dev.open_unit("llm", SETUP)
    assert info.value.work_id == "kws"
    assert emu.live_instances() == []


# ---- setup discipline --------------------------------------------------------------------------


async def test_cancelled_setup_leaks_nothing(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(Timing(setup_delay=0.3))
    dev = DeviceClient("127.0.0.1", emu.port, timeout=2.0)
    opening = asyncio.create_task(dev.open_unit("llm", SETUP))
    await wait_until(lambda: bool(emu.live_instances()))  # the setup reached the device
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await dev.close()  # waits for the clean-up: the load finishes, then the instance is exited
    assert emu.live_instances() == []


async def test_setup_timeout_leaks_nothing(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(Timing(setup_delay=0.4))
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0) as dev:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await dev.open_unit("llm", SETUP, timeout=0.1)
        assert time.monotonic() - started < 0.35  # not held up by the clean-up
        # The next setup of the unit waits for the clean-up (it holds the unit's setup lock).
        unit = await dev.open_unit("llm", SETUP)
        assert [i["work_id"] for i in emu.live_instances()] == [unit.work_id]
        await unit.exit()


async def test_hung_setup_times_out_and_reset_recovers(emu: Emulator) -> None:
    async with DeviceClient("127.0.0.1", emu.port, timeout=0.3) as dev:
        emu.faults.hang_setup = 1
        with pytest.raises(DeviceTimeout):
            await dev.open_unit("llm", SETUP, timeout=0.2)
        # The unit is blocked: nothing can exit the loading instance but a reset.
        assert [i["state"] for i in emu.live_instances()] == ["loading"]
        await dev.reset()
        assert emu.live_instances() == []
        await dev.ping()  # reconnected
        unit = await dev.open_unit("llm", SETUP)
        assert unit.work_id == "llm.1000"  # the counter restarted
        await unit.exit()


async def test_reset_breaks_every_handle_and_exit_still_succeeds(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    await dev.reset()
    await asyncio.sleep(0.05)
    assert unit.broken and emu.live_instances() == []
    await unit.exit()  # -6 through a fresh connection: already gone
    assert unit.exited


async def test_orphan_of_a_dropped_connection_is_found_and_exited(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("llm", SETUP)
    await unit.connection.close()  # e.g. the gateway crashed
    assert await dev.tasklist("llm") == [unit.work_id]
    await dev.exit_instance(unit.work_id)
    assert emu.live_instances() == []


async def test_adopt_unit_takes_over_output(emu: Emulator, dev: DeviceClient) -> None:
    orphan = await dev.open_unit("llm", SETUP)
    await orphan.connection.close()
    unit = await dev.adopt_unit(orphan.work_id)
    assert unit.setup["model"] == LLM and unit.streaming
    assert "".join([p async for p in unit.generate("adopted")]) == scripted_answer("adopted")
    await unit.exit()
    assert emu.live_instances() == []


# ---- speech and vision -------------------------------------------------------------------------


async def test_melotts_stream_audio_and_no_pause(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("melotts", melotts_setup("melotts-en-us"))
    await unit.infer("Hello {there}. How are you", object="tts.utf-8")
    replies = [r async for r in unit.outputs(idle_timeout=2)]
    assert replies[-1].data["finish"] is True and len(replies) == 2
    pcm = b"".join(base64.b64decode(r.data["delta"]) for r in replies)
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    with pytest.raises(NoUnitAction):  # melotts has no pause (-18)
        await unit.pause(timeout=2)
    await unit.exit()


async def test_tts_1_6_non_stream_one_message_per_segment(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator(units="main")
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0, setup_timeout=5.0) as dev:
        unit = await dev.open_unit("tts", tts_setup("single-speaker-english-fast"))
        await unit.infer("One. Two.", object="tts.utf-8")
        segments = [[r.data async for r in unit.outputs(idle_timeout=2)] for _ in range(2)]
        assert all(len(base64.b64decode(s[0])) > 0 for s in segments)
        await unit.exit()


async def test_whisper_chunked_pcm_and_bad_base64(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("whisper", whisper_setup("whisper-tiny", "en"))
    await unit.infer("@@@@not base64", object="whisper.pcm.base64")
    with pytest.raises(Base64DecodeError):  # -23
        async for _ in unit.outputs(idle_timeout=2):
            pass
    b64 = base64.b64encode(pcm_tone(1.2)).decode()
    await unit.infer_base64_stream(b64, object="whisper.pcm.stream.base64", chunk_chars=4096)
    [reply] = [r async for r in unit.outputs(idle_timeout=2)]
    assert reply.object == "asr.utf-8" and reply.data.endswith(".") and len(reply.data) > 1
    await unit.exit()


async def test_asr_stream_ends_with_finish(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("asr", asr_setup("sherpa-ncnn-streaming-zipformer-20M-2023-02-17"))
    silence = b"\0\0" * 16000 * 3  # the endpoint needs trailing silence (§5.5)
    b64 = base64.b64encode(pcm_tone(1.0) + silence).decode()
    await unit.infer_base64_stream(b64, object="asr.pcm.stream.base64", chunk_chars=8192)
    replies = [r async for r in unit.outputs(idle_timeout=2)]
    final = replies[-1].data
    assert final["finish"] is True and final["delta"] == replies[-2].data["delta"]  # asr 1.10: no "."
    await unit.exit()


async def test_vlm_image_then_text(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("vlm", vlm_setup(VLM, system_prompt="x", max_token_len=1023))
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="JPEG")
    await unit.infer(base64.b64encode(buffer.getvalue()).decode(), object="vlm.jpeg.base64")
    text = "".join([p async for p in unit.generate("Describe it", object="vlm.utf-8", idle_timeout=2)])
    assert text == scripted_answer("Describe it", image_count=1)
    await unit.exit()


async def test_tts_engine_failure_is_model_run_failed(make_emulator: MakeEmulator) -> None:
    class BrokenVoice(ScriptedEngine):
        async def open_tts(self, model: Any, voice: str | None) -> Any:
            session = await super().open_tts(model, voice)

            async def fail(text: str, *, speed: float = 1.0) -> bytes:
                raise RuntimeError("synthesis exploded")

            session.synthesize = fail  # type: ignore[method-assign]
            return session

    emu = await make_emulator(engine=BrokenVoice())
    async with DeviceClient("127.0.0.1", emu.port, timeout=2.0) as dev:
        unit = await dev.open_unit("melotts", melotts_setup("melotts-en-us"))
        await unit.infer("Hello.", object="tts.utf-8")
        with pytest.raises(ModelRunFailed):  # -11, on the instance's own work_id
            async for _ in unit.outputs(idle_timeout=2):
                pass
        await unit.exit()


async def test_whisper_silence_in_chinese_is_no_message(emu: Emulator, dev: DeviceClient) -> None:
    unit = await dev.open_unit("whisper", whisper_setup("whisper-tiny", "zh"))
    await unit.infer_base64_stream(
        base64.b64encode(b"\0\0" * 16000).decode(), object="whisper.pcm.stream.base64"
    )
    with pytest.raises(DeviceTimeout):
        async for _ in unit.outputs(idle_timeout=0.3, silence_ends=True):
            pass
    assert not unit.broken
    await unit.exit()
    assert emu.live_instances() == []
