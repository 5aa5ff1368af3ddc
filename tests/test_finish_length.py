"""finish_reason "length" when the device's own cap (max_token_len) ends an answer.

The device ends a generation at max_token_len with the same finish message as at an end of sequence
(main_llm's task_output), and in stream mode it drops the group of up to two tokens it still held
(docs/protocol-notes.md, item 2): the gateway then counts one token less than the room it computed, and
said "stop". Here an endless test engine whose pieces are exactly one Qwen token each runs on models with
tiny windows (kv_cache_len 40, 41, 42: one of them leaves that held group of two).
"""

from __future__ import annotations

import pytest

from e2e_harness import Harness, write_llm_descriptor
from stackflow_openai.emulator import ScriptedEngine

WINDOWS = {f"qwen2.5-0.5B-window-{kv}": kv for kv in (40, 41, 42)}


class EndlessWordsEngine(ScriptedEngine):
    """TEST TOOL: an answer that never ends by itself, " word" (one Qwen token) per piece, so that only
    the unit's max_token_len ends it."""

    async def open_llm(self, model, settings):  # type: ignore[no-untyped-def]
        session = await super().open_llm(model, settings)

        async def endless(prompt, *, images, max_new_tokens):  # type: ignore[no-untyped-def]
            for _ in range(max_new_tokens):
                yield " word"

        session.generate = endless  # type: ignore[method-assign]
        return session


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    catalogue = tmp_path_factory.mktemp("catalogue")
    for mode, kv in WINDOWS.items():
        write_llm_descriptor(catalogue, mode, kv, prefill_len=64)
    h = Harness(engine=EndlessWordsEngine(), emulator_kwargs={"catalogue_dirs": [catalogue]}).start()
    with h.serving():
        yield h


@pytest.mark.parametrize("model", WINDOWS)
def test_an_answer_ended_by_the_devices_cap_is_length(harness, model):
    reply = harness.sdk().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Go on"}]
    )
    usage = reply.usage
    assert reply.choices[0].finish_reason == "length"
    # The device generated its room + 1 tokens; the stream brought all but the held group.
    assert WINDOWS[model] - 2 <= usage.prompt_tokens + usage.completion_tokens <= WINDOWS[model]


@pytest.mark.parametrize("model", WINDOWS)
def test_a_streamed_answer_ended_by_the_devices_cap_is_length(harness, model):
    stream = harness.sdk().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Go on"}], stream=True
    )
    reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert reasons == ["length"]


@pytest.mark.parametrize("model", WINDOWS)
def test_a_completion_ended_by_the_devices_cap_is_length(harness, model):
    reply = harness.sdk().completions.create(model=model, prompt="Go on", max_tokens=100)
    assert reply.choices[0].finish_reason == "length"


def test_max_tokens_below_the_cap_is_length_and_a_short_answer_is_stop():
    h = Harness().start()  # the plain scripted engine: its answers end by themselves
    try:
        reply = h.sdk().chat.completions.create(
            model="qwen2.5-0.5B-p256-ax630c", messages=[{"role": "user", "content": "hi"}]
        )
        assert (reply.choices[0].finish_reason, reply.choices[0].message.content) == (
            "stop",
            "You said 1 word: hi.",
        )
        reply = h.sdk().chat.completions.create(
            model="qwen2.5-0.5B-p256-ax630c", messages=[{"role": "user", "content": "hi there"}], max_tokens=2
        )
        assert reply.choices[0].finish_reason == "length"
    finally:
        h.stop()
