"""Helpers for the Realtime API tests: scripted speech at 24 kHz, an event collector, schema checks."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import jsonschema

from stackflow_openai.audio import PcmConverter
from stackflow_openai.emulator.engines.scripted import render_speech

_SCHEMAS = json.loads(
    (Path(__file__).resolve().parents[2] / "shared/openai/openai-responses-realtime.json").read_text()
)
_SERVER_EVENT = jsonschema.Draft202012Validator(
    {"$ref": "#/$defs/RealtimeServerEvent", "$defs": _SCHEMAS["$defs"]}
)

CHAT = "qwen2.5-0.5B-p256-ax630c"
PIPELINE = {
    "chat_model": CHAT,
    "transcription_model": "whisper-tiny",
    "speech_model": "melotts-en-us",
}


def speech_24k(text: str) -> bytes:
    """The scripted engine's 'speech' for `text` (tones per character), as pcm16 at 24 kHz."""
    converter = PcmConverter(16_000, 24_000)
    return converter.feed(render_speech(text)) + converter.finish()


def silence_24k(seconds: float) -> bytes:
    return bytes(int(seconds * 24000) * 2)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


def _by_type() -> dict[str, jsonschema.Draft202012Validator]:
    validators = {}
    for name, schema in _SCHEMAS["$defs"].items():
        kinds = schema.get("properties", {}).get("type", {}).get("enum", [])
        if name.startswith("RealtimeServerEvent") and len(kinds) == 1:
            ref = {"$ref": f"#/$defs/{name}", "$defs": _SCHEMAS["$defs"]}
            validators[kinds[0]] = jsonschema.Draft202012Validator(ref)
    return validators


_EVENTS = _by_type()


def check_event(event: dict[str, Any]) -> None:
    """Every server event must be valid against OpenAI's schema for its type (and RealtimeServerEvent)."""
    validator = _EVENTS.get(event["type"])
    assert validator is not None, f"{event['type']} is not a Realtime server event"
    errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
    detail = [(e.message[:300], list(e.path)) for e in errors[:3]]
    assert not errors, f"{event['type']}: {detail}"
    assert _SERVER_EVENT.is_valid(event), event["type"]


async def recv(connection: Any, wait: float = 20.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(connection.recv_bytes(), wait)
    event: dict[str, Any] = json.loads(raw)
    check_event(event)
    return event


async def until(connection: Any, kind: str, seen: list[dict[str, Any]], wait: float = 30.0) -> dict[str, Any]:
    """Read events (appended to `seen`) until one of type `kind` arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        event = await recv(connection, max(0.1, deadline - loop.time()))
        seen.append(event)
        if event["type"] == kind:
            return event


def assert_in_order(kinds: list[str], expected: list[str]) -> None:
    """`expected` occurs in `kinds` as a subsequence (other events may come between)."""
    position = 0
    for kind in kinds:
        if position < len(expected) and kind == expected[position]:
            position += 1
    assert position == len(expected), f"missing {expected[position:]} in order; got {kinds}"
