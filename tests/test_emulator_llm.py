"""llm and vlm inference (protocol §5.2, §5.3, §6): stream shape, pause, exit, queue, limits, images."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from emulator_helpers import (
    LLM_SETUP,
    RawClient,
    b64,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    client_for,
    emu_fixture,  # noqa: F401 (a pytest fixture, used by name)
    jpeg_bytes,
    started_emulator,
    text_of,
)
from stackflow_openai.emulator import Emulator, ScriptedEngine
from stackflow_openai.emulator.engines.base import LlmSettings
from stackflow_openai.emulator.engines.scripted import ScriptedLlmSession, scripted_answer, scripted_pieces
from stackflow_openai.stackflow.models import ModelDescriptor

QUESTION = "Tell me about the river and the old stone bridge near the market"


async def test_stream_deltas_group_tokens_and_end_with_terminator(client: RawClient) -> None:
    work_id = await client.setup("llm")
    rid = await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    messages = await client.stream()
    assert [m["data"]["index"] for m in messages] == list(range(len(messages)))
    assert messages[-1]["data"] == {"delta": "", "finish": True, "index": len(messages) - 1}
    assert all(m["data"]["finish"] is False for m in messages[:-1])
    assert text_of(messages) == scripted_answer(QUESTION)  # ended by EOS: every token arrives
    pieces = scripted_pieces(scripted_answer(QUESTION))
    assert len(messages) - 1 == -(-len(pieces) // 3)  # groups of three, the last one flushed at EOS
    assert {(m["request_id"], m["work_id"], m["object"]) for m in messages} == {
        (rid, work_id, "llm.utf-8.stream")
    }
    # The index restarts for the next generation.
    await client.send(work_id, "inference", "llm.utf-8", "again")
    assert (await client.stream())[0]["data"]["index"] == 0


async def test_non_stream_is_one_string(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    reply = await client.recv()
    assert (reply["object"], reply["data"]) == ("llm.utf-8", scripted_answer(QUESTION))
    await client.expect_silence()


async def test_stream_input_and_base64_input(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await client.send(
        work_id, "inference", "llm.utf-8.stream", {"delta": "hello ", "index": 0, "finish": False}
    )
    await client.send(
        work_id, "inference", "llm.utf-8.stream", {"delta": "world", "index": 1, "finish": True}
    )
    assert (await client.recv())["data"] == scripted_answer("hello world")
    await client.send(work_id, "inference", "llm.utf-8.base64", b64(b"base64 text"))
    assert (await client.recv())["data"] == scripted_answer("base64 text")


async def test_empty_input_is_ignored(client: RawClient) -> None:
    work_id = await client.setup("llm")
    await client.send(work_id, "inference", "llm.utf-8", "")
    await client.expect_silence()


async def test_pause_stops_with_ack_and_terminator(emu: Emulator, client: RawClient) -> None:
    emu.faults.token_delay = 0.03
    work_id = await client.setup("llm")
    await client.send(work_id, "inference", "llm.utf-8", QUESTION, request_id="gen")
    first = await client.recv()
    assert first["data"]["finish"] is False
    await client.send(work_id, "pause", request_id="stop")
    rest = await client.collect(lambda m: m["request_id"] == "stop" or m["data"].get("finish") is True)
    rest += await client.collect(lambda m: m["request_id"] == "stop" or m["data"].get("finish") is True)
    ack = next(m for m in rest if m["request_id"] == "stop")
    assert (ack["error"]["code"], ack["work_id"], ack["data"]) == (0, work_id, "None")
    terminator = next(m for m in rest if m["request_id"] == "gen" and m["data"]["finish"])
    assert terminator["data"]["delta"] == ""
    streamed = first["data"]["delta"] + "".join(m["data"]["delta"] for m in rest if m["request_id"] == "gen")
    assert scripted_answer(QUESTION).startswith(streamed) and len(streamed) < len(scripted_answer(QUESTION))
    emu.faults.token_delay = None
    await client.send(work_id, "inference", "llm.utf-8", "reusable")  # the instance stays usable
    assert text_of(await client.stream()) == scripted_answer("reusable")


async def test_pause_in_non_stream_sends_partial_text(emu: Emulator, client: RawClient) -> None:
    emu.faults.token_delay = 0.03
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", QUESTION, request_id="gen")
    await asyncio.sleep(0.15)
    await client.send(work_id, "pause", request_id="stop")
    messages = [await client.recv(), await client.recv()]
    partial = next(m for m in messages if m["request_id"] == "gen")["data"]
    assert partial and scripted_answer(QUESTION).startswith(partial) and partial != scripted_answer(QUESTION)


async def test_exit_during_generation_sends_finish_before_ack(emu: Emulator, client: RawClient) -> None:
    emu.faults.token_delay = 0.03
    work_id = await client.setup("llm")
    await client.send(work_id, "inference", "llm.utf-8", QUESTION, request_id="gen")
    await client.recv()
    await client.send(work_id, "exit", request_id="bye")
    messages = await client.collect(lambda m: m["request_id"] == "bye")
    assert messages[-2]["data"]["finish"] is True and messages[-2]["request_id"] == "gen"
    assert messages[-1]["work_id"] == work_id and messages[-1]["error"]["code"] == 0
    assert emu.live_instances() == []


async def test_queue_holds_three_and_outputs_carry_the_latest_request_id(
    emu: Emulator, client: RawClient
) -> None:
    emu.faults.token_delay = 0.01
    work_id = await client.setup("llm")
    for n in range(1, 7):  # one runs, three wait, two are dropped
        await client.send(work_id, "inference", "llm.utf-8", f"question {n}", request_id=f"q{n}")
    generations = [await client.stream(wait=5.0) for _ in range(4)]
    await client.expect_silence()
    assert [text_of(g) for g in generations] == [scripted_answer(f"question {n}") for n in range(1, 5)]
    stamped = {m["request_id"] for g in generations for m in g[1:]}
    assert stamped == {"q6"}  # stamped with the latest inference received, not the one answered


async def test_max_token_len_caps_prompt_plus_output(emu: Emulator, client: RawClient) -> None:
    model = next(d for d in emu.catalogue if d.mode == LLM_SETUP["model"])
    session = await emu.engine.open_llm(
        model, LlmSettings(system_prompt=LLM_SETUP["prompt"], max_token_len=1023)
    )
    limit = session.prompt_tokens(QUESTION) + 4  # positions for 1 + 4 generated tokens
    pieces = scripted_pieces(scripted_answer(QUESTION))
    work_id = await client.setup("llm", response_format="llm.utf-8", max_token_len=limit)
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    assert (await client.recv())["data"] == "".join(pieces[:5])
    await client.call(work_id, "exit")
    work_id = await client.setup("llm", max_token_len=limit)
    await client.send(work_id, "inference", "llm.utf-8", QUESTION)
    # Stream: one group of three goes out; the two held tokens are lost when the length ends it.
    assert text_of(await client.stream()) == "".join(pieces[:3])


async def test_default_max_token_len_is_127(client: RawClient) -> None:
    words = " ".join(f"item{i}" for i in range(40))  # ~100 prompt tokens: ~28 may be generated
    outputs = []
    for extra in ({}, {"max_token_len": 127}, {"max_token_len": 1023}):
        data = {k: v for k, v in LLM_SETUP.items() if k != "max_token_len"}
        reply = await client.call(
            "llm", "setup", "llm.setup", {**data, "response_format": "llm.utf-8", **extra}
        )
        await client.send(reply["work_id"], "inference", "llm.utf-8", words)
        outputs.append((await client.recv())["data"])
        await client.call(reply["work_id"], "exit")
    assert outputs[0] == outputs[1] != outputs[2] == scripted_answer(words)


async def test_prompt_beyond_prefill_window_is_counted_garbage(emu: Emulator, client: RawClient) -> None:
    work_id = await client.setup("llm", model="qwen2.5-0.5B-prefill-20e", response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", "word " * 200)
    garbage = (await client.recv())["data"]
    assert set(garbage) == {"!"}
    assert emu.prefill_overflows == 1
    reply = await client.call("sys", "x_emulator_instances")
    assert reply["totals"]["prefill_overflows"] == 1
    assert reply["data"][0]["prefill_overflows"] == 1


class RecordingEngine(ScriptedEngine):
    """The scripted engine, remembering what each generation was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[tuple[str, int]] = []

    async def open_llm(self, model: ModelDescriptor, settings: LlmSettings) -> ScriptedLlmSession:
        session = await super().open_llm(model, settings)
        original = session.generate

        def generate(prompt: str, *, images: list[bytes], max_new_tokens: int) -> AsyncIterator[str]:
            self.prompts.append((prompt, len(images)))
            return original(prompt, images=images, max_new_tokens=max_new_tokens)

        session.generate = generate  # type: ignore[method-assign]
        return session


