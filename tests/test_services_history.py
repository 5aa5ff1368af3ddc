"""Chat messages and Responses input items write an earlier tool exchange into the same history."""

from __future__ import annotations

import pytest

from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.protocol import ChatMessage
from stackflow_openai.services.prompt import HistoryFormat, Turn, parse_messages
from stackflow_openai.services.responses_input import normalize_input, to_conversation
from stackflow_openai.services.toolformats import format_for

ARGUMENTS = '{"city": "Paris"}'


def _chat(tool_format: HistoryFormat | None) -> list[Turn]:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": ARGUMENTS}}
            ],
        },
        {"role": "tool", "content": "20 C", "tool_call_id": "c1"},
    ]
    parsed = [ChatMessage.model_validate(m) for m in messages]
    conversation = parse_messages(parsed, tool_format)
    assert conversation.system_prompt == "Be brief."
    return conversation.turns


def _responses(tool_format: HistoryFormat | None) -> list[Turn]:
    items = normalize_input(
        [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": ARGUMENTS},
            {"type": "function_call_output", "call_id": "c1", "output": "20 C"},
        ]
    ).items
    conversation = to_conversation("Be brief.", [], items, tool_format)
    assert conversation.system_prompt == "Be brief."
    return conversation.turns


@pytest.mark.parametrize("family", [None, "qwen", "llama3"])
def test_a_tool_exchange_reads_the_same_from_both_front_ends(family: str | None) -> None:
    tool_format = format_for("any", family) if family else None
    chat, responses = _chat(tool_format), _responses(tool_format)
    assert [(t.role, t.text) for t in responses] == [(t.role, t.text) for t in chat]
    call = chat[1].text
    if tool_format is None:
        assert call == f"[called weather({ARGUMENTS})]"
        assert chat[2].text == "20 C"
    else:  # the family's own call syntax, with the arguments as JSON (not a quoted string)
        assert '"city": "Paris"' in call and '\\"city' not in call
        assert chat[2].text == tool_format.result_text("20 C")


def test_instructions_alone_become_the_user_turn_in_both_front_ends() -> None:
    chat = parse_messages([ChatMessage.model_validate({"role": "system", "content": "Say hi."})])
    responses = to_conversation("Say hi.", [], [])
    assert chat == responses
    assert responses.system_prompt is None and responses.turns == [Turn("user", "Say hi.")]


def test_an_empty_request_names_each_front_ends_own_field() -> None:
    with pytest.raises(InvalidRequestError) as chat:
        parse_messages([ChatMessage.model_validate({"role": "system", "content": "  "})])
    with pytest.raises(InvalidRequestError) as responses:
        to_conversation("  ", [], [])
    assert chat.value.param == "messages"
    assert responses.value.param == "input"
