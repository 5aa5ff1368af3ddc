"""End to end: the official openai SDK's `client.responses` → gateway (uvicorn) → pool → emulator, with
responses stored in a temporary data dir. After every test nothing is leaked on the emulator."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from pydantic import BaseModel, SecretStr

from e2e_harness import Harness
from gateway_runner import start_gateway
from responses_schema import validate_responses
from stackflow_openai.config import Settings
from stackflow_openai.emulator import Timing

LLM = "qwen2.5-0.5B-p256-ax630c"
STARTS = ("created", "in_progress", "output_item.added", "content_part.added")
VLM = "internvl2.5-1B-364-ax630c"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(Settings(data_dir=str(tmp_path))).start()
    with h.serving():
        yield h


def sdk(h: Harness, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=h.base_url, api_key=key, max_retries=0, timeout=30, _strict_response_validation=True
    )


def _jpeg() -> str:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 20, 20)).save(out, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def test_create_with_string_items_image_and_instructions(harness: Harness) -> None:
    client = sdk(harness)
    reply = client.responses.create(model=LLM, input="alpha beta", instructions="Be brief.")
    validate_responses("Response", reply.model_dump(mode="json", exclude_unset=True))
    assert reply.output_text == "You said 2 words: alpha beta."
    assert reply.status == "completed" and reply.instructions == "Be brief."
    assert reply.usage is not None and reply.usage.input_tokens > 5 and reply.usage.output_tokens > 0

    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "one two three"}]},
    ]
    assert client.responses.create(model=LLM, input=items).output_text == "You said 3 words: one two three."

    picture = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "what"},
                {"type": "input_image", "image_url": _jpeg()},
            ],
        }
    ]
    seen = client.responses.create(model=VLM, input=picture)
    assert seen.output_text.startswith("I see 1 image.")


def test_stream_event_order_and_deltas(harness: Harness) -> None:
    client = sdk(harness)
    events = list(client.responses.create(model=LLM, input="w " * 12, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [f"response.{k}" for k in STARTS]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") >= 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text == final.output_text == "You said 12 words: " + " ".join(["w"] * 12) + "."
    with client.responses.stream(model=LLM, input="x y") as stream:
        assert stream.get_final_response().output_text == "You said 2 words: x y."


def test_retrieve_delete_input_items_and_unknown_model(harness: Harness) -> None:
    client = sdk(harness)
    reply = client.responses.create(
        model=LLM, input=[{"role": "user", "content": "a b"}], metadata={"t": "1"}
    )
    again = client.responses.retrieve(reply.id)
    assert again.output_text == reply.output_text and again.metadata == {"t": "1"}
    listed = client.responses.input_items.list(reply.id)
    assert [item.type for item in listed.data] == ["message"]
    client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="no-such-model", input="hi")
    assert err.value.code == "model_not_found"


def test_previous_response_id_survives_a_gateway_restart(harness: Harness) -> None:
    first = sdk(harness).responses.create(model=LLM, input="red green", store=True)
    harness.stop_gateway()  # the same data dir, a new gateway process state
    harness.gateway = harness.call(lambda: start_gateway(harness.settings))
    harness.base_url = f"http://127.0.0.1:{harness.gateway.port}/v1"
    client = sdk(harness)
    assert client.responses.retrieve(first.id).output_text == "You said 2 words: red green."
    second = client.responses.create(model=LLM, input="blue", previous_response_id=first.id)
    # The scripted engine echoes the words of the single user turn it got: the history is in it.
    assert "red green" in second.output_text and "blue" in second.output_text
    assert second.previous_response_id == first.id


def test_key_isolation_with_the_sdk(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    settings.auth.api_keys = [SecretStr("key-a"), SecretStr("key-b")]
    with Harness(settings).start().serving() as h:
        mine = sdk(h, "key-a").responses.create(model=LLM, input="private words")
        other = sdk(h, "key-b")
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.BadRequestError):
            other.responses.create(model=LLM, input="x", previous_response_id=mine.id)
        assert sdk(h, "key-a").responses.retrieve(mine.id).id == mine.id


def test_client_disconnect_mid_stream_keeps_the_unit_and_stores_it_cancelled(tmp_path: Path) -> None:
    with (
        Harness(Settings(data_dir=str(tmp_path)), timing=Timing(tokens_per_second=50)).start().serving() as h
    ):
        body = {"model": LLM, "stream": True, "input": "w " * 40}
        with httpx.stream("POST", f"{h.base_url}/responses", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first == "event: response.created"
            created = next(lines)
        rid = created.split('"id":"', 1)[1].split('"', 1)[0]
        units = h.pool_work_ids()
        assert len(units) == 1
        client = sdk(h)
        deadline = time.monotonic() + 10
        while True:  # saved by the stream's clean-up, which finishes just after the client left
            stored = client.responses.retrieve(rid)  # in_progress until then (services/responses_live.py)
            if stored.status != "in_progress":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stored.status == "cancelled"
        assert client.responses.create(model=LLM, input="x y").output_text == "You said 2 words: x y."
        assert h.pool_work_ids() == units  # the paused unit served the next request


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_function_tool_round_trip(harness: Harness) -> None:
    client = sdk(harness)
    first = client.responses.create(model=LLM, input="Is it sunny in Barcelona?", tools=[WEATHER])  # type: ignore[list-item]
    validate_responses("Response", first.model_dump(mode="json", exclude_unset=True))
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Barcelona"}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "22 degrees and sunny"}
    second = client.responses.create(
        model=LLM,
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed" and "22 degrees and sunny" in second.output_text
    assert not [item for item in second.output if item.type == "function_call"]
    items = client.responses.input_items.list(second.id).data
    assert [item.type for item in items] == ["function_call_output"]


class Capital(BaseModel):
    city: str
    country: str


def test_responses_parse_with_a_json_schema(harness: Harness) -> None:
    parsed = sdk(harness).responses.parse(model=LLM, input="Name the capital of France.", text_format=Capital)
    assert isinstance(parsed.output_parsed, Capital) and parsed.output_parsed.city
    assert json.loads(parsed.output_text).keys() == {"city", "country"}


def test_background_response_polled_and_another_cancelled(tmp_path: Path) -> None:
    with (
        Harness(Settings(data_dir=str(tmp_path)), timing=Timing(tokens_per_second=40)).start().serving() as h
    ):
        client = sdk(h)
        queued = client.responses.create(model=LLM, input="a b c", background=True)
        assert queued.status == "queued" and queued.background
        deadline = time.monotonic() + 20
        while (polled := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert polled.status == "completed" and polled.output_text == "You said 3 words: a b c."
        long = client.responses.create(model=LLM, input="w " * 60, background=True)
        h.wait_generating()
        cancelled = client.responses.cancel(long.id)
        assert cancelled.status == "cancelled"
        assert client.responses.create(model=LLM, input="x y").output_text == "You said 2 words: x y."


def test_streamed_function_call_through_the_sdk_stream_helper(harness: Harness) -> None:
    client = sdk(harness)
    kinds = []
    with client.responses.stream(model=LLM, input="Is it sunny in Barcelona?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response()
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Barcelona"}
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
