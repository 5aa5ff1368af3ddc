"""Tools and reasoning on the device's own dev-branch descriptors (tests/fixtures/stackflow_descriptors/dev),
through the emulator: Llama 3.2 (tools in the user turn, its JSON call format, a script that never uses
the setup's system prompt), DeepSeek-R1 (its <think> text returned as reasoning_content) and the Home
Assistant ctx model (a tool set in its precomputed system prompt, a multi-turn tool conversation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from e2e_harness import Harness
from stackflow_openai.emulator import ScriptedEngine, Timing
from stackflow_openai.emulator.engines.scripted import ScriptedLlmSession

DEV = Path(__file__).parent / "fixtures" / "stackflow_descriptors" / "dev"
LLAMA = "llama3.2-1B-p256-ax630c"
R1 = "deepseek-r1-1.5B-p256-ax630c"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class ThinkingEngine(ScriptedEngine):
    """The scripted engine, with a DeepSeek-R1-like thought before every answer of an R1 model (the
    distill template opens <think> itself, so the output starts inside it) and a record of prompts."""

    def __init__(self) -> None:
        super().__init__(Timing())
        self.prompts: list[tuple[str, str]] = []

    async def open_llm(self, model, settings):  # type: ignore[no-untyped-def]
        session: ScriptedLlmSession = await super().open_llm(model, settings)
        generate, prompts = session.generate, self.prompts

        async def thinking(prompt, **kwargs):  # type: ignore[no-untyped-def]
            prompts.append((settings.system_prompt, prompt))
            if model.mode.startswith("deepseek-r1"):
                for piece in ["Okay", ", the user", " wants", " this.", "\n</think>", "\n\n"]:
                    yield piece
            async for piece in generate(prompt, **kwargs):  # (a ctx unit passes its history too)
                yield piece

        session.generate = thinking  # type: ignore[method-assign]
        return session


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    catalogue = tmp_path_factory.mktemp("catalogue")
    for mode in (LLAMA, R1):
        shutil.copy(DEV / f"mode_{mode}.json", catalogue)
    h = Harness(engine=ThinkingEngine(), emulator_kwargs={"catalogue_dirs": [catalogue]}).start()
    with h.serving():
        yield h


def test_llama_gets_its_own_format_in_the_user_turn(harness):
    ask = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    reply = harness.sdk().chat.completions.create(model=LLAMA, messages=ask, tools=[WEATHER])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    system, user = harness.engine.prompts[-1]
    assert "get_weather" not in system  # Llama 3.2's script never templates the setup's prompt
    assert user.startswith("Be brief.\n\nGiven the following functions, please respond with a JSON")
    assert user.endswith("Weather in Paris?")


def test_deepseek_r1_thinking_is_reasoning_content_and_the_call_still_parses(harness):
    c = harness.sdk()
    plain = c.chat.completions.create(model=R1, messages=[{"role": "user", "content": "Hello there"}])
    message = plain.choices[0].message
    assert message.content == "You said 2 words: Hello there."
    assert message.model_extra["reasoning_content"] == "Okay, the user wants this.\n"
    chunks = list(
        c.chat.completions.create(
            model=R1,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            stream=True,
        )
    )
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas).startswith("Okay")
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0].function.name == "get_weather" and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any("</think>" in (d.content or "") for d in deltas)


def test_home_assistant_tools_on_the_ha_ctx_model(harness):
    from test_tools_e2e import HA_SYSTEM, HA_TOOLS

    model, tools = "qwen2.5-HA-0.5B-ctx-ax630c", HA_TOOLS[:10]  # 10 intents: ~700 of its 1024 positions
    c = harness.sdk()
    messages: list[dict] = [
        {"role": "system", "content": HA_SYSTEM},
        {"role": "user", "content": "Turn on the Kitchen light"},
    ]
    first = c.chat.completions.create(model=model, messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "HassTurnOn" and json.loads(call.function.arguments) == {"name": "Kitchen"}
    system, _user = harness.engine.prompts[-1]
    assert system.startswith(HA_SYSTEM) and system.count('{"type": "function"') == 10  # in the setup
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"success": true}'},
    ]
    second = c.chat.completions.create(model=model, messages=messages, tools=tools)
    assert second.choices[0].message.content == 'The tool answered: {"success": true}'
    messages += [
        second.choices[0].message.model_dump(exclude_none=True),
        {"role": "user", "content": "Please unlock the Front door"},
    ]
    third = c.chat.completions.create(model=model, messages=messages, tools=tools)
    assert third.choices[0].message.tool_calls[0].function.name == "HassLockUnlock"
