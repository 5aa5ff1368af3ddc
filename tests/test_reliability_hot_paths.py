"""Hot paths found by the benchmarks (docs/performance.md) stay fixed, and stay correct.

The max_tokens limiter used to count the whole text on every delta, so a long stream cost time
quadratic in its length; it now counts a prefix once and the tail per delta, which must give exactly
the same cuts as counting everything every time. Stream chunks skip pydantic (text events are framed
from a template) and must stay the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import FakeChatBackend, tokenizers
from stackflow_openai.backends.base import UnitSettings
from stackflow_openai.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    Usage,
)
from stackflow_openai.services.chat import _ChatChunks
from stackflow_openai.services.common import GenerationPlan
from stackflow_openai.services.completions import _CompletionChunks
from stackflow_openai.services.events import Job
from stackflow_openai.services.limiter import OutputLimiter
from stackflow_openai.sse import encode_event
from stackflow_openai.tokens import EstimateCounter, TokenCounter

QWEN = tokenizers().get("qwen")


class CountingCounter:
    """Wraps a counter and adds up how many characters it was asked to count."""

    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner
        self.name = inner.name
        self.chars = 0

    def count(self, text: str) -> int:
        self.chars += len(text)
        return self.inner.count(text)


class NaiveLimiter(OutputLimiter):
    """The reference: the exact count of the whole text on every delta."""

    def _reaches_budget(self) -> bool:
        return self._counter.count(self._text) >= self._budget


def run(limiter: OutputLimiter, deltas: list[str]) -> tuple[str, str, list[str]]:
    released = []
    for delta in deltas:
        step = limiter.feed(delta)
        released.append(step.text)
        if step.done:
            break
    else:
        released.append(limiter.finish())
    return limiter.text, limiter.finish_reason, released


def test_a_long_stream_is_counted_in_linear_time() -> None:
    counter = CountingCounter(QWEN)
    limiter = OutputLimiter(counter, stops=[], budget=5000)
    deltas = [" hello world again"] * 600  # ~10,800 characters, ~1,800 tokens
    text, reason, _ = run(limiter, deltas)
    assert reason == "stop" and len(text) == 18 * 600
    # Counting the whole text per delta would be ~3.2 million characters.
    assert counter.chars < 20 * len(text), counter.chars


def test_the_cap_still_lands_on_the_exact_token() -> None:
    limiter = OutputLimiter(QWEN, stops=[], budget=1000)
    text, reason, _ = run(limiter, [" hello"] * 1500)
    assert reason == "length" and QWEN.count(text) == 1000 and text == " hello" * 1000


ALPHABET = st.sampled_from(
    [
        "a",
        "b",
        "Z",
        " ",
        "  ",
        "\n",
        ",",
        ".",
        "!",
        "?",
        "'",
        "'s",
        "7",
        "42",
        "日本",
        "。",
        "😀",
        "é",
        "-",
        "é",
    ]
)
DELTAS = st.lists(st.lists(ALPHABET, min_size=1, max_size=12).map("".join), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(deltas=DELTAS, budget=st.integers(min_value=1, max_value=400), stops=st.lists(ALPHABET, max_size=2))
def test_the_same_cuts_as_counting_everything_every_time(
    deltas: list[str], budget: int, stops: list[str]
) -> None:
    for counter in (QWEN, EstimateCounter()):
        fast = run(OutputLimiter(counter, stops=stops, budget=budget), deltas)
        exact = run(NaiveLimiter(counter, stops=stops, budget=budget), deltas)
        assert fast == exact


def plan_for_chunks(include_usage: bool) -> GenerationPlan:
    return GenerationPlan(
        id="chatcmpl-1",
        created=1700000000,
        model="m",
        backend=FakeChatBackend(),
        settings=UnitSettings(system_prompt="s", max_token_len=1023),
        jobs=[Job("p", [], 10)] * 3,
        stops=[],
        counter=QWEN,
        prompt_tokens=3,
        include_usage=include_usage,
    )


TEXTS = ("hello", "", '{"a": "\\u00e9"}', "日本 😀", "\x00text\x00", "line\nbreak \u2028")


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_direct_chat_chunks_are_the_models_chunks(include_usage: bool) -> None:
    # Chat chunks are built without pydantic, and text events from a template, for speed: the bytes on
    # the wire must stay identical to encoding the model's chunk (key order included).
    plan = plan_for_chunks(include_usage)
    chunks = _ChatChunks(plan)

    def model_chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> dict[str, object]:
        chunk = ChatCompletionChunk(
            id=plan.id, created=plan.created, model=plan.model, choices=choices, usage=usage
        ).model_dump(mode="json")
        if not include_usage:
            del chunk["usage"]
        return chunk

    for text in TEXTS:
        expected = model_chunk([ChatChunkChoice(index=2, delta={"content": text})])
        assert chunks.text(2, text) == encode_event(expected)
    role = model_chunk([ChatChunkChoice(index=1, delta={"role": "assistant", "content": ""})])
    assert encode_event(chunks.started(1)) == encode_event(role)  # type: ignore[arg-type]
    end = model_chunk([ChatChunkChoice(index=1, delta={}, finish_reason="length")])
    assert encode_event(chunks.finished(1, "length")) == encode_event(end)  # type: ignore[arg-type]
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    if include_usage:
        expected_usage = model_chunk([], usage)
        assert encode_event(chunks.usage(usage)) == encode_event(expected_usage)  # type: ignore[arg-type]


def test_the_completion_text_event_is_the_models_chunk() -> None:
    plan = plan_for_chunks(False)
    chunks = _CompletionChunks(plan, echo=False)
    for text in TEXTS:
        expected = Completion(
            id=plan.id,
            created=plan.created,
            model=plan.model,
            choices=[CompletionChoice(text=text, index=1, finish_reason=None)],
        ).model_dump(mode="json")
        del expected["usage"]
        assert chunks.text(1, text) == encode_event(expected)
