"""Tool calling, structured outputs and reasoning, sans-IO: rendering, tolerant parsing, streaming holds."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.services.events import ChoiceReasoning, ChoiceText, ChoiceToolCall, Job
from stackflow_openai.services.jsonfix import JsonNotFound, extract_json
from stackflow_openai.services.output import ModelOutputError, build_output_spec
from stackflow_openai.services.reasoning import ThinkSplitter
from stackflow_openai.services.structured import parse_response_format
from stackflow_openai.services.toolformats import FORMATS, format_for, parse_tool_calls
from stackflow_openai.services.tools import ToolsMode, parse_tool_request

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
LIGHT = {
    "type": "function",
    "function": {"name": "light_on", "parameters": {"type": "object", "properties": {}}},
}


# ---- rendering -------------------------------------------------------------------------------------------
def test_qwen_tools_are_written_exactly_as_qwen25s_chat_template_writes_them() -> None:
    request = parse_tool_request({"tools": [WEATHER, LIGHT]})
    assert request is not None
    text = FORMATS["qwen"].tools_prompt(request.tools, request.rule())
    # The template's `tools` branch, literally (each tool one `tojson` line, json.dumps defaults).
    expected = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}\n'
        '{"type": "function", "function": {"name": "light_on", "parameters": {"type": "object", '
        '"properties": {}}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )
    assert text == expected
    assert (
        FORMATS["qwen"].call_text("f", {"a": 1})
        == '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    )
    assert FORMATS["qwen"].result_text("22 C") == "<tool_response>\n22 C\n</tool_response>"


def test_each_family_gets_its_format() -> None:
    assert format_for("qwen2.5-0.5B-p256-ax630c").name == "qwen"
    assert format_for("deepseek-r1-1.5B-ax630c").name == "qwen"
    assert format_for("internvl2.5-1B-364-ax630c").name == "qwen"
    assert format_for("llama3.2-1B-p256-ax630c").name == "llama3"
    assert format_for("openbuddy-llama3.2-1B-ax630c").name == "generic"
    assert format_for("smolvlm-256M-ax630c").name == "generic"
    assert format_for("SmolLM2-135M-Instruct").name == "smollm2"
    assert format_for("qwen2.5-0.5B-p256-ax630c", "llama3").name == "llama3"
    llama = FORMATS["llama3"].tools_prompt(parse_tool_request({"tools": [WEATHER]}).tools, "")  # type: ignore[union-attr]
    assert llama.startswith("Given the following functions, please respond with a JSON for a function call")
    assert '{\n    "type": "function",' in llama and FORMATS["llama3"].placement == "user"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": "x"}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wrong"}}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tool_requests_are_refused_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_tool_request(body)
    assert caught.value.param == param


def test_tool_choice_none_offers_nothing_and_named_offers_only_that_tool() -> None:
    assert parse_tool_request({"tools": [WEATHER], "tool_choice": "none"}) is None
    named = parse_tool_request(
        {"tools": [WEATHER, LIGHT], "tool_choice": {"type": "function", "function": {"name": "light_on"}}}
    )
    assert named is not None and [t.name for t in named.tools] == ["light_on"]
    assert named.rule() == "You must call the function light_on."
    legacy = parse_tool_request(
        {"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}}
    )
    assert legacy is not None and legacy.legacy and legacy.choice == "named" and not legacy.parallel


def test_bad_response_formats_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        parse_response_format({"type": "xml"})
    with pytest.raises(InvalidRequestError):
        parse_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}})
    assert parse_response_format({"type": "text"}) is None


# ---- tolerant parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>",  # single quotes
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris",},}</tool_call>',  # trailing commas
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # no closing tag
        # arguments as a JSON string
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',  # code fence, no tags
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.2
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call>',  # SmolLM2
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',  # a brace short
    ],
)
def test_what_small_models_write_is_read_as_a_call(text: str) -> None:
    mode = ToolsMode(parse_tool_request({"tools": [WEATHER]}), FORMATS["qwen"])  # type: ignore[arg-type]
    mode.feed(text)
    outcome = mode.finish()
    assert not isinstance(outcome, str), outcome
    assert [(c.name, json.loads(c.arguments)) for c in outcome.calls] == [("get_weather", {"city": "Paris"})]
    assert outcome.calls[0].id.startswith("call_")


def test_several_calls_and_the_text_around_them() -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "light_on", "arguments": {}}\n</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["get_weather", "light_on"] and parsed.content == "Let me check."
    one = ToolsMode(
        parse_tool_request({"tools": [WEATHER, LIGHT], "parallel_tool_calls": False}), FORMATS["qwen"]
    )  # type: ignore[arg-type]
    one.feed(text)
    outcome = one.finish()
    assert not isinstance(outcome, str) and [c.name for c in outcome.calls] == ["get_weather"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',
            '"city" is a required property',
        ),
        (
            '<tool_call>\n{"name": "weather", "arguments": {"city": "x"}}\n</tool_call>',
            "no function 'weather'",
        ),
        ('<tool_call>\n{"name": "get_weather", "arguments": "not json"}\n</tool_call>', "not a JSON object"),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3}}\n</tool_call>',
            'is not of type "string"',
        ),
    ],
)
def test_invalid_calls_give_a_problem_for_the_re_ask(text: str, problem: str) -> None:
    mode = ToolsMode(parse_tool_request({"tools": [WEATHER]}), FORMATS["qwen"])  # type: ignore[arg-type]
    mode.feed(text)
    outcome = mode.finish()
    assert isinstance(outcome, str) and problem in outcome


def test_a_plain_answer_or_non_call_json_stays_content() -> None:
    mode = ToolsMode(parse_tool_request({"tools": [WEATHER]}), FORMATS["qwen"])  # type: ignore[arg-type]
    assert mode.feed("It is sunny") == "It is sunny"
    assert mode.finish() == mode.finish() and not mode.finish().calls  # type: ignore[union-attr]
    json_answer = ToolsMode(parse_tool_request({"tools": [WEATHER]}), FORMATS["qwen"])  # type: ignore[arg-type]
    assert json_answer.feed('{"temperature": 21}') == ""  # held: it might have been a call
    outcome = json_answer.finish()
    assert not isinstance(outcome, str) and outcome.late_text == '{"temperature": 21}' and not outcome.calls
    required = ToolsMode(parse_tool_request({"tools": [WEATHER], "tool_choice": "required"}), FORMATS["qwen"])  # type: ignore[arg-type]
    assert required.feed("It is sunny") == ""
    assert required.finish() == "no function call was made"


def test_streaming_never_releases_call_syntax() -> None:
    mode = ToolsMode(parse_tool_request({"tools": [WEATHER]}), FORMATS["qwen"])  # type: ignore[arg-type]
    pieces = [
        "Sure",
        ", checking. <",
        "tool_",
        'call>\n{"name": ',
        '"get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    ]
    released = "".join(mode.feed(p) for p in pieces)
    assert released == "Sure, checking. "
    outcome = mode.finish()
    assert not isinstance(outcome, str) and outcome.calls[0].name == "get_weather"


# ---- JSON extraction -------------------------------------------------------------------------------------
def test_json_is_found_in_fences_and_prose_and_repaired() -> None:
    assert extract_json('```json\n{"a": 1}\n```').value == {"a": 1}
    found = extract_json('Here you go: {"a": [1, 2]} Enjoy!')
    assert found.value == {"a": [1, 2]} and not found.repaired and found.rest == "Here you go:  Enjoy!"
    repaired = extract_json("{'a': 1, 'b': 'x',}")
    assert repaired.value == {"a": 1, "b": "x"} and repaired.repaired
    assert extract_json('{"a": {"b": 2}').value == {"a": {"b": 2}}  # stopped a brace short
    with pytest.raises(JsonNotFound):
        extract_json("no json here", want=dict)


# ---- reasoning -------------------------------------------------------------------------------------------
def _split(mode: str, pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkSplitter(mode)  # type: ignore[arg-type]
    reasoning = answer = ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.finish()
    return reasoning + r, answer + a


def test_think_text_is_split_even_when_tags_straddle_deltas() -> None:
    pieces = ["<th", "ink>\nThe user", " wants 2.</th", "ink>\n\nIt is 2."]
    assert _split("think", pieces) == ("The user wants 2.", "It is 2.")
    assert _split("think", ["It is ", "2."]) == ("", "It is 2.")  # no think block: all answer
    assert _split("implicit", ["The user wants 2.", "</think>\n\nIt is 2."]) == (
        "The user wants 2.",
        "It is 2.",
    )
    assert _split("implicit", ["Still thinking about"]) == ("Still thinking about", "")  # cut short
    assert _split("off", ["<think>x</think>y"]) == ("", "<think>x</think>y")
    empty = _spec({}, "qwen3-1.7B-Int8-ctx-axcl").factory(lambda _c: None)(0)
    assert empty.feed("<think>\n\n</think>\n\nHi there") == [ChoiceText(0, "Hi there")]
    answer = empty.finish("stop")
    assert not isinstance(answer, Job) and answer.reasoning is None and answer.text == "Hi there"


# ---- the whole filter ------------------------------------------------------------------------------------
def _spec(body: dict, model: str = "qwen2.5-0.5B-p256-ax630c", **options: object):  # type: ignore[no-untyped-def]
    return build_output_spec(body, model, options)


def test_filter_streams_reasoning_then_calls_and_json_is_checked_only_in_the_answer() -> None:
    spec = _spec({"tools": [WEATHER]}, "deepseek-r1-1.5B-ax630c")
    choice = spec.factory(lambda _correction: None)(0)
    events = choice.feed('I should call it.</think>\n<tool_call>\n{"name": "get_weather", "arguments": ')
    events += choice.feed('{"city": "Rome"}}\n</tool_call>')
    answer = choice.finish("stop")
    assert not isinstance(answer, Job)
    assert [type(e) for e in events] == [ChoiceReasoning]
    assert [type(e) for e in answer.events] == [ChoiceToolCall]
    assert (
        answer.finish_reason == "tool_calls" and answer.reasoning == "I should call it." and answer.text == ""
    )

    schema = {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object", "required": ["n"]}},
    }
    choice = _spec({"response_format": schema}, "qwen3-0.6B-ax630c").factory(lambda _c: None)(0)
    assert choice.feed('<think>{"not": "this"}</think>{"n": 1}') == [ChoiceReasoning(0, '{"not": "this"}')]
    answer = choice.finish("stop")
    assert not isinstance(answer, Job) and answer.text == '{"n": 1}'
    assert answer.events == (ChoiceText(0, '{"n": 1}'),)


def test_re_ask_then_refusal() -> None:
    asked: list[str] = []

    def retry(correction: str) -> Job:
        asked.append(correction)
        return Job("again", [], 50)

    choice = _spec({"tools": [WEATHER], "tool_choice": "required"}).factory(retry)(0)
    choice.feed("I do not know.")
    job = choice.finish("stop")
    assert isinstance(job, Job) and "no function call was made" in asked[0] and "only the call" in asked[0]
    with pytest.raises(ModelOutputError) as caught:
        choice.retried("Still no idea.", "stop")
    assert caught.value.code == "tool_call_invalid" and caught.value.status_code == 500

    none_left = _spec({"response_format": {"type": "json_object"}}, output_retries=0).factory(retry)(0)
    none_left.feed("words")
    with pytest.raises(ModelOutputError) as caught:
        none_left.finish("stop")
    assert caught.value.code == "structured_output_failed" and len(asked) == 1


def test_a_schema_with_a_remote_ref_is_refused_without_fetching_it() -> None:
    remote = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/schema.json"}}}
    with pytest.raises(InvalidRequestError) as caught:
        parse_tool_request({"tools": [{"type": "function", "function": {"name": "f", "parameters": remote}}]})
    assert caught.value.param == "tools[0].function.parameters" and "not followed" in caught.value.message


def test_a_call_cut_by_max_tokens_is_not_asked_again() -> None:
    choice = _spec({"tools": [WEATHER]}).factory(lambda _c: Job("again", [], 5))(0)
    choice.feed('<tool_call>\n{"name": "get_weather", "argu')
    with pytest.raises(ModelOutputError) as caught:
        choice.finish("length")
    assert "cut at max_tokens" in caught.value.message


def test_history_is_written_in_the_familys_format() -> None:
    from stackflow_openai.protocol import ChatMessage
    from stackflow_openai.services.prompt import parse_messages

    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        ),
        ChatMessage(role="tool", tool_call_id="c1", content="20 C"),
        ChatMessage.model_validate(
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
        ),
    ]
    turns = parse_messages(messages, FORMATS["llama3"]).turns
    assert turns[1].text == '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    assert turns[2].text == "20 C" and turns[3].text == '{"name": "f", "parameters": {}}'
    qwen = parse_messages(messages, FORMATS["qwen"]).turns
    assert qwen[2].text == "<tool_response>\n20 C\n</tool_response>"


_TOKENS = st.sampled_from(
    [
        *"{}[]\"':, \nabc123<>/_",
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
        "```",
        '"name"',
        '"arguments"',
    ]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.lists(_TOKENS, max_size=12).map("".join), max_size=12))
def test_any_model_output_gives_an_answer_or_a_clean_refusal(pieces: list[str]) -> None:
    """Whatever a model writes, split however: an answer, or ModelOutputError (never another exception,
    never call syntax in the streamed content)."""
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    for body, model in (
        ({"tools": [WEATHER, LIGHT]}, "qwen3-0.6B-ax630c"),
        ({"response_format": schema}, "qwen"),
    ):
        choice = _spec(body, model, output_retries=0).factory(lambda _c: None)(0)
        streamed = "".join(e.text for p in pieces for e in choice.feed(p) if isinstance(e, ChoiceText))
        assert "<tool_call>" not in streamed
        try:
            answer = choice.finish("stop")
        except ModelOutputError:
            continue
        assert not isinstance(answer, Job)
        for call in answer.tool_calls:
            assert isinstance(json.loads(call.arguments), dict)
