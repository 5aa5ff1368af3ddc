"""The ctx pieces on their own: capacities from the descriptors, the ledger's send decisions, the finish
reason of an answer the device cut at its decode mask."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from stackflow_openai.backends.base import UnitSettings
from stackflow_openai.backends.conversations import (
    ANSWER_RESERVE,
    CTX_TURN_MARGIN,
    ConversationLedger,
    ConversationTurn,
    chain_key,
    conversation_key,
)
from stackflow_openai.backends.stackflow_chat import chat_info_for
from stackflow_openai.emulator.catalogue import load_catalogue
from stackflow_openai.services.events import ChoiceFinished, Job
from stackflow_openai.services.generation import generate_choices
from stackflow_openai.tokens import EstimateCounter

MODELS = {d.mode: d for board in ("ax630c", "axcl") for d in load_catalogue(board=board)}


class FakeUnit:
    """Stands for a device unit (the ledger holds units weakly, by identity)."""


@pytest.mark.parametrize(
    ("mode", "context", "mask", "window"),
    [
        ("qwen2.5-HA-0.5B-ctx-ax630c", 1024, 1280, 896),  # last_kv_cache_len 1024, kv_cache_len 1280
        ("qwen3-1.7B-Int8-ctx-axcl", 1023, 1023, 768),  # groups up to 2048, but a 1023-position mask
        ("internvl3-1B-448-ax630c", 1023, 1023, 768),  # no flags: precompute_len 1024, default mask
        ("qwen2.5-0.5B-p256-ax630c", 0, 1023, 256),  # single-turn: the _p256_ window as before
    ],
)
def test_capacity_is_the_kv_context_not_the_prefill_chunk(
    mode: str, context: int, mask: int, window: int
) -> None:
    model = MODELS[mode]
    info = chat_info_for(model)
    assert (model.context_len, info.context_len, info.max_token_len, info.prefill_len) == (
        context,
        context,
        mask,
        window,
    )


def turn(
    history: str, text: str = "hi", replay: int = 40, images: tuple[str, ...] = (), budget: int = 1000
) -> ConversationTurn:
    return ConversationTurn(
        empty_key=conversation_key("sys", []),
        history_key=history,
        text=text,
        system_tokens=10,
        text_tokens=12,
        replay_tokens=replay,
        count=len,
        budget=budget,
        images=images,
    )


def test_fresh_unit_continues_without_a_reset_and_then_holds_the_reply() -> None:
    ledger, unit = ConversationLedger(capacity=1024, chunk=128, decode_limit=1280), FakeUnit()
    first = turn(conversation_key("sys", []), "my name is Ann")
    plan = ledger.plan(unit, first, "my name is Ann")
    assert (plan.reset_first, plan.continued, plan.text) == (False, True, "my name is Ann")
    ledger.record(unit, first, plan, "Hello Ann")
    held = conversation_key("sys", [("user", "my name is Ann", []), ("assistant", "Hello Ann", [])])
    assert ledger.holds(unit, held)
    second = ledger.plan(unit, turn(held, "who am I"), "replay")
    assert (second.reset_first, second.continued, second.text) == (False, True, "who am I")
    assert second.start == 10 + 12 + len("Hello Ann") + CTX_TURN_MARGIN


def test_another_conversation_or_unknown_content_resets_and_replays() -> None:
    ledger, unit = ConversationLedger(capacity=1024, chunk=128, decode_limit=1280), FakeUnit()
    a = turn(conversation_key("sys", []))
    plan = ledger.plan(unit, a, "hi")
    ledger.record(unit, a, plan, "reply")
    other = ledger.plan(unit, turn(chain_key("x", "user", "other")), "the replay")
    assert (other.reset_first, other.continued, other.text) == (True, False, "the replay")
    ledger.record(unit, a, plan, None)  # paused / cut: what the cache holds is unknown
    again = ledger.plan(unit, turn(conversation_key("sys", [])), "the replay")
    assert again.reset_first and not again.continued
    assert ledger.plan(unit, None, "completion").reset_first  # no turn: a reset unless freshly set up
    assert not ledger.plan(FakeUnit(), None, "completion").reset_first


def test_a_turn_that_might_not_fit_is_replayed_and_a_replay_that_cannot_is_refused() -> None:
    ledger, unit = ConversationLedger(capacity=1024, chunk=128, decode_limit=1280), FakeUnit()
    a = turn(conversation_key("sys", []))
    plan = ledger.plan(unit, a, "hi")
    ledger.record(unit, a, plan, "x" * 900)  # ~950 positions used: 12 more + margin does not fit
    held = chain_key(chain_key(a.history_key, "user", "hi"), "assistant", "x" * 900)
    assert ledger.holds(unit, held)
    full = ledger.plan(unit, turn(held), "replay")
    assert full.reset_first and not full.continued
    with pytest.raises(ValueError, match="context"):
        ledger.plan(unit, turn(held, replay=1000), "replay")


def test_the_device_rounds_the_room_down_to_whole_chunks() -> None:
    ledger = ConversationLedger(capacity=1024, chunk=128, decode_limit=1280)
    assert ledger.fits(100, 768 - CTX_TURN_MARGIN)  # room 924 → 896 in whole chunks
    assert not ledger.fits(200, 768 - CTX_TURN_MARGIN + 1)  # room 824 → 768


def test_the_word_reset_is_never_sent_as_the_command_and_images_force_a_replay() -> None:
    ledger, unit = ConversationLedger(capacity=1024, chunk=128, decode_limit=1280), FakeUnit()
    assert ledger.plan(unit, turn(conversation_key("sys", []), "reset"), "reset").text == "reset "
    with_image = ledger.plan(unit, turn(conversation_key("sys", []), images=("data:x",)), "replay")
    assert not with_image.continued


def test_a_continued_turn_keeps_room_for_its_answer_below_the_decode_mask() -> None:
    # qwen3-1.7B-Int8-ctx-axcl: context and mask are both 1023, so a nearly full cache leaves little to say.
    ledger, unit = ConversationLedger(capacity=1023, chunk=128, decode_limit=1023), FakeUnit()
    a = turn(conversation_key("sys", []))
    plan = ledger.plan(unit, a, "hi")
    ledger.record(unit, a, plan, "x" * 730)  # ~770 used: the next turn still fits the context...
    held = chain_key(chain_key(a.history_key, "user", "hi"), "assistant", "x" * 730)
    long_answer = ledger.plan(unit, turn(held), "replay")  # ...but would leave under 256 tokens to answer
    assert not long_answer.continued and long_answer.reset_first
    ledger.record(unit, a, plan, "x" * 730)
    short = ledger.plan(unit, turn(held, budget=20), "replay")  # max_tokens 20 fits what is left
    assert short.continued and short.room >= 20
    assert ANSWER_RESERVE > 20


class CapacityUnit:
    """A ctx unit whose device ended the answer at its decode mask (the flag set by stackflow_chat)."""

    stopped_at_capacity = False

    async def generate(self, prompt: str, *, images: list[bytes], turn: Any = None) -> AsyncIterator[str]:
        self.stopped_at_capacity = False
        for piece in ("one", " two"):
            yield piece
        self.stopped_at_capacity = prompt == "full"


class CapacityBackend:
    info = chat_info_for(MODELS["qwen3-1.7B-Int8-ctx-axcl"])

    @asynccontextmanager
    async def lease(self, settings: UnitSettings) -> AsyncIterator[CapacityUnit]:
        yield CapacityUnit()


@pytest.mark.parametrize(("prompt", "reason"), [("full", "length"), ("room left", "stop")])
async def test_an_answer_ended_by_the_decode_mask_finishes_with_length(prompt: str, reason: str) -> None:
    settings = UnitSettings(system_prompt="s", max_token_len=1023)
    events = [
        e
        async for e in generate_choices(
            CapacityBackend(), settings, [Job(prompt, [], 100)], counter=EstimateCounter(), stops=[]
        )
    ]
    finished = events[-1]
    assert isinstance(finished, ChoiceFinished) and (finished.text, finished.finish_reason) == (
        "one two",
        reason,
    )
