"""/v1/responses over HTTP with fake backends: shapes (OpenAI's schemas), the event stream, conversation
building, truncation, refusals, ignored parameters, input item pages, key isolation, failures."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import (
    QWEN_P128,
    VLM_INFO,
    FakeChatBackend,
    assert_error,
    chat_entry,
    client_for,
    image_bytes,
    make_app,
)
from responses_schema import parse_response_events, validate_responses
from stackflow_openai.app import HttpSettings
from stackflow_openai.backends.base import BackendUnavailable, ChatModelInfo

BACKENDS: dict[str, FakeChatBackend] = {}
STARTS = ("created", "in_progress", "output_item.added", "content_part.added")
ENDS = ("output_text.done", "content_part.done", "output_item.done", "completed")
FILE_PART = {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}
IMAGE_ID_PART = {"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    BACKENDS.clear()
    BACKENDS.update(
        m=FakeChatBackend(script=["Hello", " world", "!"]),
        small=FakeChatBackend(QWEN_P128, script=["ok"]),
        broken=FakeChatBackend(script=["partial", BackendUnavailable("the device went away")]),
    )
    entries = [chat_entry(name, backend) for name, backend in BACKENDS.items()]
    entries.append(chat_entry("strict", FakeChatBackend(), strict_params=True))
    async with client_for(make_app(entries)) as http:
        yield http


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/responses", json={"model": "m", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    validate_responses("Response", result)
    return result


async def test_string_input_with_instructions(client: httpx.AsyncClient) -> None:
    body = await create(client, input="Hi there", instructions="Answer briefly.", metadata={"k": "v"})
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert (
        message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    )
    assert message["content"][0]["text"] == "Hello world!"
    usage = body["usage"]
    assert (
        usage["output_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    )
    assert body["instructions"] == "Answer briefly." and body["metadata"] == {"k": "v"}
    assert body["incomplete_details"] is None and body["error"] is None and body["store"] is True
    backend = BACKENDS["m"]
    assert backend.leases[-1].settings.system_prompt == "Answer briefly."
    assert backend.generations[-1].prompt == "Hi there"


async def test_item_input_becomes_the_chat_conversation(client: httpx.AsyncClient) -> None:
    items = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "My name is Ann."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi Ann."}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"Ann"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Ann is 7."},
        {"role": "user", "content": "How old am I?"},
    ]
    body = await create(client, input=items, instructions="You are kind.")
    backend = BACKENDS["m"]
    assert backend.leases[-1].settings.system_prompt == "You are kind.\n\nBe terse."
    prompt = backend.generations[-1].prompt
    # The call and its result as the model family (Qwen) writes them, as chat's tool_calls would be.
    call = '<tool_call>\n{"name": "lookup", "arguments": {"q": "Ann"}}\n</tool_call>'
    assert f"User: My name is Ann.\nAssistant: Hi Ann.\n{call}\n" in prompt
    assert "Tool: <tool_response>\nAnn is 7.\n</tool_response>" in prompt
    assert prompt.endswith("How old am I?")
    listed = (await client.get(f"/v1/responses/{body['id']}/input_items", params={"order": "asc"})).json()
    validate_responses("ResponseItemList", listed)
    assert [item["type"] for item in listed["data"]] == [
        "message", "message", "message", "function_call", "function_call_output", "message"
    ]  # fmt: skip
    assert all(item["id"] and item["status"] == "completed" for item in listed["data"])
    assert listed["data"][1]["content"] == [{"type": "input_text", "text": "My name is Ann."}]


async def test_stream_event_order_and_deltas_equal_the_final_text(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json={"model": "m", "input": "Hi", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_response_events(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [f"response.{k}" for k in STARTS]
    assert kinds[-4:] == [f"response.{k}" for k in ENDS]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == final["output"][0]["content"][0]["text"] == "Hello world!"
    assert events[0]["response"]["status"] == "in_progress" and final["status"] == "completed"
    stored = (await client.get(f"/v1/responses/{final['id']}")).json()
    assert stored == final


async def test_max_output_tokens_makes_it_incomplete(client: httpx.AsyncClient) -> None:
    body = await create(client, input="Hi", max_output_tokens=1)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 1
    response = await client.post(
        "/v1/responses", json={"model": "m", "input": "Hi", "stream": True, "max_output_tokens": 1}
    )
    events = parse_response_events(response.text)
    assert events[-1]["type"] == "response.incomplete"


async def test_previous_response_id_continues_and_instructions_do_not_carry(
    client: httpx.AsyncClient,
) -> None:
    first = await create(client, input="My name is Ann.", instructions="Old rules.")
    second = await create(client, input="What is my name?", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    backend = BACKENDS["m"]
    assert backend.leases[-1].settings.system_prompt != "Old rules."  # OpenAI: not carried over
    prompt = backend.generations[-1].prompt
    assert "User: My name is Ann.\nAssistant: Hello world!" in prompt and prompt.endswith("What is my name?")
    third = await create(client, input="And now?", previous_response_id=second["id"])
    assert "User: What is my name?" in BACKENDS["m"].generations[-1].prompt
    # input_items lists only the request's own items
    listed = (await client.get(f"/v1/responses/{third['id']}/input_items")).json()
    assert [i["content"][0]["text"] for i in listed["data"]] == ["And now?"]


async def test_truncation_disabled_refuses_and_auto_drops_the_oldest(client: httpx.AsyncClient) -> None:
    turns = [{"role": "user", "content": f"Turn {i}: " + "lorem ipsum dolor " * 6} for i in range(8)]
    response = await client.post("/v1/responses", json={"model": "small", "input": turns})
    assert_error(response, 400, code="context_length_exceeded", param="input")
    assert "truncation" in response.json()["error"]["message"]
    body = await create(client, model="small", input=turns, truncation="auto")
    assert body["truncation"] == "auto"
    prompt = BACKENDS["small"].generations[-1].prompt
    assert "Turn 7" in prompt and "Turn 0" not in prompt


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True, "stream": True}, "stream"),
        ({"background": True, "store": False}, "store"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [FILE_PART]}, "input[0].content[0].type"),
        ({"input": [IMAGE_ID_PART]}, "input[0].content[0].image_url"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": "   "}, "input"),
        ({"input": []}, "input"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)  # fmt: skip
async def test_bad_requests_are_clear_400s(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "input": "Hi", **extra}
    error = assert_error(await client.post("/v1/responses", json=body), 400)
    assert (error["param"] or "").startswith(param), error
    assert (await client.post("/v1/responses", json={"model": "m", "input": "Hi"})).status_code == 200


async def test_images_need_a_vision_model(client: httpx.AsyncClient) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    body = {
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}],
    }
    assert_error(await client.post("/v1/responses", json=body), 400, code="images_not_supported")


async def test_unknown_model_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json={"model": "gpt-nope", "input": "Hi"})
    assert_error(response, 404, code="model_not_found", param="model")


async def test_ignored_params_are_named_and_strict_refuses_them(client: httpx.AsyncClient) -> None:
    neutral = {"include": [], "user": "u1", "store": True, "top_logprobs": 0, "reasoning": {"effort": "low"}}
    response = await client.post("/v1/responses", json={"model": "m", "input": "Hi", **neutral})
    assert response.status_code == 200 and "x-ignored-params" not in response.headers
    assert response.json()["user"] == "u1" and response.json()["reasoning"]["effort"] == "low"
    body = {"model": "m", "input": "Hi", "seed": 3, "text": {"verbosity": "low"}, "include": ["x"]}
    response = await client.post("/v1/responses", json=body)
    assert response.headers["x-ignored-params"] == "include,seed,text.verbosity"
    assert_error(
        await client.post("/v1/responses", json={**body, "model": "strict"}),
        400,
        code="unsupported_parameter",
    )


async def test_store_false_is_not_retrievable(client: httpx.AsyncClient) -> None:
    body = await create(client, input="Hi", store=False)
    assert body["store"] is False
    assert_error(await client.get(f"/v1/responses/{body['id']}"), 404)
    response = await client.post(
        "/v1/responses", json={"model": "m", "input": "x", "previous_response_id": body["id"]}
    )
    assert_error(response, 400, code="previous_response_not_found")


async def test_retrieve_delete_and_404s(client: httpx.AsyncClient) -> None:
    body = await create(client, input="Hi")
    assert (await client.get(f"/v1/responses/{body['id']}")).json() == body
    deleted = await client.delete(f"/v1/responses/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    for response in (
        await client.get(f"/v1/responses/{body['id']}"),
        await client.delete(f"/v1/responses/{body['id']}"),
        await client.get(f"/v1/responses/{body['id']}/input_items"),
    ):
        assert_error(response, 404, param="response_id")


async def test_input_items_pages(client: httpx.AsyncClient) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    rid = (await create(client, input=items))["id"]

    async def page(**query: Any) -> tuple[list[str], bool]:
        listed = (await client.get(f"/v1/responses/{rid}/input_items", params=query)).json()
        validate_responses("ResponseItemList", listed)
        texts = [item["content"][0]["text"] for item in listed["data"]]
        if texts:
            assert (
                listed["first_id"] == listed["data"][0]["id"]
                and listed["last_id"] == listed["data"][-1]["id"]
            )
        return texts, listed["has_more"]

    assert await page() == (["m4", "m3", "m2", "m1", "m0"], False)  # desc by default, as OpenAI
    assert await page(order="asc", limit=2) == (["m0", "m1"], True)
    all_ids = [
        i["id"] for i in (await client.get(f"/v1/responses/{rid}/input_items?order=asc")).json()["data"]
    ]
    assert await page(order="asc", limit=2, after=all_ids[1]) == (["m2", "m3"], True)
    assert await page(order="asc", limit=2, after=all_ids[3]) == (["m4"], False)
    assert await page(order="asc", limit=2, before=all_ids[3]) == (["m1", "m2"], True)
    assert_error(await client.get(f"/v1/responses/{rid}/input_items?after=msg_nope"), 400, param="after")
    assert_error(await client.get(f"/v1/responses/{rid}/input_items?limit=0"), 400, param="limit")
    assert_error(await client.get(f"/v1/responses/{rid}/input_items?order=up"), 400, param="order")


async def test_an_error_after_the_start_ends_the_stream_with_response_failed(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/responses", json={"model": "broken", "input": "Hi", "stream": True})
    events = parse_response_events(response.text)
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "went away" in failed["error"]["message"]
    assert (await client.get(f"/v1/responses/{failed['id']}")).json()["status"] == "failed"
    assert BACKENDS["broken"].leases[-1].exited


async def test_key_isolation() -> None:
    backend = FakeChatBackend()
    app = make_app([chat_entry("m", backend)], HttpSettings(api_keys=("key-a", "key-b")))
    async with client_for(app) as http:
        a = {"Authorization": "Bearer key-a"}
        b = {"Authorization": "Bearer key-b"}
        created = await http.post("/v1/responses", json={"model": "m", "input": "secret"}, headers=a)
        rid = created.json()["id"]
        assert (await http.get(f"/v1/responses/{rid}", headers=a)).status_code == 200
        assert_error(await http.get(f"/v1/responses/{rid}", headers=b), 404)
        assert_error(await http.get(f"/v1/responses/{rid}/input_items", headers=b), 404)
        assert_error(await http.delete(f"/v1/responses/{rid}", headers=b), 404)
        follow = {"model": "m", "input": "more", "previous_response_id": rid}
        assert_error(
            await http.post("/v1/responses", json=follow, headers=b), 400, code="previous_response_not_found"
        )
        assert (await http.post("/v1/responses", json=follow, headers=a)).status_code == 200
        assert (await http.get(f"/v1/responses/{rid}")).status_code == 401


async def test_metrics_count_response_tokens(client: httpx.AsyncClient) -> None:
    await create(client, input="Hi")
    metrics = (await client.get("/metrics")).text
    line = next(
        x for x in metrics.splitlines() if x.startswith("stackflow_openai_tokens_total") and 'model="m"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) > 0, json.dumps(line)


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def tools_client(script: list[str], info: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    backend = FakeChatBackend(info or QWEN3, script=script)
    async with client_for(make_app([chat_entry("t", backend)])) as http:
        yield http


QWEN3 = ChatModelInfo(
    prefill_len=512, max_token_len=1023, tokenizer="qwen", template="qwen", name="qwen3-1.7B"
)
QWEN25 = ChatModelInfo(
    prefill_len=512, max_token_len=1023, tokenizer="qwen", template="qwen", name="qwen2.5-0.5B"
)


async def test_function_call_output_items_and_stream_events() -> None:
    async for http in tools_client(["Let me check.", QWEN_CALL], QWEN25):
        body = {"model": "t", "input": "Weather in Paris?", "tools": [WEATHER]}
        response = await http.post("/v1/responses", json=body)
        result = response.json()
        validate_responses("Response", result)
        message, call = result["output"]
        assert message["content"][0]["text"] == "Let me check." and call["type"] == "function_call"
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
        assert call["call_id"].startswith("call_") and call["id"].startswith("fc_")
        assert result["tools"][0]["name"] == "get_weather" and result["tools"][0]["strict"] is True
        streamed = await http.post("/v1/responses", json={**body, "stream": True})
        events = parse_response_events(streamed.text)
        kinds = [
            e["type"]
            for e in events
            if e.get("item", {}).get("type") == "function_call" or "function" in e["type"]
        ]
        assert kinds == [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        final = events[-1]["response"]
        assert [item["type"] for item in final["output"]] == ["message", "function_call"]
        assert final["output"][1]["arguments"] == call["arguments"]


async def test_reasoning_becomes_a_reasoning_item_with_summary_text() -> None:
    async for http in tools_client(["<think>The user greets.", "</think>", "Hello!"]):
        result = (await http.post("/v1/responses", json={"model": "t", "input": "Hi"})).json()
        validate_responses("Response", result)
        reasoning, message = result["output"]
        assert (
            reasoning["type"] == "reasoning" and reasoning["summary"][0]["text"].strip() == "The user greets."
        )
        assert message["content"][0]["text"] == "Hello!"
        assert result["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
        streamed = await http.post("/v1/responses", json={"model": "t", "input": "Hi", "stream": True})
        events = parse_response_events(streamed.text)
        summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
        assert summary.strip() == "The user greets."
        assert [i["type"] for i in events[-1]["response"]["output"]] == ["reasoning", "message"]


async def test_text_format_json_schema_and_param_names() -> None:
    async for http in tools_client(['{"city": "Paris"}'], QWEN25):
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        text = {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}}
        result = (
            await http.post("/v1/responses", json={"model": "t", "input": "Where?", "text": text})
        ).json()
        validate_responses("Response", result)
        assert json.loads(result["output"][0]["content"][0]["text"]) == {"city": "Paris"}
        assert result["text"]["format"]["name"] == "place"
        bad = {
            "model": "t",
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "p", "schema": 3}},
        }
        assert_error(await http.post("/v1/responses", json=bad), 400, param="text.format.schema")
        bad = {"model": "t", "input": "x", "text": {"format": {"type": "xml"}}}
        assert_error(await http.post("/v1/responses", json=bad), 400, param="text.format.type")
        forced = {
            "model": "t",
            "input": "x",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "nope"},
        }
        assert_error(await http.post("/v1/responses", json=forced), 400, param="tool_choice")


async def test_a_broken_store_is_a_clear_503_and_store_false_still_works(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    settings = HttpSettings(data_dir=str(tmp_path / "a-file" / "data"))
    async with client_for(make_app([chat_entry("m", FakeChatBackend())], settings)) as http:
        response = await http.post("/v1/responses", json={"model": "m", "input": "Hi"})
        error = assert_error(response, 503, code="store_unavailable")
        assert "a-file" in error["message"] and "store: false" in error["message"]
        response = await http.post("/v1/responses", json={"model": "m", "input": "Hi", "store": False})
        assert response.status_code == 200 and response.json()["output"][0]["content"][0]["text"]
        assert_error(await http.get("/v1/responses/resp_x"), 503, code="store_unavailable")


async def test_image_urls_follow_the_ssrf_rules_and_errors_name_the_input_part() -> None:
    backend = FakeChatBackend(VLM_INFO, script=["a red square"])
    async with client_for(make_app([chat_entry("v", backend)])) as http:
        parts = [{"type": "input_text", "text": "What is it?"}]
        private = {"type": "input_image", "image_url": "http://127.0.0.1:9/cat.png"}
        body = {"model": "v", "input": [{"role": "user", "content": [*parts, private]}]}
        error = assert_error(await http.post("/v1/responses", json=body), 400)
        assert error["param"] == "input[0].content[1].image_url"
        data_url = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
        good = {"type": "input_image", "image_url": data_url, "detail": "low"}
        body = {"model": "v", "input": [{"role": "user", "content": [*parts, good]}]}
        result = (await http.post("/v1/responses", json=body)).json()
        assert result["output"][0]["content"][0]["text"] == "a red square"
        assert len(backend.generations[-1].images) == 1  # converted to JPEG and sent with the prompt
        listed = (await http.get(f"/v1/responses/{result['id']}/input_items")).json()
        validate_responses("ResponseItemList", listed)
        assert listed["data"][0]["content"][1] == good


async def test_a_stored_response_replays_as_its_stream(client: httpx.AsyncClient) -> None:
    streamed = await client.post("/v1/responses", json={"model": "m", "input": "Hi", "stream": True})
    original = parse_response_events(streamed.text)
    rid = original[-1]["response"]["id"]
    replayed = parse_response_events((await client.get(f"/v1/responses/{rid}?stream=true")).text)
    assert [e["type"] for e in replayed] == [e["type"] for e in original]  # one delta each, as here
    assert replayed[-1]["response"] == original[-1]["response"]
    tail = (await client.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": 5})).text
    assert tail.startswith("event: ") and '"sequence_number":6,' in tail.split("\n")[1]
    assert_error(
        await client.get(f"/v1/responses/{rid}?stream=true&starting_after=-5"), 400, param="starting_after"
    )
    assert_error(await client.get("/v1/responses/resp_nope?stream=true"), 404)


async def test_no_valid_call_after_the_re_ask_is_a_500_in_this_apis_terms() -> None:
    async for http in tools_client(["I will not call anything."], QWEN25):
        body = {"model": "t", "input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
        error = assert_error(await http.post("/v1/responses", json=body), 500, code="tool_call_invalid")
        assert error["param"] == "tools"
        streamed = await http.post("/v1/responses", json={**body, "stream": True})
        if streamed.status_code == 200:  # the first event may already be out: then it ends failed
            events = parse_response_events(streamed.text)
            assert events[-1]["type"] == "response.failed"
            assert "tool call" in events[-1]["response"]["error"]["message"]
        else:
            assert_error(streamed, 500, code="tool_call_invalid")
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        text = {"format": {"type": "json_schema", "name": "num", "schema": schema}}
        error = assert_error(
            await http.post("/v1/responses", json={"model": "t", "input": "n?", "text": text}), 500
        )
        assert error["code"] == "structured_output_failed" and error["param"] == "text.format"


async def test_a_configured_default_truncation_applies_to_requests_that_set_none() -> None:
    backend = FakeChatBackend(QWEN_P128, script=["ok"])
    app = make_app([chat_entry("small", backend)], HttpSettings(responses_default_truncation="auto"))
    async with client_for(app) as http:
        turns = [{"role": "user", "content": f"Turn {i}: " + "lorem ipsum dolor " * 6} for i in range(8)]
        result = (await http.post("/v1/responses", json={"model": "small", "input": turns})).json()
        assert result["truncation"] == "auto" and "Turn 0" not in backend.generations[-1].prompt
        refused = {"model": "small", "input": turns, "truncation": "disabled"}  # a request's own still wins
        assert_error(await http.post("/v1/responses", json=refused), 400, code="context_length_exceeded")
