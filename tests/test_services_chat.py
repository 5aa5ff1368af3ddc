"""The chat and completion services without HTTP: results, closing and cancellation with fake backends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fakes import QWEN_P256, FakeChatBackend, FakeRegistry, Pause, chat_entry, tokenizers
from stackflow_openai.backends.base import BackendUnavailable, UnitSettings
from stackflow_openai.errors import ModelNotFoundError
from stackflow_openai.services import (
    ChatService,
    CompletionService,
    ImageLoader,
    ImagePolicy,
    JsonResult,
    ModelService,
    StreamResult,
)
from stackflow_openai.services.events import ChoiceFinished, ChoiceStarted, ChoiceText, Job
from stackflow_openai.services.generation import generate_choices


def chat_service(backend: FakeChatBackend, **entry: Any) -> ChatService:
    registry = FakeRegistry([chat_entry("m", backend, **entry)])
    return ChatService(registry, tokenizers(), ImageLoader(ImagePolicy(), ImageLoader.new_client()))


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **extra}


def as_object(chunk: dict[str, Any] | bytes) -> dict[str, Any]:
    """A stream chunk as the client sees it: text deltas come as SSE events already framed."""
    if isinstance(chunk, bytes):
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        return json.loads(chunk[6:])  # type: ignore[no-any-return]
    return chunk


async def test_json_result_with_ignored_header() -> None:
    result = await chat_service(FakeChatBackend()).create(body(seed=1))
    assert isinstance(result, JsonResult)
    assert result.headers == {"X-Ignored-Params": "seed"}
    assert result.body["choices"][0]["message"]["content"] == "Hello world!"


async def test_closing_a_stream_early_closes_the_generation_and_the_lease() -> None:
    backend = FakeChatBackend(script=["a", Pause(None), "b", "c"])  # the device is still generating
    result = await chat_service(backend).create(body(stream=True))
    assert isinstance(result, StreamResult)
    first = as_object(await anext(result.chunks))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert as_object(await anext(result.chunks))["choices"][0]["delta"] == {"content": "a"}
    await result.chunks.aclose()
    generation, lease = backend.generations[0], backend.leases[0]
    assert generation.closed and generation.exited_early and generation.cleanup_done
    assert lease.exited and lease.cleanup_done


async def test_cancelling_the_consumer_while_waiting_lets_the_backend_clean_up() -> None:
    backend = FakeChatBackend(script=["a", Pause(None)])
    result = await chat_service(backend).create(body(stream=True))
    assert isinstance(result, StreamResult)

    async def consume() -> None:
        async for _ in result.chunks:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(backend.generations[0].closed_event.wait(), 2)
    assert backend.generations[0].cleanup_done
    for _ in range(100):
        if backend.leases[0].cleanup_done:
            break
        await asyncio.sleep(0.01)
    assert backend.leases[0].cleanup_done and backend.leases[0].exit_error is asyncio.CancelledError


async def test_backend_error_releases_the_lease_with_the_error() -> None:
    backend = FakeChatBackend(script=["a", BackendUnavailable("gone")])
    with pytest.raises(BackendUnavailable):
        await chat_service(backend).create(body())
    assert backend.leases[0].exit_error is BackendUnavailable and backend.leases[0].cleanup_done


async def test_temperature_top_p_reach_the_unit_settings_and_max_tokens_does_not() -> None:
    backend = FakeChatBackend()
    service = chat_service(backend)
    await service.create(body(temperature=0, top_p=0.5, max_tokens=10))
    await service.create(body(temperature=0, top_p=0.5, max_tokens=20))
    # Both requests need the same setup, so a pool can reuse one unit for both (docs/decisions.md).
    expected = UnitSettings("You are a helpful assistant.", QWEN_P256.max_token_len, 0.0, 0.5)
    assert [lease.settings for lease in backend.leases] == [expected, expected]


async def test_generate_choices_events_in_order() -> None:
    backend = FakeChatBackend(script=lambda prompt, i: [prompt, f" #{i}"])
    settings = UnitSettings("S", 100)
    jobs = [Job("x", [], 50), Job("y", [], 50)]
    events = [
        e async for e in generate_choices(backend, settings, jobs, counter=tokenizers().get("qwen"), stops=[])
    ]
    # The fake yields both deltas of a choice at once, as a device whose deltas are already queued: they
    # come out as one text event (the batching of generation._ChoiceReader).
    assert events == [
        ChoiceStarted(0),
        ChoiceText(0, "x #0"),
        ChoiceFinished(0, "stop", "x #0", 3),
        ChoiceStarted(1),
        ChoiceText(1, "y #1"),
        ChoiceFinished(1, "stop", "y #1", 3),
    ]
    assert len(backend.leases) == 1


async def test_deltas_that_come_one_by_one_are_sent_one_by_one() -> None:
    # At device speed each delta is its own chunk; only deltas already waiting are joined (above).
    backend = FakeChatBackend(script=["a", "b", "c"], delay=0.01)
    result = await chat_service(backend).create(body(stream=True))
    assert isinstance(result, StreamResult)
    chunks = [as_object(c) async for c in result.chunks]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert texts == ["", "a", "b", "c", None]  # role, three deltas, finish


async def test_empty_generation_still_finishes() -> None:
    backend = FakeChatBackend(script=[])
    result = await chat_service(backend).create(body())
    assert isinstance(result, JsonResult)
    assert result.body["choices"][0]["message"]["content"] == ""
    assert result.body["usage"]["completion_tokens"] == 0


async def test_completion_service_stream_closes_on_stop() -> None:
    backend = FakeChatBackend(script=["a b", " STOP", " c"])
    registry = FakeRegistry([chat_entry("m", backend)])
    result = await CompletionService(registry, tokenizers()).create(
        {"model": "m", "prompt": "p", "stream": True, "stop": "STOP"}
    )
    assert isinstance(result, StreamResult)
    texts = [as_object(c)["choices"][0]["text"] async for c in result.chunks]
    assert "".join(texts) == "a b " and backend.generations[0].exited_early


def test_model_service() -> None:
    registry = FakeRegistry([chat_entry("a/b", FakeChatBackend())])
    service = ModelService(registry)
    assert service.list()["data"][0]["id"] == "a/b"
    with pytest.raises(ModelNotFoundError) as info:
        service.get("zzz")
    assert info.value.available == ["a/b"]
