"""Real multi-turn on a "ctx" model, end to end: gateway + emulator, driven by the official SDK.

The scripted engine repeats what a ctx unit remembers ("Before that you said: ..."), so an answer that
carries another conversation's words is a leak the tests see (backends/conversations.py).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import openai
import pytest

from e2e_harness import Harness
from emulator_helpers import jpeg_bytes
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator import ScriptedEngine, Timing
from stackflow_openai.emulator.units.llm import LlmInstance
from stackflow_openai.services.prompt import HISTORY_HEADER

CTX = "qwen2.5-HA-0.5B-ctx-ax630c"


class RecordingEngine(ScriptedEngine):
    """The scripted engine, plus a record of each generation's text and the history its unit held."""

    def __init__(self) -> None:
        super().__init__(timing=Timing())
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    async def open_llm(self, model, settings):  # type: ignore[no-untyped-def]
        session = await super().open_llm(model, settings)
        calls, generate = self.calls, session.generate

        def recording_generate(prompt, *, images, max_new_tokens, **ctx):  # type: ignore[no-untyped-def]
            calls.append((prompt, list(ctx.get("history", ()))))
            return generate(prompt, images=images, max_new_tokens=max_new_tokens, **ctx)

        session.generate = recording_generate  # type: ignore[method-assign]
        return session


def start(pool_size: int) -> tuple[Harness, RecordingEngine]:
    engine = RecordingEngine()
    settings = Settings(models={"chat": ModelSettings(device_model=CTX, pool_size=pool_size)})
    # Two instances of this model (1.8 GB of CMM each) do not fit a Module LLM's 3 GB: a bigger device.
    memory = {"cmm_total_kib": 8 * 1024 * 1024}
    return Harness(settings=settings, engine=engine, emulator_kwargs=memory).start(), engine


@pytest.fixture
def one() -> Any:
    h, engine = start(pool_size=1)
    with h.serving():
        yield h, engine


@pytest.fixture
def two() -> Any:
    h, engine = start(pool_size=2)
    with h.serving():
        yield h, engine


class Chat:
    """One client-side conversation: sends its whole history each time, as OpenAI clients do."""

    def __init__(self, client: openai.OpenAI, **extra: Any) -> None:
        self.client = client
        self.messages: list[dict[str, str]] = []
        self.extra = extra

    def say(self, text: str) -> str:
        self.messages.append({"role": "user", "content": text})
        reply = self.client.chat.completions.create(model="chat", messages=self.messages, **self.extra)  # type: ignore[arg-type]
        answer = reply.choices[0].message.content or ""
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def silent_resets(h: Harness) -> int:
    units = [u for u in h.emulator.state.registry.values() if isinstance(u, LlmInstance)]
    return sum(u.context.silent_resets for u in units if u.context is not None)


def test_a_continued_conversation_sends_only_the_new_message(one: Any) -> None:
    h, engine = one
    ann = Chat(h.sdk())
    first = ann.say("my name is Ann")
    second = ann.say("what is my name")
    # The unit got the bare new message and answered from its KV cache.
    assert engine.calls[-1] == ("what is my name", [("user", "my name is Ann"), ("assistant", first)])
    assert "my name is Ann" in second
    ann.say("and where do I live")
    assert engine.calls[-1][0] == "and where do I live"
    assert silent_resets(h) == 0


def test_interleaved_conversations_on_one_instance_never_see_each_other(one: Any) -> None:
    h, engine = one
    ann, bob = Chat(h.sdk()), Chat(h.sdk())
    answers_ann, answers_bob = [], []
    for a, b in [
        ("my name is Ann", "my name is Bob"),
        ("I live in Oslo", "I live in Lima"),
        ("who am I", "who am I"),
    ]:
        answers_ann.append(ann.say(a))
        answers_bob.append(bob.say(b))
    assert not any("Bob" in x or "Lima" in x for x in answers_ann)
    assert not any("Ann" in x or "Oslo" in x for x in answers_bob)
    # Each switch reset the unit and replayed that conversation: it still knows its own history.
    assert "Ann" in answers_ann[-1] and "Oslo" in answers_ann[-1]
    assert "Bob" in answers_bob[-1] and "Lima" in answers_bob[-1]
    for prompt, history in engine.calls[2:]:
        assert prompt.startswith(HISTORY_HEADER) and history == []  # reset, then replayed


