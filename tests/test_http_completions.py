"""POST /v1/completions (legacy text completions) over HTTP with fake backends."""

from __future__ import annotations

from typing import Any

import pytest

from fakes import (
    QWEN_P128,
    QWEN_P256,
    FakeChatBackend,
    FakeProxyBackend,
    assert_error,
    chat_entry,
    client_for,
    make_app,
    parse_sse,
    tokenizers,
    validate,
)
from stackflow_openai.backends.base import BackendBusy, ModelEntry
from stackflow_openai.services.prompt import DEFAULT_SYSTEM_PROMPT

URL = "/v1/completions"


async def post(backend: FakeChatBackend, body: dict[str, Any], **entry: Any) -> Any:
    app = make_app([chat_entry("qwen", backend, **entry)])
    async with client_for(app) as client:
        return await client.post(URL, json={"model": "qwen", **body})


def stream(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events, done = parse_sse(response.text)
    assert done
    for event in events:
        validate("CompletionChunk", event)
    return events


def text_of(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["text"] for e in events for c in e["choices"] if c["index"] == index)


async def test_string_prompt() -> None:
    backend = FakeChatBackend()
    response = await post(backend, {"prompt": "Say hello {name} \\ 🙂"})
    body = response.json()
    validate("CreateCompletionResponse", body)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "Hello world!", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert backend.generations[0].prompt == "Say hello {name} \\ 🙂"
    assert backend.leases[0].settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    prompt_tokens = tokenizers().prompt_tokens(QWEN_P256, DEFAULT_SYSTEM_PROMPT, "Say hello {name} \\ 🙂")
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == tokenizers().get("qwen").count("Hello world!")


async def test_list_of_prompts_times_n_in_order_in_one_lease() -> None:
    backend = FakeChatBackend(script=lambda prompt, i: [f"{prompt}->{i}"])
    body = (await post(backend, {"prompt": ["A", "B"], "n": 2})).json()
    validate("CreateCompletionResponse", body)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "A->0"),
        (1, "A->1"),
        (2, "B->2"),
        (3, "B->3"),
    ]
    assert len(backend.leases) == 1
    count = tokenizers().prompt_tokens
    assert body["usage"]["prompt_tokens"] == count(QWEN_P256, DEFAULT_SYSTEM_PROMPT, "A") + count(
        QWEN_P256, DEFAULT_SYSTEM_PROMPT, "B"
    )


async def test_echo_prepends_the_prompt() -> None:
    backend = FakeChatBackend(script=[" there"])
    body = (await post(backend, {"prompt": "Hi", "echo": True})).json()
    assert body["choices"][0]["text"] == "Hi there"
    assert body["usage"]["completion_tokens"] == tokenizers().get("qwen").count(" there")
    events = stream(await post(backend, {"prompt": "Hi", "echo": True, "stream": True}))
    assert text_of(events) == "Hi there"


async def test_stream_with_usage_and_stop() -> None:
    backend = FakeChatBackend(script=["one, two", ", thr", "ee"])
    events = stream(
        await post(
            backend,
            {"prompt": "Count", "stream": True, "stop": ", thr", "stream_options": {"include_usage": True}},
        )
    )
    assert text_of(events) == "one, two"
    finishes = [c["finish_reason"] for e in events for c in e["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    assert all("usage" not in e for e in events[:-1])
    assert backend.generations[0].exited_early


async def test_max_tokens_one() -> None:
    backend = FakeChatBackend(script=["Hello world"])
    body = (await post(backend, {"prompt": "Hi", "max_tokens": 1})).json()
    assert body["choices"][0]["text"] == "Hello" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1


async def test_unsupported_options_are_reported_or_refused_in_strict_mode() -> None:
    backend = FakeChatBackend()
    response = await post(
        backend, {"prompt": "Hi", "suffix": "END", "logprobs": 2, "best_of": 3, "frequency_penalty": 0}
    )
    assert response.status_code == 200
    assert response.headers["x-ignored-params"] == "best_of,logprobs,suffix"
    neutral = await post(backend, {"prompt": "Hi", "n": 2, "best_of": 2, "suffix": "", "logprobs": None})
    assert "x-ignored-params" not in neutral.headers
    strict = await post(backend, {"prompt": "Hi", "suffix": "END"}, strict_params=True)
    assert_error(strict, 400, code="unsupported_parameter", param="suffix")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "Hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", " "]}, "prompt[1]"),
    ],
)
async def test_invalid_prompts(body: dict[str, Any], param: str) -> None:
    assert_error(await post(FakeChatBackend(), body), 400, param=param)


async def test_over_long_prompt_is_context_length_exceeded() -> None:
    response = await post(FakeChatBackend(QWEN_P128), {"prompt": "otters are great " * 50})
    assert_error(response, 400, code="context_length_exceeded", param="prompt")


async def test_busy_is_503_before_the_stream_starts() -> None:
    backend = FakeChatBackend(lease_error=BackendBusy("busy", retry_after=4))
    response = await post(backend, {"prompt": "Hi", "stream": True})
    assert_error(response, 503, code="server_busy")
    assert response.headers["retry-after"] == "4"


async def test_proxy_models_are_forwarded_untouched() -> None:
    proxy = FakeProxyBackend(body=b'{"id":"cmpl-up","object":"text_completion"}')
    app = make_app([ModelEntry(id="big", kind="proxy", proxy=proxy)])
    async with client_for(app) as client:
        response = await client.post(URL, json={"model": "big", "prompt": "Hi", "seed": 3})
        chat = await client.post(
            "/v1/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": "x"}]}
        )
    assert response.status_code == 200 and response.json()["id"] == "cmpl-up"
    assert chat.status_code == 200
    assert proxy.calls == [
        ("/completions", {"model": "big", "prompt": "Hi", "seed": 3}),
        ("/chat/completions", {"model": "big", "messages": [{"role": "user", "content": "x"}]}),
    ]


async def test_max_tokens_defaults_to_16_and_0_scores_the_prompt_without_the_device() -> None:
    backend = FakeChatBackend(script=["word " * 40])
    body = (await post(backend, {"prompt": "Hi"})).json()
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"
    backend = FakeChatBackend()
    body = (await post(backend, {"prompt": "Hi there", "max_tokens": 0, "echo": True})).json()
    validate("CreateCompletionResponse", body)
    assert body["choices"][0]["text"] == "Hi there" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] > 0
    events = stream(
        await post(backend, {"prompt": "Hi there", "max_tokens": 0, "echo": True, "stream": True})
    )
    assert text_of(events) == "Hi there"
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == "length"
    assert backend.leases == []  # nothing to generate: no unit was leased
