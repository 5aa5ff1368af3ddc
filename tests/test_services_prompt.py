"""Conversation rendering and fitting into the prefill window."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import ESTIMATE_INFO, QWEN_P128, QWEN_P256, VLM_INFO, tokenizers
from stackflow_openai.errors import ContextLengthExceeded, InvalidRequestError
from stackflow_openai.protocol import ChatMessage
from stackflow_openai.services.prompt import (
    HISTORY_HEADER,
    NEW_MESSAGE_LEAD,
    ImageRef,
    Turn,
    fit_prompt,
    parse_messages,
    render_user_text,
)
from stackflow_openai.tokens import PREFILL_MARGIN


def messages(*pairs: tuple[str, object]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": role, "content": content}) for role, content in pairs]


def test_a_lone_user_message_is_sent_verbatim() -> None:
    text = 'Code: {"a": [1, 2]} \\n back\\slash 😀 日本語'
    conversation = parse_messages(messages(("user", text)))
    assert conversation.system_prompt is None
    assert render_user_text(conversation.turns) == text


def test_system_and_developer_messages_join_into_the_setup_prompt() -> None:
    conversation = parse_messages(
        messages(
            ("system", "You are terse."),
            ("user", "hi"),
            ("developer", "Answer in French."),
            ("user", "bye"),
        )
    )
    assert conversation.system_prompt == "You are terse.\n\nAnswer in French."
    assert [t.role for t in conversation.turns] == ["user", "user"]


def test_history_is_a_labelled_transcript_and_the_last_question_stands_alone() -> None:
    conversation = parse_messages(
        messages(
            ("user", "My name is Ann."),
            ("assistant", "Nice to meet you, Ann!"),
            ("user", "What is my name?"),
        )
    )
    assert render_user_text(conversation.turns) == (
        f"{HISTORY_HEADER}\nUser: My name is Ann.\nAssistant: Nice to meet you, Ann!\n\n"
        f"{NEW_MESSAGE_LEAD}What is my name?"
    )


def test_content_parts_and_tool_turns() -> None:
    conversation = parse_messages(
        [
            ChatMessage.model_validate(
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Weather?"}, {"type": "text", "text": "In Paris."}],
                }
            ),
            ChatMessage.model_validate(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                }
            ),
            ChatMessage.model_validate({"role": "tool", "content": "20 C, sunny", "tool_call_id": "c1"}),
        ]
    )
    rendered = render_user_text(conversation.turns)
    assert rendered.startswith(f"{HISTORY_HEADER}\nUser: Weather?\nIn Paris.\nAssistant: [called weather(")
    assert rendered.endswith("Tool: 20 C, sunny")


def test_image_parts_are_collected_with_their_param() -> None:
    conversation = parse_messages(
        [
            ChatMessage.model_validate(
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            )
        ]
    )
    (turn,) = conversation.turns
    assert turn.text == "What is this?"
    assert [(i.url, i.param) for i in turn.images] == [
        ("data:image/png;base64,AAAA", "messages[0].content[1].image_url")
    ]


def test_unsupported_part_type_names_the_part() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_messages(
            [
                ChatMessage.model_validate(
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "listen"},
                            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                        ],
                    }
                )
            ]
        )
    assert info.value.param == "messages[0].content[1].type"


def test_instructions_alone_become_the_user_turn() -> None:
    conversation = parse_messages(messages(("system", "Say hi."), ("developer", "Briefly.")))
    assert conversation.system_prompt is None
    assert [(t.role, t.text) for t in conversation.turns] == [("user", "Say hi.\n\nBriefly.")]
    with pytest.raises(InvalidRequestError):
        parse_messages(messages(("system", "  ")))


def test_long_conversation_drops_the_oldest_turns_to_fit_p256() -> None:
    turns = []
    for i in range(40):
        turns.append(Turn("user", f"Question number {i}: tell me something about the number {i}."))
        turns.append(Turn("assistant", f"Answer {i}: the number {i} is a fine number indeed."))
    turns.append(Turn("user", "And what was the first question?"))
    fitted = fit_prompt(tokenizers(), QWEN_P256, "You are a helpful assistant.", turns)
    assert fitted.prompt_tokens <= QWEN_P256.prefill_len - PREFILL_MARGIN
    assert fitted.prompt_tokens == tokenizers().prompt_tokens(
        QWEN_P256, fitted.system_prompt, fitted.user_text
    )
    assert fitted.dropped > 0
    assert fitted.turns == turns[fitted.dropped :]  # only the oldest went
    assert fitted.user_text.endswith(
        "\n\nNow answer the user's new message: And what was the first question?"
    )
    assert "Question number 0:" not in fitted.user_text
    # Keeping one more (older) turn would not have fitted: the window is used as far as it goes.
    bigger = tokenizers().prompt_tokens(
        QWEN_P256, fitted.system_prompt, render_user_text(turns[fitted.dropped - 1 :])
    )
    assert bigger > QWEN_P256.prefill_len - PREFILL_MARGIN


def test_conversation_that_fits_is_untouched() -> None:
    turns = [Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "how are you?")]
    fitted = fit_prompt(tokenizers(), QWEN_P128, "You are a helpful assistant.", turns)
    assert fitted.dropped == 0 and fitted.turns == turns


def test_over_long_last_message_is_context_length_exceeded() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        fit_prompt(tokenizers(), QWEN_P128, "You are a helpful assistant.", [Turn("user", "word " * 200)])
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"


def test_over_long_system_prompt_is_context_length_exceeded() -> None:
    with pytest.raises(ContextLengthExceeded):
        fit_prompt(tokenizers(), QWEN_P128, "Be helpful. " * 60, [Turn("user", "hi")])


def test_estimate_models_fit_with_the_estimate() -> None:
    fitted = fit_prompt(
        tokenizers(), ESTIMATE_INFO, "Be brief.", [Turn("user", "x" * 50), Turn("user", "hi")]
    )
    assert fitted.prompt_tokens <= ESTIMATE_INFO.prefill_len - PREFILL_MARGIN


def test_image_tokens_count_against_the_window() -> None:
    image = (ImageRef("data:,", "messages[0].content[0].image_url"),)
    turns = [Turn("user", "look", image), Turn("assistant", "ok"), Turn("user", "and now?")]
    without_image = fit_prompt(tokenizers(), QWEN_P256, "S", turns)
    assert without_image.dropped == 0
    fitted = fit_prompt(tokenizers(), QWEN_P256, "S", turns, image_tokens=230)
    assert fitted.dropped == 1  # the turn with the image had to go
    assert not any(t.images for t in fitted.turns)


def test_an_image_prompt_runs_under_the_vlms_own_system_prompt_with_the_instructions_in_the_text() -> None:
    # InternVL2.5's tokenizer script replaces the system prompt when there is an image (`encode_vpm`).
    info = replace(VLM_INFO, image_tokens=169, image_system_prompt="Please describe the image shortly.")
    image = ImageRef(url="data:image/png;base64,AA==", param="messages[0].content[1]")
    with_image = fit_prompt(
        tokenizers(), info, "Answer in French.", [Turn("user", "What is this?", (image,))],
        image_tokens=169, instructions="Answer in French.",
    )  # fmt: skip
    assert with_image.system_prompt == "Please describe the image shortly."
    assert with_image.user_text == "Answer in French.\n\nWhat is this?"
    count = tokenizers().prompt_tokens(info, "Please describe the image shortly.", with_image.user_text)
    assert with_image.prompt_tokens == count + 169
    text_only = fit_prompt(
        tokenizers(), info, "Answer in French.", [Turn("user", "Hi")], instructions="Answer in French."
    )
    assert (text_only.system_prompt, text_only.user_text) == ("Answer in French.", "Hi")
