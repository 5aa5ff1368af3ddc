"""The emulator's "ctx" units keep the conversation in their KV cache, as LLM_CTX does (kvcontext.py)."""

from __future__ import annotations

from emulator_helpers import (
    RawClient,
    b64,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    emu_fixture,  # noqa: F401 (a pytest fixture, used by name)
    text_of,
)
from stackflow_openai.emulator import Emulator
from stackflow_openai.emulator.engines.scripted import scripted_answer
from stackflow_openai.emulator.units.kvcontext import KvContext
from stackflow_openai.emulator.units.llm import LlmInstance

CTX_LLM = "qwen2.5-HA-0.5B-ctx-ax630c"
CTX_VLM = "internvl3-1B-448-ax630c"


def context_of(emu: Emulator, work_id: str) -> KvContext:
    instance = emu.state.registry[work_id]
    assert isinstance(instance, LlmInstance) and instance.context is not None
    return instance.context


async def ask(client: RawClient, work_id: str, text: str, obj: str = "llm.utf-8") -> str:
    await client.send(work_id, "inference", obj, text)
    return text_of(await client.stream())


async def test_a_ctx_unit_remembers_the_earlier_turns(client: RawClient, emu: Emulator) -> None:
    work_id = await client.setup("llm", model=CTX_LLM)
    first = await ask(client, work_id, "my name is Ann")
    assert first == scripted_answer("my name is Ann")
    second = await ask(client, work_id, "what is my name")
    assert second == scripted_answer(
        "what is my name", history=[("user", "my name is Ann"), ("assistant", first)]
    )
    assert "my name is Ann" in second
    context = context_of(emu, work_id)
    assert context.used > context.system_tokens > 0
    assert context.silent_resets == 0


async def test_a_single_turn_unit_remembers_nothing(client: RawClient) -> None:
    work_id = await client.setup("llm")  # qwen2.5-0.5B-p256: precompute_len absent
    await ask(client, work_id, "my name is Ann")
    assert "Ann" not in await ask(client, work_id, "what is my name")


async def test_the_reset_input_clears_the_context(client: RawClient, emu: Emulator) -> None:
    work_id = await client.setup("llm", model=CTX_LLM)
    await ask(client, work_id, "my name is Ann")
    await client.send(work_id, "inference", "llm.utf-8", "reset")
    # Stream format: the reset's "Context has been reset." goes out as the finish message, delta empty.
    assert [m["data"] for m in await client.stream()] == [{"delta": "", "finish": True, "index": 0}]
    assert context_of(emu, work_id).used == context_of(emu, work_id).system_tokens
    assert "Ann" not in await ask(client, work_id, "what is my name")


async def test_the_reset_input_answers_in_the_non_stream_format(client: RawClient) -> None:
    work_id = await client.setup("llm", model=CTX_LLM, response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8", "reset")
    assert (await client.recv())["data"] == "Context has been reset."
    await client.send(work_id, "inference", "llm.utf-8", "reset please")  # only the exact word resets
    assert (await client.recv())["data"] == scripted_answer("reset please")


async def test_a_full_cache_resets_silently(client: RawClient, emu: Emulator) -> None:
    work_id = await client.setup("llm", model=CTX_LLM)
    context = context_of(emu, work_id)
    long_turn = " ".join(["river stone light music"] * 40)  # ~160 words: far more tokens per turn
    await ask(client, work_id, "my name is Ann")
    turns = 0
    while context.silent_resets == 0:
        before = context.used
        answer = await ask(client, work_id, long_turn)
        turns += 1
        assert turns < 20, "the cache never filled"
    # No error, no signal: the turn was answered from the system prompt alone; what came before is gone.
    assert before > context.capacity - 300
    assert "Ann" not in answer
    assert context.history == [("user", long_turn), ("assistant", answer)]


async def test_a_ctx_vlm_keeps_text_turns_and_resets_on_request(client: RawClient, emu: Emulator) -> None:
    work_id = await client.setup("vlm", model=CTX_VLM)
    await ask(client, work_id, b64(b"my name is Ann"), "vlm.utf-8.base64")
    assert "my name is Ann" in await ask(client, work_id, b64(b"what is my name"), "vlm.utf-8.base64")
    await client.send(work_id, "inference", "vlm.utf-8.base64", b64(b"reset"))
    assert [m["data"]["delta"] for m in await client.stream()] == [""]
    assert context_of(emu, work_id).history == []


async def test_setup_max_token_len_does_not_bind_a_ctx_unit(client: RawClient, emu: Emulator) -> None:
    # LLM_CTX::Init takes max_token_len from the model file's mask, whatever the setup says.
    work_id = await client.setup("llm", model=CTX_LLM, max_token_len=16)
    instance = emu.state.registry[work_id]
    assert isinstance(instance, LlmInstance) and instance.max_token_len == 1280
