"""A chat conversation → (system prompt, one user turn) that fits the device's prefill window.

A StackFlow LLM/VLM unit fixes its system prompt at setup and answers ONE user turn per inference
(protocol §5.2); the whole templated prompt must fit the prefill window, often 128 or 256 tokens (§6).

Rendering. System and developer messages, in order, become the setup system prompt. Everything else is
rendered into the single user turn:

    Conversation so far:
    User: My name is Ann.
    Assistant: Nice to meet you, Ann!

    Now answer the user's new message: What is my name?

Why this shape: a small model shown a labelled transcript must be told plainly which part to answer,
or it continues the transcript or comments on it. Measured with the local SmolLM2-135M engine on four
"what did I tell you" conversations: this wording answered 3 of 4 from the earlier turn, a bare final
question ("Earlier conversation: ... <question>") 1 of 4. The labels cost about two tokens per turn,
far less than re-creating chat-template markers per turn, and the user text never contains template
special tokens. A lone user message is sent as is, with no decoration.

Fitting drops the oldest turns first. It never drops the system prompt nor the last message; if those
alone do not fit, the request is refused with 400 context_length_exceeded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stackflow_openai.backends.base import ChatModelInfo
from stackflow_openai.errors import ContextLengthExceeded, InvalidRequestError
from stackflow_openai.protocol import ChatMessage, ImageURL
from stackflow_openai.tokens import PREFILL_MARGIN, Tokenizers

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "HISTORY_HEADER",
    "NEW_MESSAGE_LEAD",
    "Conversation",
    "FittedPrompt",
    "HistoryFormat",
    "ImageRef",
    "Turn",
    "build_conversation",
    "call_text",
    "check_image_count",
    "fit_prompt",
    "images_to_send",
    "parse_messages",
    "render_user_text",
    "result_text",
    "tool_arguments",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # what Qwen's own chat template falls back to
HISTORY_HEADER = "Conversation so far:"
NEW_MESSAGE_LEAD = "Now answer the user's new message: "
_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}


class HistoryFormat(Protocol):
    def call_text(self, name: str, arguments: Any) -> str: ...

    def result_text(self, content: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ImageRef:
    url: str
    param: str  # "messages[i].content[j].image_url", named in errors


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # user | assistant | tool | function
    text: str
    images: tuple[ImageRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Conversation:
    system_prompt: str | None  # None: the request had no system/developer message
    turns: list[Turn]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    system_prompt: str
    user_text: str
    prompt_tokens: int  # templated prompt, image tokens included
    turns: list[Turn]  # the turns kept
    dropped: int  # oldest turns left out to fit


def _part_text(message: ChatMessage, index: int, images: list[ImageRef]) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if part.type in ("text", "refusal"):
            value = part.text if part.type == "text" else part.refusal
            if value is None:
                raise InvalidRequestError(f"'{where}' has no {part.type}.", param=f"{where}.{part.type}")
            texts.append(value)
        elif part.type == "image_url" and part.image_url is not None and message.role == "user":
            url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
            images.append(ImageRef(url, f"{where}.image_url"))
        else:
            raise InvalidRequestError(
                f"Content part type '{part.type}' is not supported in a {message.role} message here.",
                param=f"{where}.type",
                code="unsupported_content",
            )
    return "\n".join(texts)


def tool_arguments(raw: Any) -> Any:
    """A call's arguments as a value: OpenAI sends them as JSON text, templates write them as JSON."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def call_text(name: str, arguments: Any, tool_format: HistoryFormat | None) -> str:
    """An earlier tool call as the history shows it: as the model family writes its own calls, or (a
    request without tools) as a plain note. Shared by chat messages and Responses items."""
    if tool_format is not None:
        return tool_format.call_text(name, tool_arguments(arguments))
    return f"[called {name}({'' if arguments is None else arguments})]"


def result_text(output: str, tool_format: HistoryFormat | None) -> str:
    """A tool's result as the history shows it (the family's result wrapping, if there are tools)."""
    return tool_format.result_text(output) if tool_format is not None else output


def build_conversation(
    system: Sequence[str], turns: list[Turn], *, empty: InvalidRequestError
) -> Conversation:
    """The system/developer texts joined, and the turns. With no turns, instructions alone (OpenAI answers
    those) become the user turn the unit needs; with neither, `empty` is raised."""
    joined = "\n\n".join(s for s in system if s.strip())
    if not turns:
        if not joined:
            raise empty
        return Conversation(None, [Turn("user", joined)])
    return Conversation(joined or None, turns)


def _tool_calls_text(message: ChatMessage, tool_format: HistoryFormat | None) -> str:
    calls = [c["function"] for c in message.tool_calls or [] if isinstance(c.get("function"), dict)]
    legacy = (message.model_extra or {}).get("function_call")
    if isinstance(legacy, dict):
        calls.append(legacy)
    separator = "\n" if tool_format is not None else " "
    return separator.join(call_text(c.get("name", "?"), c.get("arguments"), tool_format) for c in calls)


