"""The official `openai` SDK (sync and async) against the app served by uvicorn on a free port."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from fakes import (
    VLM_INFO,
    FakeChatBackend,
    Pause,
    chat_entry,
    image_bytes,
    make_app,
    serve_in_thread,
    validate,
)
from stackflow_openai.backends.base import BackendBusy

BACKENDS: dict[str, FakeChatBackend] = {}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    BACKENDS.update(
        chat=FakeChatBackend(script=["Hello", ", ", "wor", "ld! {ok} \\ 🙂 日本"]),
        busy=FakeChatBackend(lease_error=BackendBusy("every unit is busy", retry_after=2)),
        slow=FakeChatBackend(script=["tick"] + [Pause(0.05), "tick"] * 400),
        vision=FakeChatBackend(VLM_INFO, script=["a red square"]),
    )
    entries = [chat_entry(name, backend) for name, backend in BACKENDS.items()]
    entries.append(chat_entry("org/strict", FakeChatBackend(), strict_params=True))
    with serve_in_thread(make_app(entries)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=10,
        _strict_response_validation=True,
    ) as sdk:
        yield sdk


@pytest.fixture
async def aclient(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=10,
        _strict_response_validation=True,
    )


def test_sync_chat(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi {there} \\ 😀"}], temperature=0.5
    )
    validate("CreateChatCompletionResponse", completion.model_dump(mode="json", exclude_unset=True))
    assert completion.choices[0].message.content == "Hello, world! {ok} \\ 🙂 日本"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > completion.usage.prompt_tokens
    assert BACKENDS["chat"].generations[-1].prompt == "Hi {there} \\ 😀"


def test_sync_chat_stream_with_stop_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stop=["world"],
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_sync_completions_and_models(client: openai.OpenAI, base_url: str) -> None:
    completion = client.completions.create(model="chat", prompt=["a", "b"], max_tokens=1)
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "Hello", "length"),
        (1, "Hello", "length"),
    ]
    # Streamed completion chunks carry finish_reason null until the last, as OpenAI's own API does; the
    # SDK's type says non-null, so its strict validation mode would reject OpenAI too: use the default mode.
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as lenient:
        chunks = list(lenient.completions.create(model="chat", prompt="a", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello, world! {ok} \\ 🙂 日本"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert {m.id for m in client.models.list()} >= {"chat", "busy", "org/strict"}
    assert client.models.retrieve("org/strict").id == "org/strict"


def test_sync_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.InternalServerError) as busy:
        client.chat.completions.create(model="busy", messages=[{"role": "user", "content": "hi"}])
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "2"
    assert busy.value.code == "server_busy"
    with pytest.raises(openai.BadRequestError) as strict:
        client.chat.completions.create(
            model="org/strict", messages=[{"role": "user", "content": "hi"}], seed=1
        )
    assert strict.value.code == "unsupported_parameter" and strict.value.param == "seed"


def test_ignored_params_header_through_the_sdk(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        seed=3,
        logit_bias={"5": 1},
        extra_body={"top_k": 20},
    )
    assert raw.headers["x-ignored-params"] == "logit_bias,seed,top_k"
    assert raw.parse().choices[0].message.content


async def test_async_chat_stream_and_image(aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        stream = await aclient.chat.completions.create(
            model="chat",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            stream=True,
            max_tokens=1,
        )
        chunks = [chunk async for chunk in stream]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
        assert chunks[-1].choices[0].finish_reason == "length"

        url = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
        completion = await aclient.chat.completions.create(
            model="vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
        assert completion.choices[0].message.content == "a red square"
        assert BACKENDS["vision"].generations[-1].images[0][:2] == b"\xff\xd8"  # JPEG magic


async def test_async_errors(aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        with pytest.raises(openai.BadRequestError) as bad:
            await aclient.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x " * 300}]
            )
        assert bad.value.code == "context_length_exceeded"


def test_client_disconnect_over_tcp_closes_the_generation(base_url: str) -> None:
    backend = BACKENDS["slow"]
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    with (
        httpx.Client(timeout=5) as http,
        http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False) if line.startswith("data: ")]
        assert len(received) >= 2
    deadline = time.monotonic() + 5
    while not (backend.generations and backend.generations[-1].closed and backend.leases[-1].cleanup_done):
        assert time.monotonic() < deadline, "the generation was not closed after the client left"
        time.sleep(0.02)
    generation = backend.generations[-1]
    assert generation.exited_early and generation.cleanup_done
    assert len(generation.emitted) < 50  # stopped long before the end of the script
