"""Engines compute for the emulated units; the units own the protocol. See `base` for the Protocol.

`ScriptedEngine` is the deterministic test engine. Real local engines can be added later and
selected per catalogue entry (descriptor field `emulator_engine`, see `Emulator(engines=...)`).
"""

from stackflow_openai.emulator.engines.base import AsrSession, Engine, LlmSession, LlmSettings, TtsSession
from stackflow_openai.emulator.engines.scripted import ScriptedEngine, Timing

__all__ = ["AsrSession", "Engine", "LlmSession", "LlmSettings", "ScriptedEngine", "Timing", "TtsSession"]