def parse_messages(messages: Sequence[ChatMessage], tool_format: HistoryFormat | None = None) -> Conversation:
    """`tool_format`: the model family's way of writing earlier tool calls and results (tool requests)."""
    system: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        images: list[ImageRef] = []
        text = _part_text(message, index, images)
        if message.role in ("system", "developer"):
            system.append(text)
            continue
        if message.role == "assistant" and (
            message.tool_calls or (message.model_extra or {}).get("function_call")
        ):
            calls = _tool_calls_text(message, tool_format)
            text = f"{text}\n{calls}" if text else calls
        elif message.role in ("tool", "function"):
            text = result_text(text, tool_format)
        turns.append(Turn(message.role, text, tuple(images)))
    empty = InvalidRequestError("messages must contain a user message.", param="messages")
    return build_conversation(system, turns, empty=empty)


def render_user_text(turns: Sequence[Turn]) -> str:
    if not turns:
        return ""
    *history, last = turns
    if not history and last.role == "user":
        return last.text
    lines = [f"{_LABELS[t.role]}: {t.text}" for t in history]
    if last.role == "user":
        return f"{HISTORY_HEADER}\n" + "\n".join(lines) + f"\n\n{NEW_MESSAGE_LEAD}{last.text}"
    lines.append(f"{_LABELS[last.role]}: {last.text}")
    return f"{HISTORY_HEADER}\n" + "\n".join(lines)


def _chunk_hint(info: ChatModelInfo) -> str:
    if info.prefill_chunk is None:
        return ""
    # The device's real window is in its model file; using the chunk is safe, but may be far too small.
    return (
        f" (The model prefills in chunks of {info.prefill_chunk} tokens and its descriptor does not state "
        "its real window, so one chunk is assumed; if the model file takes more, set `prefill_len` for "
        "this model in the gateway's configuration.)"
    )


def fit_prompt(
    tokenizers: Tokenizers,
    info: ChatModelInfo,
    system_prompt: str,
    turns: Sequence[Turn],
    *,
    image_tokens: int = 0,
    instructions: str | None = None,
    param: str = "messages",
    user_prefix: str = "",
) -> FittedPrompt:
    """Keep the newest turns whose templated prompt fits `info.prefill_len` minus the margin.

    Dropping turns only ever shortens the prompt, so a binary search over the number dropped needs
    O(log n) counts even for long conversations.

    A model whose device tokenizer puts a fixed system prompt (or none) in front of a prompt with an image
    (`info.image_system_prompt`, InternVL2/2.5, SmolVLM) or of any text prompt (`info.text_system_prompt`,
    Llama 3.2) never sees `system_prompt` then: the request's own `instructions` (its system messages, if
    any) lead the user text instead, and the count uses the fixed prompt."""
    window = info.prefill_len - PREFILL_MARGIN
    costs: dict[int, int] = {}  # each count once (a single turn is counted for the check and the result)

    def render(kept: Sequence[Turn]) -> tuple[str, str]:
        text = user_prefix + render_user_text(kept)  # (tool definitions of a user-turn tool format)
        fixed = info.image_system_prompt if any(t.images for t in kept) else info.text_system_prompt
        if fixed is None:
            return system_prompt, text
        return fixed, f"{instructions}\n\n{text}" if instructions else text

    def cost(dropped: int) -> int:
        if dropped not in costs:
            kept = turns[dropped:]
            images = sum(len(t.images) for t in kept)
            if info.max_images is not None:  # only the newest are sent (services/chat.py)
                images = min(images, info.max_images)
            system, user_text = render(kept)
            costs[dropped] = tokenizers.prompt_tokens(info, system, user_text) + images * image_tokens
        return costs[dropped]

    lo, hi = 0, len(turns) - 1  # the last turn is never dropped
    if cost(hi) > window:
        raise ContextLengthExceeded(
            f"This model's prefill window is {info.prefill_len} tokens and {PREFILL_MARGIN} are kept as a "
            f"safety margin, but the system prompt and the last message alone need {cost(hi)} tokens. "
            f"Please shorten them.{_chunk_hint(info)}",
            param=param,
        )
    while lo < hi:  # smallest number of dropped turns that fits
        mid = (lo + hi) // 2
        if cost(mid) <= window:
            hi = mid
        else:
            lo = mid + 1
    kept = list(turns[lo:])
    system, user_text = render(kept)
    return FittedPrompt(system, user_text, cost(lo), kept, lo)


def check_image_count(refs: Sequence[ImageRef], max_images: int | None, model: str) -> None:
    """Several images in the message being answered would be answered about only the last one (a one-image
    VLM keeps the last it was sent): refused, since such an answer would look right and be wrong."""
    if max_images is None or len(refs) <= max_images:
        return
    raise InvalidRequestError(
        f"The model '{model}' sees only {max_images} image per request (its device unit keeps the last one "
        f"it was sent), but the last message has {len(refs)}. Send one image per message.",
        param=refs[max_images].param,
        code="too_many_images",
    )


def images_to_send(turns: Sequence[Turn], max_images: int | None) -> tuple[list[ImageRef], int]:
    """(the images of `turns` to send, how many older ones are left out). A one-image model gets the
    newest: the device would keep only the last anyway, and chat UIs resend the history's images; the
    turns' text stays, and the caller says how many were left out (`fit_prompt` counts only these)."""
    refs = [ref for turn in turns for ref in turn.images]
    if max_images is None or len(refs) <= max_images:
        return refs, 0
    return refs[len(refs) - max_images :], len(refs) - max_images
