"""JSON out of a small model's answer: found in fences or prose, and repaired when it is nearly right.

Small models wrap JSON in code fences, put a sentence before it, use single quotes, leave a trailing comma
or stop before the last brace. Strict parsing is tried first (the common case, and never changes
anything); then `json_repair`, a library written for exactly these LLM faults. Repair is only tried on the
text from the first `{` or `[`, so prose around the JSON is never turned into a value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ExtractedJson", "JsonNotFound", "extract_json", "strip_fences"]

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_DECODER = json.JSONDecoder()


class JsonNotFound(ValueError):
    """No JSON value could be read from the text (the message says why)."""


@dataclass(frozen=True, slots=True)
class ExtractedJson:
    value: Any
    repaired: bool  # strict parsing failed and json_repair fixed it
    rest: str  # the text around the value (prose the model added)


def strip_fences(text: str) -> str:
    """The inside of the first ``` fence when the text has one (an unclosed fence runs to the end)."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def extract_json(text: str, *, want: type | None = None) -> ExtractedJson:
    """The first JSON object (or array, when `want` is not dict) in `text`."""
    body = strip_fences(text)
    opener = "{" if want is dict else None
    start = _first_opener(body, opener)
    if start < 0:
        raise JsonNotFound("the answer contains no JSON object" if want is dict else "no JSON in the answer")
    try:
        value, end = _DECODER.raw_decode(body, start)
        return ExtractedJson(value, False, (body[:start] + body[end:]).strip())
    except json.JSONDecodeError as exc:
        strict_error = f"{exc.msg} at character {exc.pos - start}"
    except RecursionError as exc:  # a model that writes "[[[[..." for its whole budget
        raise JsonNotFound("the JSON is nested too deeply") from exc
    value, rest = _repair(body[start:])
    if value is None or (want is not None and not isinstance(value, want)):
        raise JsonNotFound(f"invalid JSON: {strict_error}")
    return ExtractedJson(value, True, (body[:start] + rest).strip())


def _first_opener(text: str, opener: str | None) -> int:
    positions = [p for p in (text.find("{"), -1 if opener else text.find("[")) if p >= 0]
    return min(positions) if positions else -1


def _repair(text: str) -> tuple[Any, str]:
    """json_repair's reading of the JSON at the start of `text`, and the text after it when it can tell."""
    import json_repair  # imported on first need: most answers parse strictly

    closing = text.rfind("}" if text.startswith("{") else "]")
    candidate, after = (text[: closing + 1], text[closing + 1 :]) if closing > 0 else (text, "")
    try:
        value = json_repair.loads(candidate)
    except (ValueError, RecursionError):
        return None, text
    if value in ("", None) or (isinstance(value, dict | list) and not value and len(candidate.strip()) > 2):
        return None, text  # json_repair gives "" or an empty container for text it could not read
    return value, after
