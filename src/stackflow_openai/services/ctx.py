"""The chat service's hook for "ctx" models: a request → the ConversationTurn its unit continues from.

A ctx model's unit keeps the conversation in its KV cache (backends/conversations.py decides, per unit,
whether to send only the new message or to reset and replay). This module only names the conversation
(digests of its messages) and counts what each path would prefill, with the model's tokenizer.
"""

from __future__ import annotations

from stackflow_openai.backends.base import ChatModelInfo
from stackflow_openai.backends.conversations import TURN_MARKERS, ConversationTurn, conversation_key
from stackflow_openai.tokens import Tokenizers

from .prompt import Conversation, FittedPrompt, Turn

__all__ = ["conversation_turn"]


def _messages(turns: list[Turn]) -> list[tuple[str, str, list[str]]]:
    return [(turn.role, turn.text, [image.url for image in turn.images]) for turn in turns]


def conversation_turn(
    tokenizers: Tokenizers,
    info: ChatModelInfo,
    system_prompt: str,
    conversation: Conversation,
    fitted: FittedPrompt,
    budget: int,
) -> ConversationTurn | None:
    """None for a single-turn model, or when the conversation does not end with a user message (then
    the unit is reset and gets the folded prompt, like any request that is no new turn)."""
    if not info.context_len:
        return None
    *earlier, last = conversation.turns
    if last.role != "user":
        return None
    counter = tokenizers.for_model(info)
    system_tokens = tokenizers.prompt_tokens(info, system_prompt, "") - TURN_MARKERS
    # With an image LLM_CTX prefills the tokenizer helper's whole template, system block included, after
    # the system block already in the cache (main_vlm `Encode_ctx`, protocol-notes.md, note 15).
    images = any(turn.images for turn in fitted.turns)
    replay_tokens = fitted.prompt_tokens if images else fitted.prompt_tokens - system_tokens
    return ConversationTurn(
        empty_key=conversation_key(system_prompt, []),
        history_key=conversation_key(system_prompt, _messages(earlier)),
        text=last.text,
        system_tokens=system_tokens,
        text_tokens=counter.count(last.text) + TURN_MARKERS,
        replay_tokens=replay_tokens,
        count=counter.count,
        budget=budget,
        images=tuple(image.url for image in last.images),
    )
