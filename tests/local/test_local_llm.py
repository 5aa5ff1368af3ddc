"""The local LLM engine (llama.cpp via xllamacpp, SmolLM2-135M by default) through the engine Protocol."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
from local_support import INSTALL_HINT, QWEN_P256, VLM, require

from stackflow_openai.stackflow.models import ModelDescriptor

pytest.importorskip("xllamacpp", reason=INSTALL_HINT)
require("llm")

from stackflow_openai.emulator.engines.base import LlmSession, LlmSettings  # noqa: E402
from stackflow_openai.emulator.engines.local import ENV_GGUF, LocalEngine, LocalEngineError  # noqa: E402
from stackflow_openai.emulator.engines.local_llm import LocalLlmSession  # noqa: E402

pytestmark = pytest.mark.local

HELPFUL = "You are a helpful assistant."
STORY = "Write a long story about a dragon who learns to fly."


# A descriptor whose tokenizer the emulator does not have: the local model's own count stands in.
LLAMA = ModelDescriptor.from_json(
    {
        "mode": "llama3.2-1B-p256-ax630c",
        "type": "llm",
        "compile_flage": "--kv_cache_len 1023 --prefill_len 256",
    },
)


async def open_llm(
    engine: LocalEngine,
    system_prompt: str = HELPFUL,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
) -> LocalLlmSession:
    settings = LlmSettings(system_prompt, 1023, temperature=temperature, top_p=top_p, top_k=top_k)
    session = await engine.open_llm(QWEN_P256, settings)
    assert isinstance(session, LocalLlmSession)
    return session


async def answer(session: LlmSession, prompt: str, max_new_tokens: int = 48) -> list[str]:
    return [piece async for piece in session.generate(prompt, images=[], max_new_tokens=max_new_tokens)]


async def test_answers_a_factual_question_in_token_sized_pieces(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    pieces = await answer(session, "What is the capital of France?")
    assert "Paris" in "".join(pieces)
    assert len(pieces) >= 3  # streamed about one token per piece, not one blob
    assert all(len(piece) <= 16 for piece in pieces)


async def test_follows_the_system_prompt(local_engine: LocalEngine) -> None:
    # 135M parameters cannot switch language on request, but it reliably takes a name it is given;
    # the control (no name in the system prompt) shows the name really comes from the setup.
    named = await open_llm(local_engine, "Your name is Zorblax.")
    plain = await open_llm(local_engine, HELPFUL)
    assert "Zorblax" in "".join(await answer(named, "What is your name?"))
    assert "Zorblax" not in "".join(await answer(plain, "What is your name?"))


async def test_stops_at_max_new_tokens(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    long_text = "".join(await answer(session, STORY, max_new_tokens=40))
    short = await answer(session, STORY, max_new_tokens=5)
    assert 1 <= len(short) <= 5
    # Greedy decoding: the capped answer is the beginning of the longer one.
    assert long_text.startswith("".join(short))
    assert len("".join(short)) < len(long_text)
    assert await answer(session, STORY, max_new_tokens=0) == []


async def test_stopping_iteration_stops_the_generation_promptly(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    generation = session.generate(STORY, images=[], max_new_tokens=500)  # ~8 s if left running
    started = time.perf_counter()
    received = 0
    async for _piece in generation:
        received += 1
        if received == 3:
            break
    await generation.aclose()  # what the emulated unit does on `pause`
    assert time.perf_counter() - started < 2.0
    assert session.model.active_generations == 0  # llama.cpp has already let go of the slot


async def test_closing_the_session_ends_a_running_generation(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    pieces: list[str] = []
    two_received = asyncio.Event()

    async def consume() -> None:
        async for piece in session.generate(STORY, images=[], max_new_tokens=500):
            pieces.append(piece)
            if len(pieces) == 2:
                two_received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_received.wait(), 10.0)
    await session.close()
    await asyncio.wait_for(task, 2.0)  # ends normally, long before 500 tokens
    assert 2 <= len(pieces) < 200


async def test_prompt_tokens_count_the_templated_prompt(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    short = session.prompt_tokens("Hi")
    longer = session.prompt_tokens("What is the capital of France? Answer in one short sentence.")
    assert short > 10  # the chat template and the system prompt count too
    assert longer > short
    # Counted as the emulated Qwen device counts (its template, Qwen's BPE), not in SmolLM2's tokens:
    # the same figure as the gateway's prompt_tokens for this question under this system prompt.
    assert session.prompt_tokens("What is the capital of France?") == 26


async def test_a_model_of_unknown_tokenizer_is_counted_by_the_local_model(local_engine: LocalEngine) -> None:
    settings = LlmSettings(HELPFUL, 1023)
    session = await local_engine.open_llm(LLAMA, settings)
    assert isinstance(session, LocalLlmSession)
    if not os.environ.get(ENV_GGUF):  # exact figure for the bundled SmolLM2 tokenizer and template
        assert session.prompt_tokens("What is the capital of France?") == 27


async def test_sampling_flags_are_accepted(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine, temperature=0.7, top_p=0.9, top_k=20)
    assert "".join(await answer(session, "Name a colour.", max_new_tokens=12)).strip()


async def test_two_sessions_generate_at_once(local_engine: LocalEngine) -> None:
    first, second = await open_llm(local_engine), await open_llm(local_engine)
    texts = await asyncio.gather(
        answer(first, "What is the capital of France?"), answer(second, "What is the capital of France?")
    )
    assert all("Paris" in "".join(text) for text in texts)


async def test_vlm_answers_from_text_and_logs_ignored_images(
    local_engine: LocalEngine, caplog: pytest.LogCaptureFixture
) -> None:
    session = await local_engine.open_llm(VLM, LlmSettings(system_prompt=HELPFUL, max_token_len=1023))
    caplog.set_level(logging.INFO)
    pieces = [
        piece
        async for piece in session.generate(
            "What is the capital of France?",
            images=[b"\xff\xd8\xff\xe0 not really a jpeg"],
            max_new_tokens=32,
        )
    ]
    assert "Paris" in "".join(pieces)
    assert "1 image(s) ignored" in caplog.text


async def test_prompt_beyond_the_context_raises_an_engine_error(local_engine: LocalEngine) -> None:
    session = await open_llm(local_engine)
    with pytest.raises(LocalEngineError, match="context"):
        await answer(session, "hello " * 2200)


async def test_model_loads_once_and_is_shared(local_engine: LocalEngine) -> None:
    first, second = await open_llm(local_engine), await open_llm(local_engine)
    assert first.model is second.model
    assert sum(name.startswith("llm:") for name in local_engine.loaded_models()) == 1


async def test_a_ctx_units_history_reaches_the_model(local_engine: LocalEngine) -> None:
    # A ctx unit hands its earlier turns over as history; the model answers from them. The control shows
    # the name comes from the history, not the question.
    session = await open_llm(local_engine, "Answer in one short sentence.")
    history = [("user", "Your name is Zorblax."), ("assistant", "Understood, my name is Zorblax.")]
    remembered = [
        piece
        async for piece in session.generate(
            "What is your name?", images=[], max_new_tokens=24, history=history
        )
    ]
    assert "Zorblax" in "".join(remembered)
    assert "Zorblax" not in "".join(await answer(session, "What is your name?", 24))