def test_interleaved_conversations_on_two_instances_keep_their_own(two: Any) -> None:
    h, engine = two
    ann, bob = Chat(h.sdk()), Chat(h.sdk())
    barrier = threading.Barrier(2)
    results: dict[str, list[str]] = {"ann": [], "bob": []}

    def talk(chat: Chat, name: str, lines: list[str]) -> None:
        for line in lines:
            barrier.wait(timeout=30)  # both in flight together: the pool sets up the second instance
            results[name].append(chat.say(line))

    threads = [
        threading.Thread(target=talk, args=(ann, "ann", ["my name is Ann", "I live in Oslo", "who am I"])),
        threading.Thread(target=talk, args=(bob, "bob", ["my name is Bob", "I live in Lima", "who am I"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results["ann"]) == len(results["bob"]) == 3
    assert not any("Bob" in x or "Lima" in x for x in results["ann"])
    assert not any("Ann" in x or "Oslo" in x for x in results["bob"])
    assert "Oslo" in results["ann"][-1] and "Lima" in results["bob"][-1]
    # With an instance each, the later turns were continued: only the new message was sent.
    assert sum(1 for prompt, _ in engine.calls if prompt == "who am I") >= 1
    assert len(h.live_instances()) == 2


def test_a_diverged_conversation_is_reset_and_replayed(one: Any) -> None:
    h, engine = one
    ann = Chat(h.sdk())
    ann.say("my name is Ann")
    ann.messages[-1]["content"] = (
        "An edited answer"  # the client changed history: the cache no longer matches
    )
    ann.say("what is my name")
    prompt, history = engine.calls[-1]
    assert history == [] and prompt.startswith(HISTORY_HEADER) and "An edited answer" in prompt


def test_an_answer_cut_by_max_tokens_is_not_continued(one: Any) -> None:
    h, engine = one
    ann = Chat(h.sdk())
    ann.extra = {"max_tokens": 2}
    ann.say("my name is Ann and I like long answers")
    ann.extra = {}
    ann.say("what is my name")
    # The cache held more than the client got back: reset and replay, never continue from it.
    prompt, history = engine.calls[-1]
    assert history == [] and prompt.startswith(HISTORY_HEADER)


def test_a_conversation_that_outgrows_the_cache_is_replayed_not_silently_lost(one: Any) -> None:
    h, engine = one
    chat = Chat(h.sdk(), max_tokens=60)
    long_line = " ".join(["the river and the stone bridge near the market"] * 12)  # ~110 tokens
    chat.say("my name is Ann")
    for _ in range(10):
        chat.say(long_line)
    # The gateway reset and replayed before the cache filled: the device never dropped history unasked.
    assert silent_resets(h) == 0
    assert any(history == [] and prompt.startswith(HISTORY_HEADER) for prompt, history in engine.calls[1:])


def test_a_user_message_reset_is_answered_not_taken_as_the_command(one: Any) -> None:
    h, _ = one
    ann = Chat(h.sdk())
    ann.say("my name is Ann")
    answer = ann.say("reset")
    assert answer.startswith("You said 1 word: reset") and "Ann" in answer


def test_n_choices_never_see_each_other(one: Any) -> None:
    h, engine = one
    client = h.sdk()
    messages: list[dict[str, str]] = [{"role": "user", "content": "my name is Ann"}]
    first = client.chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "what is my name"},
    ]
    reply = client.chat.completions.create(model="chat", messages=messages, n=2)  # type: ignore[arg-type]
    one_text, two_text = (choice.message.content or "" for choice in reply.choices)
    # The first choice continued from the cache; the second found the first's answer there and was replayed.
    assert engine.calls[-2] == (
        "what is my name",
        [("user", "my name is Ann"), ("assistant", messages[1]["content"])],
    )
    prompt, history = engine.calls[-1]
    assert history == [] and prompt.startswith(HISTORY_HEADER)
    assert "Ann" in one_text and "Ann" in two_text and one_text not in two_text


def test_a_ctx_vlm_answers_an_image_then_continues_the_conversation() -> None:
    # internvl3's descriptor names a _p128_ prefill chunk; its window is the KV context, so a 448 px image
    # (256 tokens) fits. The image turn is replayed after a reset; the follow-up is continued.
    engine = RecordingEngine()
    settings = Settings(models={"vision": ModelSettings(device_model="internvl3-1B-448-ax630c", pool_size=1)})
    with Harness(settings=settings, engine=engine).start().serving() as h:
        client = h.sdk()
        image = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my cat"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ]
        first = client.chat.completions.create(model="vision", messages=messages)  # type: ignore[arg-type]
        answer = first.choices[0].message.content or ""
        assert answer.startswith("I see 1 image.")
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "what colour is it"},
        ]
        second = client.chat.completions.create(model="vision", messages=messages)  # type: ignore[arg-type]
        assert engine.calls[-1] == ("what colour is it", [("user", "my cat"), ("assistant", answer)])
        assert "my cat" in (second.choices[0].message.content or "")


def test_two_model_names_for_one_device_model_share_what_the_unit_holds(one: Any) -> None:
    # "chat" (configured) and the device's own name lease the same unit: each must see what the other left.
    h, _ = one
    ann = Chat(h.sdk())
    ann.say("my name is Ann")
    messages = [{"role": "user", "content": "my name is Bob"}]
    reply = h.sdk().chat.completions.create(model=CTX, messages=messages)  # type: ignore[arg-type]
    assert "Ann" not in (reply.choices[0].message.content or "")
    assert "Bob" not in ann.say("who am I")
    assert len(h.live_instances()) == 1  # one unit served both names


def test_a_responses_conversation_continues_on_the_ctx_unit(one: Any) -> None:
    """/v1/responses with previous_response_id: the stored history is the unit's history, so only the new
    input is sent (the Responses API shares the plan builder, services/plan.py)."""
    h, engine = one
    client = h.sdk()
    first = client.responses.create(model="chat", input="my name is Ann", truncation="auto")
    second = client.responses.create(
        model="chat", input="what is my name", previous_response_id=first.id, truncation="auto"
    )
    assert engine.calls[-1] == (
        "what is my name",
        [("user", "my name is Ann"), ("assistant", first.output_text)],
    )
    assert "my name is Ann" in second.output_text
    assert silent_resets(h) == 0
