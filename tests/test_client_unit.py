"""Unit: inference, streaming, pause, abandonment, errors, exit (fake device)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fake_device import FakeDevice, FakeLink, Request, reply_dict
from stackflow_openai.stackflow import (
    Base64DecodeError,
    ConnectionLost,
    DeviceClient,
    DeviceTimeout,
    InferencePushFalse,
    ModelRunFailed,
    NoUnitAction,
    Reply,
    StreamIndexError,
    Unit,
    UnitBroken,
    llm_setup,
    melotts_setup,
    tts_setup,
    vlm_setup,
    whisper_setup,
)
from stackflow_openai.stackflow.codec import dump_reply

UNITS = ("llm", "vlm", "melotts", "tts", "whisper", "asr")


@dataclass
class Rig:
    device: FakeDevice
    client: DeviceClient
    live: list[str] = field(default_factory=list)
    counter: int = 1002

    async def open(self, unit: str = "llm", setup: dict[str, Any] | None = None) -> tuple[Unit, FakeLink]:
        setup = setup or llm_setup("qwen", system_prompt="Be brief.", max_token_len=1023)
        opening = asyncio.create_task(self.client.open_unit(unit, setup))
        req = await self.device.next("setup")
        work_id = f"{unit}.{self.counter}"
        self.counter += 1
        self.live.append(work_id)
        await req.ok(work_id=work_id)
        return await opening, req.link


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    device = await FakeDevice().start()
    client = DeviceClient("127.0.0.1", device.port, timeout=1.0)
    rig = Rig(device, client)
    for unit in UNITS:
        device.serve_tasklist(unit, rig.live)
    device.serve_exit(rig.live)
    yield rig
    await client.close()
    await device.stop()


def out(req: Request, data: Any, object: str = "llm.utf-8.stream") -> dict[str, Any]:
    """Unit output: the instance's work_id and the latest inference's request_id (§2.4)."""
    return reply_dict(req.request_id, req.work_id, object=object, data=data)


def delta(req: Request, text: str, index: int, finish: bool = False) -> dict[str, Any]:
    return out(req, {"delta": text, "finish": finish, "index": index})


async def collect(gen: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in gen]


async def test_generate_streams_deltas_until_the_terminator(rig: Rig) -> None:
    unit, link = await rig.open()
    gen = asyncio.create_task(collect(unit.generate("What's {your} name?")))
    req = await rig.device.next("inference")
    assert req.link is link and req.work_id == unit.work_id and req.request_id.isalnum()
    assert (req.msg["object"], req.msg["data"]) == ("llm.utf-8", "What's {your} name?")
    await link.send(
        delta(req, "I am", 0), delta(req, "", 1), delta(req, " an AI.", 2), delta(req, "", 3, True)
    )
    assert await gen == ["I am", " an AI."]
    assert not unit.busy and not unit.broken


async def test_generate_non_stream_yields_the_single_string(rig: Rig) -> None:
    unit, link = await rig.open(setup=llm_setup("qwen", system_prompt="x", max_token_len=512, stream=False))
    assert not unit.streaming
    gen = asyncio.create_task(collect(unit.generate("hi")))
    req = await rig.device.next("inference")
    await link.send(out(req, "Hello there!", object="llm.utf-8"))
    assert await gen == ["Hello there!"]
    assert not unit.busy


async def test_empty_prompt_is_refused_locally(rig: Rig) -> None:
    unit, _ = await rig.open()
    with pytest.raises(ValueError):
        await collect(unit.generate(""))


@pytest.mark.parametrize(
    ("code", "exc_type"), [(-11, ModelRunFailed), (-23, Base64DecodeError), (-25, StreamIndexError)]
)
async def test_inference_error_with_bare_unit_name_reaches_the_consumer(
    rig: Rig, code: int, exc_type: type[Exception]
) -> None:
    unit, link = await rig.open()
    gen = asyncio.create_task(collect(unit.generate("hi")))
    await rig.device.next("inference")
    # Bare unit name and the request_id of the setup, not of the inference (§2.4).
    await link.send(reply_dict("r1", "llm", code=code, message="device says no"))
    with pytest.raises(exc_type) as info:
        await gen
    assert info.value.message == "device says no"  # type: ignore[attr-defined]
    assert not unit.busy and not unit.broken  # the instance itself is fine


async def test_inference_to_a_dead_instance_marks_the_unit_broken(rig: Rig) -> None:
    unit, link = await rig.open()
    gen = asyncio.create_task(collect(unit.generate("hi")))
    req = await rig.device.next("inference")
    await link.send(reply_dict(req.request_id, unit.work_id, code=-4, message="inference data push false"))
    with pytest.raises(InferencePushFalse):
        await gen
    assert unit.broken
    with pytest.raises(UnitBroken):
        await unit.infer("again", object="llm.utf-8")


async def test_idle_timeout_marks_the_unit_broken(rig: Rig) -> None:
    unit, _ = await rig.open()
    with pytest.raises(DeviceTimeout):
        await collect(unit.generate("hi", idle_timeout=0.2))
    await rig.device.next("inference")
    assert unit.broken and unit.busy  # the device may still be generating
    await unit.exit()
    assert unit.exited and rig.live == []


async def test_connection_drop_mid_stream_raises_connection_lost_without_hanging(rig: Rig) -> None:
    unit, link = await rig.open()
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in unit.generate("tell me a story", idle_timeout=5):
            pieces.append(piece)

    task = asyncio.create_task(consume())
    req = await rig.device.next("inference")
    await link.send(delta(req, "Once", 0))
    await asyncio.sleep(0.05)
    await link.close()
    async with asyncio.timeout(1):
        with pytest.raises(ConnectionLost):
            await task
    assert pieces == ["Once"] and unit.broken
    # The instance still lives on the device; exit goes through a fresh connection.
    await unit.exit()
    assert rig.live == [] and unit.exited
    exit_req = next(r for r in rig.device.log if r.action == "exit")
    assert exit_req.link is not link


@pytest.mark.parametrize("ack_first", [True, False])
async def test_pause_consumes_ack_and_terminator_in_either_order(rig: Rig, ack_first: bool) -> None:
    unit, link = await rig.open()
    gen = unit.generate("long answer please", idle_timeout=2)
    feeder = asyncio.create_task(_first_delta_sent(rig, link))
    assert await anext(gen) == "Part"
    await feeder
    pausing = asyncio.create_task(unit.pause(timeout=2))
    pause = await rig.device.next("pause")
    inference = next(r for r in rig.device.log if r.action == "inference")
    in_flight = [delta(inference, " two", 1), delta(inference, "", 2, finish=True)]
    replies = [pause.reply(), *in_flight] if ack_first else [*in_flight, pause.reply()]
    await link.write(b"".join(dump_reply(r) for r in replies))
    assert await pausing == " two"
    assert not unit.busy
    # The superseded generator ends instead of stealing the next generation's output.
    assert [p async for p in gen] == []
    # Reuse: the next generation sees only its own output.
    again = asyncio.create_task(collect(unit.generate("next")))
    req = await rig.device.next("inference")
    await link.send(delta(req, "Fresh", 0), delta(req, "", 1, True))
    assert await again == ["Fresh"]


async def _first_delta_sent(rig: Rig, link: FakeLink) -> Request:
    req = await rig.device.next("inference")
    await link.send(delta(req, "Part", 0))
    return req


async def _answer_pause(rig: Rig, link: FakeLink, inference: Request) -> Request:
    pause = await rig.device.next("pause")
    await link.send(delta(inference, "", 1, True), pause.reply())
    return pause


async def test_pause_concurrent_with_a_consumer(rig: Rig) -> None:
    unit, link = await rig.open()
    consumer = asyncio.create_task(collect(unit.generate("story", idle_timeout=2)))
    inference = await _first_delta_sent(rig, link)
    await asyncio.sleep(0.05)
    pausing = asyncio.create_task(unit.pause(timeout=2))
    await _answer_pause(rig, link, inference)
    await pausing
    assert await consumer == ["Part"]
    assert not unit.busy and not unit.broken


async def test_aclose_of_generate_pauses_the_unit(rig: Rig) -> None:
    unit, link = await rig.open()
    gen = unit.generate("story", idle_timeout=2)
    feeder = asyncio.create_task(_first_delta_sent(rig, link))
    async with contextlib.aclosing(gen):
        assert await anext(gen) == "Part"
        inference = await feeder
        answering = asyncio.create_task(_answer_pause(rig, link, inference))
    await answering
    assert not unit.busy and not unit.broken


async def test_break_out_of_generate_then_reuse(rig: Rig) -> None:
    unit, link = await rig.open()

    async def pause_answer(req: Request) -> bool:
        if req.action != "pause":
            return False
        inference = [r for r in rig.device.log if r.action == "inference"][-1]
        if unit.busy:
            await link.send(delta(inference, "", 1, True))
        await req.ok()
        return True

    rig.device.respond(pause_answer)
    feeder = asyncio.create_task(_first_delta_sent(rig, link))
    async for piece in unit.generate("story", idle_timeout=2):
        assert piece == "Part"
        break  # no aclose: the generator is finalised by the event loop
    await feeder
    again = asyncio.create_task(collect(unit.generate("next")))
    req = await rig.device.next("inference")
    await link.send(delta(req, "Fresh", 0), delta(req, "", 1, True))
    assert await again == ["Fresh"]
    assert any(r.action == "pause" for r in rig.device.log)


async def test_cancelled_consumer_pauses_the_unit(rig: Rig) -> None:
    unit, link = await rig.open()
    consumer = asyncio.create_task(collect(unit.generate("story", idle_timeout=2)))
    inference = await _first_delta_sent(rig, link)
    await asyncio.sleep(0.05)
    consumer.cancel()
    await _answer_pause(rig, link, inference)
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert not unit.busy and not unit.broken


async def test_failed_recovery_marks_the_unit_broken(rig: Rig) -> None:
    unit, link = await rig.open()
    unit.recover_timeout = 0.2
    gen = unit.generate("story", idle_timeout=2)
    feeder = asyncio.create_task(_first_delta_sent(rig, link))
    assert await anext(gen) == "Part"
    await feeder
    await gen.aclose()  # the device never answers the pause
    assert unit.broken
    await unit.exit()
    assert rig.live == []


async def test_infer_base64_stream_slices_one_string_on_multiples_of_four(rig: Rig) -> None:
    unit, _ = await rig.open("whisper", whisper_setup("whisper-tiny", "en"))
    audio = bytes(range(256)) * 40
    b64 = base64.b64encode(audio).decode()
    await unit.infer_base64_stream(b64, object="whisper.pcm.stream.base64", chunk_chars=1001)
    chunks = [await rig.device.next("inference") for _ in range((len(b64) + 999) // 1000)]
    datas = [c.msg["data"] for c in chunks]
    assert [d["index"] for d in datas] == list(range(len(datas)))
    assert [d["finish"] for d in datas] == [False] * (len(datas) - 1) + [True]
    assert all(len(d["delta"]) % 4 == 0 for d in datas)
    assert base64.b64decode("".join(d["delta"] for d in datas)) == audio
    assert all(c.msg["object"] == "whisper.pcm.stream.base64" for c in chunks)
    assert b"\\/" not in b"".join(c.raw for c in chunks)


async def test_chunked_input_needs_a_stream_object(rig: Rig) -> None:
    unit, _ = await rig.open("whisper", whisper_setup("whisper-tiny", "en"))
    with pytest.raises(ValueError):
        await unit.infer_base64_stream("AAAA", object="whisper.pcm.base64")
    with pytest.raises(ValueError):
        await unit.infer_base64_stream("AAAA", object="whisper.pcm.stream.base64", chunk_chars=3)
    with pytest.raises(ValueError):
        await unit.infer_chunks([], object="llm.utf-8.stream")


async def test_text_chunks_and_whisper_single_result(rig: Rig) -> None:
    unit, link = await rig.open("whisper", whisper_setup("whisper-tiny", "en"))
    await unit.infer_chunks(["UklG", "AAAA"], object="whisper.wav.stream.base64")
    first, last = await rig.device.next("inference"), await rig.device.next("inference")
    assert (first.msg["data"], last.msg["data"]) == (
        {"delta": "UklG", "index": 0, "finish": False},
        {"delta": "AAAA", "index": 1, "finish": True},
    )
    await link.send(out(last, "hello world.", object="asr.utf-8"))
    [reply] = [r async for r in unit.outputs(idle_timeout=1)]
    assert reply.data == "hello world." and not unit.busy


async def test_melotts_stream_outputs_until_finish(rig: Rig) -> None:
    unit, link = await rig.open("melotts", melotts_setup("melotts-en-us"))
    await unit.infer("Hello there. How are you?", object="tts.utf-8")
    req = await rig.device.next("inference")
    obj = "tts.pcm.stream.base64"
    await link.send(
        out(req, {"delta": "AAAB", "finish": False, "index": 0}, obj),
        out(req, {"delta": "AQAC", "finish": False, "index": 1}, obj),
        out(req, {"delta": "", "finish": True, "index": 2}, obj),
    )
    replies: list[Reply] = [r async for r in unit.outputs(idle_timeout=1)]
    assert [r.data["delta"] for r in replies] == ["AAAB", "AQAC", ""]
    with pytest.raises(NoUnitAction):  # melotts has no pause (-18)
        pause = asyncio.create_task(unit.pause(timeout=1))
        await (await rig.device.next("pause")).error(-18, "not have unit action!")
        await pause


async def test_abandoned_melotts_output_is_drained(rig: Rig) -> None:
    unit, link = await rig.open("melotts", melotts_setup("melotts-en-us"))
    await unit.infer("One. Two.", object="tts.utf-8")
    req = await rig.device.next("inference")
    obj = "tts.pcm.stream.base64"
    await link.send(out(req, {"delta": "AAAB", "finish": False, "index": 0}, obj))
    outputs = unit.outputs(idle_timeout=1)
    await anext(outputs)
    closing = asyncio.create_task(outputs.aclose())
    await link.send(out(req, {"delta": "", "finish": True, "index": 1}, obj))
    await closing
    assert not unit.busy and not unit.broken
    assert not any(r.action == "pause" for r in rig.device.log)


async def test_tts_non_stream_segments_one_outputs_call_each(rig: Rig) -> None:
    unit, link = await rig.open("tts", tts_setup("single-speaker-english-fast"))
    await unit.infer("One. Two.", object="tts.utf-8")
    req = await rig.device.next("inference")
    await link.send(out(req, "AAAA", "tts.pcm.base64"), out(req, "BBBB", "tts.pcm.base64"))
    segments = [[r.data async for r in unit.outputs(idle_timeout=1)] for _ in range(2)]
    assert segments == [["AAAA"], ["BBBB"]]


async def test_vlm_image_then_text(rig: Rig) -> None:
    unit, link = await rig.open("vlm", vlm_setup("internvl", system_prompt="x", max_token_len=1023))
    await unit.infer("/9j/4AAQ", object="vlm.jpeg.base64")
    assert not unit.busy  # an image gets no reply
    gen = asyncio.create_task(collect(unit.generate("Describe it.", object="vlm.utf-8")))
    image, text = await rig.device.next("inference"), await rig.device.next("inference")
    assert (image.msg["object"], text.msg["object"]) == ("vlm.jpeg.base64", "vlm.utf-8")
    await link.send(delta(text, "A cat.", 0), delta(text, "", 1, True))
    assert await gen == ["A cat."]
    assert not any(r.action == "pause" for r in rig.device.log)


async def test_stale_output_is_dropped_before_the_next_inference(rig: Rig) -> None:
    unit, link = await rig.open()
    stale = reply_dict(
        "old", unit.work_id, object="llm.utf-8.stream", data={"delta": "", "finish": True, "index": 9}
    )
    await link.send(stale)
    await asyncio.sleep(0.05)
    gen = asyncio.create_task(collect(unit.generate("hi")))
    req = await rig.device.next("inference")
    await link.send(delta(req, "new", 0), delta(req, "", 1, True))
    assert await gen == ["new"]


async def test_exit_is_idempotent_and_tolerates_finish_before_ack(rig: Rig) -> None:
    unit, link = await rig.open()
    rig.device._responders.clear()  # script the exit by hand
    exiting = asyncio.create_task(unit.exit(timeout=1))
    req = await rig.device.next("exit")
    assert req.link is link
    await link.send(
        reply_dict("i9", unit.work_id, data={"delta": "", "finish": True, "index": 4}), req.reply()
    )
    await exiting
    await unit.exit()
    assert unit.exited and unit.broken and [r.action for r in rig.device.log].count("exit") == 1
    with pytest.raises(UnitBroken):
        await unit.infer("x", object="llm.utf-8")


async def test_exit_of_an_instance_the_device_forgot_counts_as_done(rig: Rig) -> None:
    unit, _ = await rig.open()
    rig.live.clear()  # e.g. after sys.reset
    await unit.exit()
    assert unit.exited


async def test_bare_unit_error_while_idle_belongs_to_another_instance(rig: Rig) -> None:
    unit, link = await rig.open()
    # Another llm instance's -25, sent to this connection because its setup was the unit's last
    # control request (§2.4): nothing is in flight here, so it must not fail our next generation.
    await link.send(reply_dict("r1", "llm", code=-25, message="Stream data index error."))
    await asyncio.sleep(0.05)
    gen = asyncio.create_task(collect(unit.generate("hi")))
    req = await rig.device.next("inference")
    await link.send(delta(req, "ok", 0), delta(req, "", 1, True))
    assert await gen == ["ok"]


async def test_pause_while_idle_only_waits_for_the_ack(rig: Rig) -> None:
    unit, _ = await rig.open()
    pausing = asyncio.create_task(unit.pause(timeout=1))
    await (await rig.device.next("pause")).ok()
    assert await pausing == "" and not unit.broken


async def test_whisper_silence_can_end_an_inference_without_breaking_the_unit(rig: Rig) -> None:
    unit, link = await rig.open("whisper", whisper_setup("whisper-tiny", "zh"))
    await unit.infer_chunks(["AAAA"], object="whisper.pcm.stream.base64")
    await rig.device.next("inference")
    with pytest.raises(DeviceTimeout):  # an empty zh transcript produces no message (§5.5)
        async for _ in unit.outputs(idle_timeout=0.2, silence_ends=True):
            pass
    assert not unit.broken and not unit.busy
    await unit.infer_chunks(["AAAA"], object="whisper.pcm.stream.base64")
    req = await rig.device.next("inference")
    await link.send(out(req, "你好。", object="asr.utf-8"))
    assert [r.data async for r in unit.outputs(idle_timeout=1)] == ["你好。"]
