"""POST /v1/chat/completions over HTTP (ASGI) with fake backends; bodies checked against OpenAI's schemas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from chat_http import URL, post, user
from fakes import (
    QWEN_P128,
    QWEN_P256,
    FakeChatBackend,
    Pause,
    assert_error,
    chat_entry,
    client_for,
    make_app,
    parse_sse,
    tokenizers,
    validate,
)
from stackflow_openai.backends.base import BackendBusy, BackendInvalidRequest, BackendUnavailable
from stackflow_openai.services.prompt import DEFAULT_SYSTEM_PROMPT
from stackflow_openai.tokens import PREFILL_MARGIN


def stream_events(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events, done = parse_sse(response.text)
    assert done
    return events


def content_of(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["delta"].get("content", "") for e in events for c in e["choices"] if c["index"] == index)


# ---- responses -------------------------------------------------------------------------------------------
async def test_non_stream_response_shape_usage_and_settings() -> None:
    backend = FakeChatBackend()
    response = await post(backend, user("Hi there"))
    assert response.status_code == 200
    body = response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "qwen" and isinstance(body["created"], int)
    assert "system_fingerprint" not in body
    (choice,) = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello world!", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    prompt_tokens = tokenizers().prompt_tokens(QWEN_P256, DEFAULT_SYSTEM_PROMPT, "Hi there")
    completion_tokens = tokenizers().get("qwen").count("Hello world!")
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    (lease,) = backend.leases
    assert lease.settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert lease.settings.max_token_len == QWEN_P256.max_token_len  # no max_tokens: the model's maximum
    assert lease.settings.temperature is None and lease.settings.top_p is None
    assert lease.exited and backend.generations[0].completed
    assert "x-ignored-params" not in response.headers


async def test_stream_chunks_role_first_then_content_then_finish() -> None:
    backend = FakeChatBackend(script=["Hel", "lo", " 世界"])
    events = stream_events(await post(backend, user("Hi", stream=True)))
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
        assert "usage" not in event  # only with stream_options.include_usage
    assert len({(e["id"], e["created"]) for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert content_of(events) == "Hello 世界"


async def test_include_usage_adds_a_final_usage_chunk() -> None:
    backend = FakeChatBackend(script=["one", " two"])
    body = user("Count", stream=True, stream_options={"include_usage": True})
    events = stream_events(await post(backend, body))
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
    assert all(e["usage"] is None for e in events[:-1])
    final = events[-1]
    assert final["choices"] == []
    prompt_tokens = tokenizers().prompt_tokens(QWEN_P256, DEFAULT_SYSTEM_PROMPT, "Count")
    assert final["usage"]["prompt_tokens"] == prompt_tokens
    assert final["usage"]["completion_tokens"] == tokenizers().get("qwen").count("one two")
    assert final["usage"]["total_tokens"] == prompt_tokens + final["usage"]["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_1_cuts_to_one_token_and_stops_the_unit(stream: bool) -> None:
    backend = FakeChatBackend(script=["Hello wor", "ld, how", " are you?"])
    response = await post(backend, user("Hi", max_tokens=1, stream=stream))
    if stream:
        events = stream_events(response)
        text, finish = content_of(events), events[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
        assert response.json()["usage"]["completion_tokens"] == 1
    assert text == "Hello" and finish == "length"
    generation = backend.generations[0]
    assert generation.exited_early and generation.emitted == ["Hello wor"]  # not consumed further
    # The unit is set up with the model's full capacity so that it can be reused whatever the next
    # request's max_tokens; the cap is enforced here (docs/decisions.md).
    assert backend.leases[0].settings.max_token_len == QWEN_P256.max_token_len


async def test_max_completion_tokens_works_like_max_tokens_and_is_clamped() -> None:
    backend = FakeChatBackend(script=["a b c d e f"])
    body = (await post(backend, user("Hi", max_completion_tokens=2))).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2
    backend = FakeChatBackend()
    await post(backend, user("Hi", max_tokens=100_000))
    assert backend.leases[0].settings.max_token_len == QWEN_P256.max_token_len


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequence_spanning_deltas(stream: bool) -> None:
    backend = FakeChatBackend(script=["The answer", " is 42.", " E", "N", "D and more", " text"])
    response = await post(backend, user("Q", stop=["END", "###"], stream=stream))
    if stream:
        events = stream_events(response)
        pieces = [c["delta"].get("content", "") for e in events for c in e["choices"]]
        assert not any("E" in p for p in pieces)  # the partial match was never sent
        text, finish = content_of(events), events[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert text == "The answer is 42. " and finish == "stop"
    assert backend.generations[0].exited_early  # stopped consuming: the unit gets paused


async def test_prompts_pass_through_unchanged() -> None:
    backend = FakeChatBackend()
    system = 'Reply as {"name": "bot"} \\ end'
    text = 'Code: {"a": {"b": [1, 2]}} \\n \\\\ C:\\path 😀👨‍👩‍👧 こんにちは、世界！ 日本語 "quotes"'
    body = {
        "model": "qwen",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "temperature": 0.3,
        "top_p": 0.9,
    }
    response = await post(backend, body)
    assert response.status_code == 200
    assert backend.generations[0].prompt == text
    settings = backend.leases[0].settings
    assert settings.system_prompt == system and settings.temperature == 0.3 and settings.top_p == 0.9


async def test_configured_system_prompt_is_the_default() -> None:
    backend = FakeChatBackend()
    await post(backend, user("Hi"), extra={"system_prompt": "You are a robot."})
    assert backend.leases[0].settings.system_prompt == "You are a robot."


async def test_long_conversation_is_truncated_to_the_p256_window() -> None:
    backend = FakeChatBackend()
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    for i in range(30):
        messages.append({"role": "user", "content": f"Tell me fact number {i} about otters, please."})
        messages.append({"role": "assistant", "content": f"Fact {i}: otters hold hands while they sleep."})
    messages.append({"role": "user", "content": "Which fact was first?"})
    response = await post(backend, {"model": "qwen", "messages": messages})
    assert response.status_code == 200
    prompt = backend.generations[0].prompt
    assert "fact number 0 " not in prompt and "fact number 29 " in prompt  # oldest dropped, newest kept
    assert prompt.endswith("\n\nNow answer the user's new message: Which fact was first?")
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == tokenizers().prompt_tokens(QWEN_P256, "You are terse.", prompt)
    assert usage["prompt_tokens"] <= QWEN_P256.prefill_len - PREFILL_MARGIN
    assert backend.leases[0].settings.system_prompt == "You are terse."


async def test_over_long_single_message_is_context_length_exceeded() -> None:
    backend = FakeChatBackend(QWEN_P128)
    response = await post(backend, user("tell me about otters " * 60))
    error = assert_error(response, 400, code="context_length_exceeded", param="messages")
    assert "128" in error["message"]
    assert backend.leases == []  # refused before touching the device


async def test_n_choices_run_one_after_another_in_one_lease() -> None:
    backend = FakeChatBackend(script=lambda prompt, i: [f"answer {i}"])
    body = (await post(backend, user("Hi", n=3))).json()
    validate("CreateChatCompletionResponse", body)
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [
        (0, "answer 0"),
        (1, "answer 1"),
        (2, "answer 2"),
    ]
    assert len(backend.leases) == 1 and len(backend.generations) == 3


async def test_n_choices_stream() -> None:
    backend = FakeChatBackend(script=lambda prompt, i: [f"answer {i}"])
    events = stream_events(await post(backend, user("Hi", n=2, stream=True)))
    assert content_of(events, 0) == "answer 0" and content_of(events, 1) == "answer 1"
    finishes = [c["index"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == [0, 1]


async def test_n_refused_when_the_model_does_not_allow_it() -> None:
    response = await post(FakeChatBackend(), user("Hi", n=2), allow_n=False)
    assert_error(response, 400, code="unsupported_parameter", param="n")


# ---- ignored parameters -----------------------------------------------------------------------------------
async def test_ignored_params_are_listed_and_neutral_values_are_not() -> None:
    body = user(
        "Hi",
        seed=7,
        tools=[{"type": "function", "function": {"name": "f"}}],
        logit_bias={"1": 5},
        my_vendor_field=True,
        frequency_penalty=0,
        presence_penalty=0.0,
        response_format={"type": "text"},
        logprobs=False,
        tool_choice="none",
        parallel_tool_calls=True,
        metadata=None,
    )
    response = await post(FakeChatBackend(), body)
    assert response.status_code == 200
    # tools, tool_choice, parallel_tool_calls and response_format are acted on (docs/tools.md)
    assert response.headers["x-ignored-params"] == "logit_bias,my_vendor_field,seed"


async def test_ignored_params_header_on_streams_too() -> None:
    response = await post(FakeChatBackend(), user("Hi", stream=True, seed=3))
    assert response.headers["x-ignored-params"] == "seed"
    stream_events(response)


async def test_strict_models_refuse_ignored_params() -> None:
    backend = FakeChatBackend()
    response = await post(backend, user("Hi", seed=1, top_logprobs=3), strict_params=True)
    error = assert_error(response, 400, code="unsupported_parameter", param="seed")
    assert "top_logprobs" in error["message"]
    assert backend.leases == []
    assert (await post(backend, user("Hi", frequency_penalty=0), strict_params=True)).status_code == 200
    # Bookkeeping fields never change the answer: not refused, not reported (LibreChat sends `user`).
    bookkeeping = {"user": "u-42", "metadata": {"k": "v"}, "store": True, "service_tier": "flex",
                   "prompt_cache_key": "c", "safety_identifier": "s"}  # fmt: skip
    response = await post(backend, user("Hi", **bookkeeping), strict_params=True)
    assert response.status_code == 200 and "x-ignored-params" not in response.headers


async def test_instructions_alone_are_answered() -> None:
    # OpenAI answers a conversation of system messages only; the unit needs a user turn.
    backend = FakeChatBackend()
    response = await post(
        backend, {"model": "qwen", "messages": [{"role": "system", "content": "Say hello."}]}
    )
    assert response.status_code == 200
    assert backend.generations[0].prompt == "Say hello."
    assert backend.leases[0].settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    empty = await post(backend, {"model": "qwen", "messages": [{"role": "system", "content": " "}]})
    assert_error(empty, 400, param="messages")


# ---- validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type"),
        ({"model": 42}, "model"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yes"},
                    {"role": "user", "content": ""},
                ]
            },
            "messages[2].content",
        ),
    ],
)
async def test_invalid_fields_are_400_naming_the_param(extra: dict[str, Any], param: str) -> None:
    backend = FakeChatBackend()
    response = await post(backend, {**user("Hi"), **extra})
    assert_error(response, 400, param=param)
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert backend.leases == []


async def test_unknown_model_is_404_listing_the_models() -> None:
    response = await post(FakeChatBackend(), {**user("Hi"), "model": "gpt-4o"})
    error = assert_error(response, 404, code="model_not_found", param="model")
    assert (
        "gpt-4o" in error["message"] and "qwen" in error["message"] and "other/model:v1" in error["message"]
    )


async def test_model_ids_with_slashes_are_served() -> None:
    app = make_app([chat_entry("org/model:v1", FakeChatBackend())])
    async with client_for(app) as client:
        response = await client.post(URL, json={**user("Hi"), "model": "org/model:v1"})
    assert response.status_code == 200 and response.json()["model"] == "org/model:v1"


# ---- backend errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_busy_backend_is_503_with_retry_after(stream: bool) -> None:
    backend = FakeChatBackend(lease_error=BackendBusy("all units busy", retry_after=2.5))
    response = await post(backend, user("Hi", stream=stream))
    error = assert_error(response, 503, code="server_busy")
    assert error["type"] == "server_error"
    assert response.headers["retry-after"] == "3"


async def test_retry_after_is_at_least_one_second() -> None:
    backend = FakeChatBackend(lease_error=BackendBusy("busy", retry_after=0.01))
    assert (await post(backend, user("Hi"))).headers["retry-after"] == "1"


async def test_unavailable_backend_is_503() -> None:
    backend = FakeChatBackend(lease_error=BackendUnavailable("device unreachable"))
    error = assert_error(await post(backend, user("Hi")), 503, code="device_unavailable")
    assert "unreachable" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_device_refusing_the_input_is_400_even_when_streaming(stream: bool) -> None:
    backend = FakeChatBackend(script=[BackendInvalidRequest("could not decode the image", param="messages")])
    response = await post(backend, user("Hi", stream=stream))
    assert_error(response, 400, param="messages")
    assert backend.leases[0].exited


async def test_error_after_the_stream_started_is_an_sse_error_event() -> None:
    backend = FakeChatBackend(script=["Hello", " there", BackendUnavailable("the device stopped answering")])
    events = stream_events(await post(backend, user("Hi", stream=True)))
    assert content_of(events[:-1]) == "Hello there"
    validate("ErrorResponse", events[-1])
    assert events[-1]["error"]["code"] == "device_unavailable"
    assert backend.leases[0].exited and backend.leases[0].exit_error is BackendUnavailable


async def test_unexpected_exception_is_a_500_without_traceback() -> None:
    backend = FakeChatBackend(script=[RuntimeError("secret internal detail")])
    response = await post(backend, user("Hi"))
    error = assert_error(response, 500, code="internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert error["type"] == "server_error"


# ---- disconnects -----------------------------------------------------------------------------------------
async def drive_asgi(
    app: Any, body: dict[str, Any], *, disconnect_after: int | None, when: Callable[[], bool] | None = None
) -> list[bytes]:
    """Run one request through the ASGI app as uvicorn does (spec 2.3); the client disconnects after
    `disconnect_after` body chunks, or as soon as `when()` is true."""
    payload = json.dumps(body).encode()
    gone = asyncio.Event()
    sent: list[bytes] = []
    request_read = False

    async def receive() -> dict[str, Any]:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])
            if disconnect_after is not None and len(sent) == disconnect_after:
                gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5),
        "server": ("testserver", 80),
    }

    async def watch() -> None:
        while not (when and when()):  # noqa: ASYNC110 - polls a plain flag set by the fake backend
            await asyncio.sleep(0.01)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
    finally:
        watcher.cancel()
    return sent


async def test_client_disconnect_mid_stream_closes_the_backend_generator() -> None:
    """After two SSE events (the role, then "ab": both deltas were there at once, so they travel as one
    event) the client goes away while the backend waits for its next delta: the generator must be
    closed and the lease released, their clean-up not cut short by the cancellation."""
    backend = FakeChatBackend(script=["a", "b", Pause(None), "never"])
    sent = await drive_asgi(
        make_app([chat_entry("qwen", backend)]), user("Hi", stream=True), disconnect_after=2
    )
    generation = backend.generations[0]
    await asyncio.wait_for(generation.closed_event.wait(), timeout=5)
    assert generation.exited_early and generation.emitted == ["a", "b"]
    assert generation.cleanup_done  # the "pause" after the cancellation was not cancelled itself
    assert backend.leases[0].exited and backend.leases[0].cleanup_done
    assert b"[DONE]" not in b"".join(sent)


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_before_the_answer_stops_the_generation(stream: bool) -> None:
    """A non-stream request (or a stream still waiting for its first delta) has no body to write yet:
    the disconnect itself must cancel the work, or the device would generate for nobody."""
    backend = FakeChatBackend(script=[Pause(None), "never"])
    sent = await drive_asgi(
        make_app([chat_entry("qwen", backend)]),
        user("Hi", stream=stream),
        disconnect_after=None,
        when=lambda: bool(backend.generations),
    )
    assert sent == []
    generation = backend.generations[0]
    await asyncio.wait_for(generation.closed_event.wait(), timeout=5)
    assert generation.exited_early and generation.cleanup_done
    assert backend.leases[0].exited and backend.leases[0].cleanup_done
