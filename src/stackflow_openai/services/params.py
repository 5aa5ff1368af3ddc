"""Which request parameters the device cannot honour, and what to do about them.

The gateway maps temperature/top_p to setup flags, emulates stop and max_tokens, runs n sequentially.
Everything else a client sends is *ignored*, and honestly reported: the names go to the response header
``X-Ignored-Params``; a model with ``strict_params`` refuses them with 400 ``unsupported_parameter``.
A parameter set to its neutral value (``null``, ``frequency_penalty: 0``, ``logprobs: false``, ...)
changes nothing and is not reported: SDKs and frameworks send those on every call. Tools and
``response_format`` are not in this list: the gateway acts on them (services/tools.py, structured.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stackflow_openai.errors import UnsupportedParameter

__all__ = [
    "DROPPED_HEADER",
    "IGNORED_HEADER",
    "TRANSLATION_HEADER",
    "header_list",
    "ignored_params",
    "reject_if_strict",
]

IGNORED_HEADER = "X-Ignored-Params"
# Chat: how many of the oldest messages were left out to fit the device's prefill window.
DROPPED_HEADER = "X-Dropped-Messages"
# /v1/audio/translations: the chat model that translated the transcript (absent: the ASR model did).
TRANSLATION_HEADER = "X-Translation-Model"
_HEADER_SAFE_NAME = re.compile(r"[!-+\--~]+")  # visible ASCII but the comma that separates the names


def _in(*values: Any) -> Callable[[Any, Mapping[str, Any]], bool]:
    return lambda value, _body: value in values


def _best_of_neutral(value: Any, body: Mapping[str, Any]) -> bool:
    # best_of = n (or 1) means "return every candidate": exactly what running n choices does.
    return value in (1, body.get("n") or 1)


def _always(_value: Any, _body: Mapping[str, Any]) -> bool:
    return True


# Neutral values of the parameters OpenAI defines that the gateway does not act on. A parameter missing
# here is neutral only when null.
_NEUTRAL: dict[str, Callable[[Any, Mapping[str, Any]], bool]] = {
    "frequency_penalty": _in(0, 0.0),
    "presence_penalty": _in(0, 0.0),
    "logit_bias": _in({}),
    "logprobs": _in(False, 0),
    "top_logprobs": _in(0),
    "modalities": _in(["text"]),
    # Bookkeeping and routing hints: whatever their value, the answer is the same (LibreChat sends
    # `user` with every request; strict_params must not refuse it).
    "metadata": _always,
    "store": _always,
    "service_tier": _always,
    "user": _always,
    "prompt_cache_key": _always,
    "safety_identifier": _always,
    "suffix": _in(""),
    "best_of": _best_of_neutral,
}


def ignored_params(extra: Mapping[str, Any], body: Mapping[str, Any]) -> list[str]:
    """Sorted names of the fields in `extra` (everything the request model does not act on) that would
    change the result if the device could honour them."""
    ignored = []
    for name, value in extra.items():
        if value is None:
            continue
        neutral = _NEUTRAL.get(name)
        if neutral is not None and neutral(value, body):
            continue
        ignored.append(name)
    return sorted(ignored)


def header_list(names: Iterable[str], separator: str = ",") -> str:
    """The names as one HTTP header value. Names are client-chosen JSON keys: one with a comma, a space,
    a control character (CR LF would split the header) or any non-ASCII character (headers are
    Latin-1 on the wire) is sent JSON-quoted with \\u escapes, so the value is always valid."""
    return separator.join(n if _HEADER_SAFE_NAME.fullmatch(n) else json.dumps(n) for n in names)


def reject_if_strict(ignored: list[str], *, strict: bool) -> None:
    if strict and ignored:
        names = ", ".join(ignored)
        raise UnsupportedParameter(
            f"This model does not support these parameters: {names}. "
            "(The gateway is in strict mode; without it they would be ignored.)",
            param=ignored[0],
        )
