"""Reasoning split (reasoning_content) and tool-call encoding over HTTP, on scripted fake backends."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from chat_http import post, user
from fakes import QWEN_P256, FakeChatBackend, assert_error, validate

R1 = replace(QWEN_P256, name="deepseek-r1-1.5B-p256-ax630c")
QWEN3 = replace(QWEN_P256, name="qwen3-0.6B-ax630c")
THINKING = ["<think>\nThe user", " greets me.\n</th", "ink>\n\nHello", " there!"]
TWO_CALLS = [
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n',
    '<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>',
]
TOOLS = [
    {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}},
]


def _events(response: Any) -> list[dict[str, Any]]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_reasoning_is_split_off_non_stream_and_stream() -> None:
    for info in (R1, QWEN3):
        response = await post(FakeChatBackend(info, THINKING), user("Hi"))
        body = response.json()
        validate("CreateChatCompletionResponse", body)
        message = body["choices"][0]["message"]
        assert (
            message["content"] == "Hello there!" and message["reasoning_content"] == "The user greets me.\n"
        )

    response = await post(FakeChatBackend(R1, THINKING), user("Hi", stream=True))
    events = _events(response)
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in events)
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert reasoning == "The user greets me.\n" and content == "Hello there!"
    assert all("<think>" not in json.dumps(e) and "</think>" not in json.dumps(e) for e in events)


async def test_reasoning_off_keeps_the_raw_text_and_other_models_are_untouched() -> None:
    response = await post(FakeChatBackend(R1, THINKING), user("Hi"), extra={"reasoning": "off"})
    message = response.json()["choices"][0]["message"]
    assert message["content"].startswith("<think>") and "reasoning_content" not in message
    plain = await post(FakeChatBackend(QWEN_P256, THINKING), user("Hi"))
    assert "reasoning_content" not in plain.json()["choices"][0]["message"]


async def test_thinking_never_counts_against_the_json_format() -> None:
    script = ['<think>{"bad": ', "true}</think>", '{"ok": 1}']
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "required": ["ok"]}},
    }
    response = await post(FakeChatBackend(QWEN3, script), user("Hi", response_format=fmt))
    message = response.json()["choices"][0]["message"]
    assert json.loads(message["content"]) == {"ok": 1} and message["reasoning_content"] == '{"bad": true}'


async def test_parallel_calls_and_parallel_tool_calls_false() -> None:
    response = await post(FakeChatBackend(script=TWO_CALLS), user("Hi", tools=TOOLS))
    body = response.json()
    validate("CreateChatCompletionResponse", body)
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["a", "b"] and json.loads(
        calls[1]["function"]["arguments"]
    ) == {"x": 1}
    assert len({c["id"] for c in calls}) == 2

    stream = await post(FakeChatBackend(script=TWO_CALLS), user("Hi", tools=TOOLS, stream=True))
    deltas = [
        e["choices"][0]["delta"]["tool_calls"][0]
        for e in _events(stream)
        if "tool_calls" in e["choices"][0]["delta"]
    ]
    assert [d["index"] for d in deltas] == [0, 0, 1, 1] and deltas[2]["function"]["name"] == "b"

    one = await post(FakeChatBackend(script=TWO_CALLS), user("Hi", tools=TOOLS, parallel_tool_calls=False))
    assert [c["function"]["name"] for c in one.json()["choices"][0]["message"]["tool_calls"]] == ["a"]


async def test_bad_tool_fields_are_a_400_and_the_unit_is_not_touched() -> None:
    backend = FakeChatBackend(script=TWO_CALLS)
    response = await post(
        backend, user("Hi", tools=[{"type": "function", "function": {"name": "no spaces"}}])
    )
    assert_error(response, 400, param="tools[0].function.name")
    response = await post(backend, user("Hi", response_format={"type": "json_schema"}))
    assert_error(response, 400, param="response_format.json_schema")
    assert backend.leases == []


async def test_a_refused_answer_leaves_the_unit_healthy() -> None:
    backend = FakeChatBackend(script=["no call here"])
    response = await post(backend, user("Hi", tools=TOOLS, tool_choice="required"))
    assert_error(response, 500, code="tool_call_invalid", param="tools")
    assert len(backend.generations) == 2  # the answer and one re-ask, on one lease
    assert len(backend.leases) == 1 and backend.leases[0].exit_error is None  # not exited as broken


def test_the_sdk_sees_reasoning_content_in_messages_and_deltas() -> None:
    import openai

    from fakes import chat_entry, make_app, serve_in_thread

    app = make_app([chat_entry("r1", FakeChatBackend(R1, THINKING))])
    with serve_in_thread(app) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        message = (
            sdk.chat.completions.create(model="r1", messages=[{"role": "user", "content": "Hi"}])
            .choices[0]
            .message
        )
        assert (
            message.content == "Hello there!"
            and message.model_extra["reasoning_content"] == "The user greets me.\n"
        )
        stream = sdk.chat.completions.create(
            model="r1", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        deltas = [c.choices[0].delta for c in stream if c.choices]
        thinking = "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas)
        assert (
            thinking == "The user greets me.\n" and "".join(d.content or "" for d in deltas) == "Hello there!"
        )


async def test_text_before_a_call_streams_as_content_and_the_tag_never_does() -> None:
    script = ["Let me ", "check. <tool", '_call>\n{"name": "a", ', '"arguments": {}}\n</tool_call>']
    response = await post(FakeChatBackend(script=script), user("Hi", tools=TOOLS, stream=True))
    events = _events(response)
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert content == "Let me check. " and "tool_call>" not in response.text
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    body = (await post(FakeChatBackend(script=script), user("Hi", tools=TOOLS))).json()
    assert body["choices"][0]["message"]["content"] == "Let me check."


async def test_every_choice_of_n_gets_its_own_calls_and_ids() -> None:
    response = await post(FakeChatBackend(script=TWO_CALLS), user("Hi", tools=TOOLS, n=2))
    choices = response.json()["choices"]
    assert [c["finish_reason"] for c in choices] == ["tool_calls", "tool_calls"]
    ids = [call["id"] for c in choices for call in c["message"]["tool_calls"]]
    assert len(ids) == 4 and len(set(ids)) == 4
