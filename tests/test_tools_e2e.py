"""Tool calling and structured outputs end to end: the official openai SDK → gateway → emulator.

The emulator's scripted engine reads the tools the gateway wrote into the prompt and answers in the
model family's call format (emulator/engines/scripted_tools.py); its `malformed_answer` fault makes the
first answer unusable, to exercise the re-ask. After every test nothing is leaked on the emulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from e2e_harness import Harness
from fakes import validate
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator import Timing
from test_e2e_chat import RecordingEngine

LLM = "qwen2.5-0.5B-p256-ax630c"
BIG = "qwen2.5-0.5B-p1024-test"  # tests/data/catalogue: a window that holds a Home Assistant tool set
SMALL_WINDOW = "qwen2.5-1.5B-ax630c"  # prefill 128
CATALOGUE = Path(__file__).parent / "data" / "catalogue"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def harness():
    models = {
        f"fmt-{f}": ModelSettings(device_model=BIG, tool_format=f) for f in ("llama3", "smollm2", "generic")
    }
    models["strict-once"] = ModelSettings(device_model=LLM, output_retries=0)
    settings = Settings(models=models)
    h = Harness(settings, engine=RecordingEngine(Timing()), emulator_kwargs={"catalogue_dirs": [CATALOGUE]})
    h.start()
    with h.serving():
        yield h


def raw(h: Harness, **body: object) -> dict:
    response = h.sdk().chat.completions.with_raw_response.create(**body)  # type: ignore[call-overload]
    return json.loads(response.text)


def test_a_tool_call_non_stream_in_openais_shape(harness):
    body = raw(harness, model=LLM, messages=ASK, tools=[WEATHER, TIME])
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    system, user = harness.engine.prompts[-1]
    assert "# Tools" in system and '<tools>\n{"type": "function"' in system and user == ASK[0]["content"]


def test_a_tool_call_streamed_never_shows_call_syntax(harness):
    chunks = list(
        harness.sdk().chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER], stream=True)
    )
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        assert "<tool_call>" not in json.dumps(chunk.model_dump())
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, second = deltas[0].tool_calls[0], deltas[1].tool_calls[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert second.id is None and json.loads(second.function.arguments)["city"] == "Paris"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_sdk_stream_helper_accumulates_the_call(harness):
    with harness.sdk().chat.completions.stream(model=LLM, messages=ASK, tools=[WEATHER]) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert done[0].name == "get_weather" and json.loads(done[0].arguments)["city"] == "Paris"
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_tool_results_come_back_in_the_familys_format_and_get_an_answer(harness):
    first = harness.sdk().chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"},
    ]
    second = harness.sdk().chat.completions.create(model=LLM, messages=history, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "The tool answered: 18 C, sunny"
    user = harness.engine.prompts[-1][1]
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
        in user
    )
    assert user.endswith("Tool: <tool_response>\n18 C, sunny\n</tool_response>")


@pytest.mark.parametrize(
    ("fmt", "marker"),
    [("llama3", "Given the following functions"), ("smollm2", "<tools>["), ("generic", "You can call these")],
)
def test_every_family_format_round_trips(harness, fmt, marker):
    reply = harness.sdk().chat.completions.create(model=f"fmt-{fmt}", messages=ASK, tools=[WEATHER, TIME])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    system, user = harness.engine.prompts[-1]
    assert marker in (user if fmt == "llama3" else system)
    assert ("get_weather" in system) == (fmt != "llama3")  # Llama 3.2 takes the tools in the user turn


def test_tool_choice_none_named_and_required(harness):
    c = harness.sdk()
    plain = c.chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert (
        plain.choices[0].message.content.startswith("You said")
        and "# Tools" not in harness.engine.prompts[-1][0]
    )
    named = c.chat.completions.create(
        model=LLM,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    system = harness.engine.prompts[-1][0]
    assert "get_weather" not in system and "You must call the function get_time." in system
    required = c.chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER], tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"


def test_legacy_functions_answer_with_function_call(harness):
    body = raw(harness, model=LLM, messages=ASK, functions=[WEATHER["function"]])
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "get_weather"


def test_a_malformed_call_is_asked_again_once_then_refused(harness):
    faults = harness.emulator.state.faults
    faults.malformed_answer = 1
    reply = harness.sdk().chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER])
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert "not a usable function call" in harness.engine.prompts[-1][1]  # the re-ask named the problem
    assert reply.usage.completion_tokens > 20  # both answers are counted

    faults.malformed_answer = 2
    with pytest.raises(openai.InternalServerError) as caught:
        harness.sdk().chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER])
    validate("ErrorResponse", caught.value.response.json())
    assert caught.value.code == "tool_call_invalid" and "not a JSON object" in caught.value.message

    faults.malformed_answer = 1  # output_retries: 0 → no re-ask
    with pytest.raises(openai.InternalServerError):
        harness.sdk().chat.completions.create(model="strict-once", messages=ASK, tools=[WEATHER])
    assert faults.malformed_answer == 0


def test_a_failed_call_in_a_stream_ends_with_an_error_event(harness):
    harness.emulator.state.faults.malformed_answer = 2
    with pytest.raises(openai.APIError) as caught:
        list(harness.sdk().chat.completions.create(model=LLM, messages=ASK, tools=[WEATHER], stream=True))
    assert "valid tool call" in caught.value.message


def test_tools_that_do_not_fit_the_window_name_their_token_count(harness):
    with pytest.raises(openai.BadRequestError) as caught:
        harness.sdk().chat.completions.create(model=SMALL_WINDOW, messages=ASK, tools=[WEATHER])
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "tools"
    assert "The definitions of the 1 tools take" in caught.value.message


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]


def test_parse_with_a_pydantic_model(harness):
    completion = harness.sdk().chat.completions.parse(
        model=LLM,
        messages=[{"role": "user", "content": "Invent a person called Ann"}],
        response_format=Person,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and person.name == "Ann" and person.age >= 1 and person.hobbies
    assert "It must be valid against this JSON schema:" in harness.engine.prompts[-1][1]


def test_json_object_and_structured_failure(harness):
    c = harness.sdk()
    reply = c.chat.completions.create(model=LLM, messages=ASK, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    harness.emulator.state.faults.malformed_answer = 1
    again = c.chat.completions.create(model=LLM, messages=ASK, response_format={"type": "json_object"})
    assert isinstance(json.loads(again.choices[0].message.content), dict)
    harness.emulator.state.faults.malformed_answer = 2
    with pytest.raises(openai.InternalServerError) as caught:
        c.chat.completions.create(model=LLM, messages=ASK, response_format={"type": "json_object"})
    assert caught.value.code == "structured_output_failed" and caught.value.param == "response_format"


def test_a_stream_with_a_schema_carries_only_validated_json(harness):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    chunks = list(
        harness.sdk().chat.completions.create(model=LLM, messages=ASK, response_format=fmt, stream=True)
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ['{"city": "Paris"}']


HA_SYSTEM = (
    "You are a voice assistant for Home Assistant. Answer questions about the world truthfully. "
    "Answer in plain text. Keep it simple and to the point.\nCurrent time is 07:45.\n"
    "Available devices: light.kitchen (Kitchen light, off), light.living_room (Living room light, on), "
    "climate.hall (Hall thermostat, 20 C), cover.garage (Garage door, closed), "
    "lock.front (Front door, locked)"
)


def _ha_tool(tool: str, description: str, **props: dict) -> dict:
    schema = {"type": "object", "properties": props, "required": list(props)}
    return {"type": "function", "function": {"name": tool, "description": description, "parameters": schema}}


HA_TOOLS = [
    _ha_tool("HassTurnOn", "Turns on a device or entity", name={"type": "string"}),
    _ha_tool("HassTurnOff", "Turns off a device or entity", name={"type": "string"}),
    _ha_tool(
        "HassLightSet",
        "Sets the brightness of a light",
        name={"type": "string"},
        brightness={"type": "integer", "minimum": 0, "maximum": 100},
    ),
    _ha_tool("HassClimateSetTemperature", "Sets a thermostat", temperature={"type": "number"}),
    _ha_tool("HassClimateGetTemperature", "Gets the current temperature", name={"type": "string"}),
    _ha_tool("HassOpenCover", "Opens a cover such as a garage door", name={"type": "string"}),
    _ha_tool("HassCloseCover", "Closes a cover", name={"type": "string"}),
    _ha_tool("HassLockLock", "Locks a lock", name={"type": "string"}),
    _ha_tool("HassLockUnlock", "Unlocks a lock", name={"type": "string"}),
    _ha_tool("HassMediaPause", "Pauses a media player", name={"type": "string"}),
    _ha_tool("HassTimerStart", "Starts a timer", minutes={"type": "integer", "minimum": 1}),
    _ha_tool("GetLiveContext", "Current state of the devices"),
]


def test_a_home_assistant_like_conversation(harness):
    c = harness.sdk()
    messages: list[dict] = [
        {"role": "system", "content": HA_SYSTEM},
        {"role": "user", "content": "Turn on the Kitchen light"},
    ]
    first = c.chat.completions.create(model=BIG, messages=messages, tools=HA_TOOLS)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "HassTurnOn" and json.loads(call.function.arguments) == {"name": "Kitchen"}
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": '{"success": true, "targets": ["light.kitchen"]}',
        },
    ]
    second = c.chat.completions.create(model=BIG, messages=messages, tools=HA_TOOLS)
    assert second.choices[0].message.content.startswith("The tool answered:")
    messages += [
        second.choices[0].message.model_dump(exclude_none=True),
        {"role": "user", "content": "Please unlock the Front door"},
    ]
    third = c.chat.completions.create(model=BIG, messages=messages, tools=HA_TOOLS, stream=True)
    calls = [
        ch.choices[0].delta.tool_calls[0] for ch in third if ch.choices and ch.choices[0].delta.tool_calls
    ]
    assert calls[0].function.name == "HassLockUnlock"
    system, user = harness.engine.prompts[-1]
    assert system.startswith(HA_SYSTEM) and system.count('{"type": "function"') == 12
    assert "Tool: <tool_response>" in user and user.endswith(
        "Now answer the user's new message: Please unlock the Front door"
    )
    assert first.usage.prompt_tokens > 700  # the tool set is why the window must be large