async def test_llm_unescapes_but_vlm_gets_raw_escaped_text() -> None:
    engine = RecordingEngine()
    async with started_emulator(engine=engine) as emu, client_for(emu) as client:
        llm = await client.setup("llm", response_format="llm.utf-8")
        vlm = await client.setup("vlm", response_format="vlm.utf-8")
        raw_text = 'line1\\nline2 \\u007bx\\u007d \\"q\\"'
        for work_id, tag in ((llm, "llm.utf-8"), (vlm, "vlm.utf-8")):
            await client.send_raw(
                f'{{"request_id":"i","work_id":"{work_id}","action":"inference","object":"{tag}",'
                f'"data":"{raw_text}"}}\n'.encode()
            )
            await client.recv()
    assert engine.prompts == [('line1\nline2 {x} "q"', 0), (raw_text, 0)]


async def test_vlm_image_is_held_silently_until_the_next_text() -> None:
    engine = RecordingEngine()
    async with started_emulator(engine=engine) as emu, client_for(emu) as client:
        work_id = await client.setup("vlm", response_format="vlm.utf-8")
        await client.send(work_id, "inference", "vlm.jpeg.base64", b64(jpeg_bytes()))
        await client.expect_silence()
        await client.send(work_id, "inference", "vlm.utf-8", "what is this")
        assert (await client.recv())["data"] == scripted_answer("what is this", 1)
        await client.send(work_id, "inference", "vlm.utf-8", "and now")
        assert (await client.recv())["data"] == scripted_answer("and now")  # the image was consumed
        # An image that does not decode: no output at all, and it sticks (device bug).
        await client.send(work_id, "inference", "vlm.jpeg.base64", b64(b"not an image"))
        await client.send(work_id, "inference", "vlm.utf-8", "broken")
        await client.expect_silence()
    assert engine.prompts == [("what is this", 1), ("and now", 0)]


