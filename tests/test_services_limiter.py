"""Stop sequences and the max_tokens cap applied to a stream of deltas."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import tokenizers
from stackflow_openai.services.limiter import OutputLimiter
from stackflow_openai.tokens import EstimateCounter, truncate_to_tokens


class WordCounter:
    """One token per character: makes budgets easy to reason about."""

    name = "chars"

    def count(self, text: str) -> int:
        return len(text)


def run(limiter: OutputLimiter, deltas: list[str]) -> tuple[list[str], bool]:
    """(pieces released, ended by the limiter)."""
    out = []
    for delta in deltas:
        step = limiter.feed(delta)
        if step.text:
            out.append(step.text)
        if step.done:
            return out, True
    tail = limiter.finish()
    if tail:
        out.append(tail)
    return out, False


def test_stop_spanning_deltas_is_cut_before_and_never_leaks() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["STOP"], budget=100)
    pieces, early = run(limiter, ["Hello S", "T", "OP and more"])
    assert "".join(pieces) == "Hello "
    assert early and limiter.finish_reason == "stop"
    assert not any("S" in p for p in pieces)  # the partial "S" was held back, then dropped


def test_held_back_prefix_is_released_when_it_stops_matching() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["</end>"], budget=100)
    assert limiter.feed("a </e").text == "a "
    assert limiter.feed("x").text == "</ex"
    assert limiter.finish() == ""
    assert limiter.text == "a </ex"


def test_held_back_prefix_is_released_at_the_natural_end() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["###"], budget=100)
    pieces, early = run(limiter, ["done #", "#"])
    assert "".join(pieces) == "done ##"
    assert not early and limiter.finish_reason == "stop"


def test_earliest_of_several_stops_wins() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["world", "lo"], budget=100)
    pieces, _ = run(limiter, ["Hello world"])
    assert "".join(pieces) == "Hel"


def test_budget_cuts_exactly_and_reports_length() -> None:
    limiter = OutputLimiter(WordCounter(), stops=[], budget=7)
    pieces, early = run(limiter, ["Hello", " world", "!"])
    assert "".join(pieces) == "Hello w"
    assert early and limiter.finish_reason == "length"


def test_reaching_the_budget_exactly_ends_the_generation() -> None:
    limiter = OutputLimiter(WordCounter(), stops=[], budget=5)
    pieces, early = run(limiter, ["Hello", " world"])
    assert pieces == ["Hello"] and early and limiter.finish_reason == "length"


def test_text_before_a_stop_that_exceeds_the_budget_is_a_length_finish() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["!"], budget=3)
    pieces, _ = run(limiter, ["Hello!"])
    assert "".join(pieces) == "Hel" and limiter.finish_reason == "length"


def test_a_stop_completed_only_after_the_budget_does_not_count() -> None:
    # Token by token: "a", "<" and the budget is used up; "<<" never completes within it.
    limiter = OutputLimiter(WordCounter(), stops=["<<"], budget=2)
    pieces, _ = run(limiter, ["a<<"])
    assert "".join(pieces) == "a<" and limiter.finish_reason == "length"


def test_one_token_with_the_qwen_bpe() -> None:
    counter = tokenizers().get("qwen")
    limiter = OutputLimiter(counter, stops=[], budget=1)
    pieces, early = run(limiter, ["Hello wor", "ld, how are you?"])
    assert "".join(pieces) == "Hello" and early
    assert counter.count(limiter.text) == 1


def test_empty_stop_strings_are_ignored() -> None:
    limiter = OutputLimiter(WordCounter(), stops=["", "x"], budget=100)
    pieces, _ = run(limiter, ["abc"])
    assert "".join(pieces) == "abc"


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab </>xyz", min_size=0, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    stops=st.lists(st.text(alphabet="ab</>", min_size=1, max_size=4), max_size=3),
    budget=st.integers(min_value=1, max_value=50),
)
def test_streamed_output_equals_the_reference_cut(
    text: str, cuts: list[int], stops: list[str], budget: int
) -> None:
    """However the text is split into deltas, the released pieces join to what token-by-token generation
    gives: the first `budget` tokens, cut before the first stop sequence complete within them.

    The estimate counter rounds a fractional weight up, so a count can reach the budget and stay there
    for another character ('<xzx' and '<xzx ' both count 4). A stream cannot know that the next delta
    will not add a token, so it stops as soon as the budget is reached: then the output may be a
    shorter prefix of the reference, but only one that already counts `budget` tokens."""
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    limiter = OutputLimiter(EstimateCounter(), stops=stops, budget=budget)
    pieces, _ = run(limiter, deltas)
    counter = EstimateCounter()
    expected = truncate_to_tokens(counter, text, budget) if counter.count(text) >= budget else text
    positions = [i for i in (expected.find(s) for s in stops) if i >= 0]
    expected = expected[: min(positions)] if positions else expected
    output = "".join(pieces)
    assert output == limiter.text and expected.startswith(output)
    assert output == expected or counter.count(output) >= budget
    assert counter.count(output) <= budget
    assert not any(s in output for s in stops)


def test_an_end_next_to_the_devices_room_is_length_and_a_stop_sequence_stays_stop() -> None:
    # room 20: the device's cap; the stream lost its held group, so the text is a few tokens short.
    near = OutputLimiter(WordCounter(), stops=[], budget=20, room=20)
    assert run(near, ["a" * 8, "b" * 9]) == (["a" * 8, "b" * 9], False)  # 17 >= 20 - 4
    assert near.finish_reason == "length"
    far = OutputLimiter(WordCounter(), stops=[], budget=20, room=20)
    run(far, ["a" * 8, "b" * 7])  # 15: an end of sequence well inside the room
    assert far.finish_reason == "stop"
    stopped = OutputLimiter(WordCounter(), stops=["!"], budget=20, room=20)
    run(stopped, ["a" * 17, "!"])
    assert (stopped.text, stopped.finish_reason) == ("a" * 17, "stop")
    unknown = OutputLimiter(WordCounter(), stops=[], budget=20)  # no room known: never guessed
    run(unknown, ["a" * 19])
    assert unknown.finish_reason == "stop"
