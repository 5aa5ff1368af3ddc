"""A Realtime session's configuration: what `session.update` may change and how `session.*` shows it.

The GA Realtime API's shape (openai.types.realtime): `instructions`, `output_modalities` (["audio"] or
["text"]), `audio.input.format` / `.transcription` / `.turn_detection`, `audio.output.format` / `.voice` /
`.speed`, `tools`, `tool_choice`, `max_output_tokens`. Only pcm16 at 24 kHz is accepted as audio format
(what the SDKs send by default); `semantic_vad` is refused (it needs a model of turn semantics the device
does not have); the rest that OpenAI defines and a device cannot honour (noise reduction, tracing, prompt
references) is accepted and reported as ignored in `session.updated`'s companion log, never refused, so a
client written for OpenAI connects unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigProblem", "SessionConfig"]

_PCM = {"type": "audio/pcm", "rate": 24000}
_VAD_DEFAULTS = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "idle_timeout_ms": None,
}


class ConfigProblem(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SessionConfig:
    model: str
    voice: str
    instructions: str = ""
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    transcription: dict[str, Any] | None = None  # {"model": ..., "language": ...}: send transcript events
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(_VAD_DEFAULTS))
    speed: float = 1.0
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    max_output_tokens: int | None = None  # None: "inf", the model's own limit

    def updated(self, session: Any) -> SessionConfig:
        """A copy with a `session.update`'s `session` object applied; raises ConfigProblem naming the field
        (all or nothing: a refused update changes nothing)."""
        if not isinstance(session, dict):
            raise ConfigProblem("session must be an object", "session")
        session_type = session.get("type", "realtime")
        if session_type != "realtime":
            raise ConfigProblem(
                f"Only 'realtime' sessions are served here, not {session_type!r}.", "session.type"
            )
        new = copy.deepcopy(self)
        if "instructions" in session:
            new.instructions = _text(session["instructions"], "session.instructions")
        if "output_modalities" in session:
            new.output_modalities = _modalities(session["output_modalities"], "session.output_modalities")
        if "audio" in session:
            new._update_audio(session["audio"])
        if "tools" in session:
            new.tools = _tools(session["tools"])
        if "tool_choice" in session:
            new.tool_choice = session["tool_choice"]
        if "max_output_tokens" in session:
            new.max_output_tokens = max_output_tokens(
                session["max_output_tokens"], "session.max_output_tokens"
            )
        return new

    def _update_audio(self, audio: Any) -> None:
        if not isinstance(audio, dict):
            raise ConfigProblem("audio must be an object", "session.audio")
        inp, out = audio.get("input") or {}, audio.get("output") or {}
        _check_format(inp.get("format"), "session.audio.input.format")
        _check_format(out.get("format"), "session.audio.output.format")
        if "transcription" in inp:
            value = inp["transcription"]
            if value is not None and not isinstance(value, dict):
                raise ConfigProblem(
                    "transcription must be an object or null", "session.audio.input.transcription"
                )
            self.transcription = value
        if "turn_detection" in inp:
            self.turn_detection = _turn_detection(inp["turn_detection"])
        if "voice" in out:
            voice = out["voice"]
            voice = voice.get("id") if isinstance(voice, dict) else voice
            self.voice = _text(voice, "session.audio.output.voice")
        if "speed" in out:
            speed = out["speed"]
            if not isinstance(speed, int | float) or not 0.25 <= speed <= 1.5:
                raise ConfigProblem("speed must be a number from 0.25 to 1.5", "session.audio.output.speed")
            self.speed = float(speed)

    def to_json(self, session_id: str) -> dict[str, Any]:
        audio_input: dict[str, Any] = {
            "format": dict(_PCM),
            "turn_detection": copy.deepcopy(self.turn_detection),
        }
        if self.transcription is not None:  # OpenAI's schema has no null here: off is absent
            audio_input["transcription"] = copy.deepcopy(self.transcription)
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": copy.deepcopy(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens,
            "audio": {
                "input": audio_input,
                "output": {"format": dict(_PCM), "voice": self.voice, "speed": self.speed},
            },
        }


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ConfigProblem(f"{param} must be a string", param)
    return value


def _modalities(value: Any, param: str) -> list[str]:
    if value not in (["audio"], ["text"]):
        raise ConfigProblem('output_modalities must be ["audio"] or ["text"]', param)
    return list(value)


def max_output_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ConfigProblem('max_output_tokens must be an integer from 1 to 4096, or "inf"', param)
    return value


def _check_format(value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in ("audio/pcm", "pcm16"):
        raise ConfigProblem("Only audio/pcm (pcm16, 24 kHz mono) is supported.", param)
    if value.get("rate", 24000) != 24000:
        raise ConfigProblem("Only a rate of 24000 is supported.", param)


def _turn_detection(value: Any) -> dict[str, Any] | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigProblem("turn_detection must be an object or null", param)
    if value.get("type", "server_vad") != "server_vad":
        raise ConfigProblem("Only server_vad turn detection (or null) is supported.", param + ".type")
    merged = {**_VAD_DEFAULTS, **value}
    checks = {
        "threshold": (0.0, 1.0),
        "prefix_padding_ms": (0, 10_000),
        "silence_duration_ms": (20, 10_000),
    }
    for key, (low, high) in checks.items():
        number = merged[key]
        if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
            raise ConfigProblem(f"{key} must be a number from {low} to {high}", f"{param}.{key}")
    return merged


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigProblem("tools must be a list", "session.tools")
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise ConfigProblem("Only function tools with a name are supported.", f"session.tools[{index}]")
    return [dict(tool) for tool in value]