async def test_vlm_image_tokens_count_against_the_prefill_window(emu: Emulator, client: RawClient) -> None:
    work_id = await client.setup("vlm", response_format="vlm.utf-8")
    words = " ".join(["bridge"] * 70)  # fits alone, not with 169 image tokens
    await client.send(work_id, "inference", "vlm.utf-8", words)
    assert (await client.recv())["data"] == scripted_answer(words)
    await client.send(work_id, "inference", "vlm.jpeg.base64", b64(jpeg_bytes()))
    await client.send(work_id, "inference", "vlm.utf-8", words)
    assert set((await client.recv())["data"]) == {"!"}
    assert emu.prefill_overflows == 1


async def test_an_image_prompt_is_counted_under_the_scripts_own_system_prompt(
    emu: Emulator, client: RawClient
) -> None:
    # A long setup prompt that leaves no room for 169 image tokens: `encode_vpm` does not use it.
    work_id = await client.setup("vlm", response_format="vlm.utf-8", prompt="Be very helpful. " * 20)
    await client.send(work_id, "inference", "vlm.jpeg.base64", b64(jpeg_bytes()))
    await client.send(work_id, "inference", "vlm.utf-8", "What is this?")
    assert (await client.recv())["data"].endswith(scripted_answer("What is this?"))  # not "!!!" garbage
    assert emu.prefill_overflows == 0


async def test_groups_are_held_while_their_text_ends_in_byte_0xbd() -> None:
    # 好 is E5 A5 BD: the device's test for a split character (last byte 0xBD) holds it back too.
    tokens = ["你", "好", "好", "吗", "?", "!", "a", "b", "c", "好"]

    class Engine(ScriptedEngine):
        async def open_llm(self, model: ModelDescriptor, settings: LlmSettings) -> ScriptedLlmSession:
            session = await super().open_llm(model, settings)

            async def generate(
                prompt: str, *, images: list[bytes], max_new_tokens: int
            ) -> AsyncIterator[str]:
                for token in tokens:
                    yield token

            session.generate = generate  # type: ignore[method-assign]
            return session

    async with started_emulator(engine=Engine()) as emu, client_for(emu) as client:
        work_id = await client.setup("llm")
        await client.send(work_id, "inference", "llm.utf-8", "hi")
        messages = await client.stream()
    # "你好好" ends in 0xBD: held until "吗" joins; the last "好" is flushed only by the end of sequence.
    assert [m["data"]["delta"] for m in messages[:-1]] == ["你好好吗", "?!a", "bc好"]
