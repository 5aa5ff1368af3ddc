"""Which engine an emulator started from the command line runs: real local models, or the scripted one."""

from __future__ import annotations

from typing import Literal

from stackflow_openai.emulator.engines.base import Engine
from stackflow_openai.emulator.engines.local import LocalEngine, local_engines_status
from stackflow_openai.emulator.engines.scripted import ScriptedEngine, Timing

__all__ = ["EngineChoice", "choose_engine"]

EngineChoice = Literal["auto", "local", "scripted"]
_INSTALL_HINT = "install them with: bash scripts/install-local-engines.sh"


def choose_engine(choice: EngineChoice = "auto", *, realistic: bool = False) -> tuple[Engine, str]:
    """The engine and one line for the person starting it, saying what runs and why.

    `auto` takes the local engines only when all three (llm, tts, asr) are ready: a half-real device
    (a real LLM next to beeping scripted TTS) would mislead more than it helps.
    """
    if choice == "scripted":
        return _scripted(realistic), "engine: scripted (deterministic test tool, not a model)"
    status = local_engines_status()
    missing = {kind: status[kind] for kind in ("llm", "tts", "asr") if status.get(kind) is not True}
    if not missing:
        models = ", ".join(str(status[f"{kind}_model"]).rsplit("/", 1)[-1] for kind in ("llm", "tts", "asr"))
        return LocalEngine(), f"engine: local CPU models ({models})"
    reasons = "; ".join(f"{kind}: {why}" for kind, why in missing.items())
    if choice == "local":
        raise RuntimeError(f"local engines are not ready ({reasons}); {_INSTALL_HINT}")
    return _scripted(realistic), (
        "engine: scripted test engine (answers are canned, not a model): local engines are not "
        f"installed ({reasons}); {_INSTALL_HINT}"
    )


def _scripted(realistic: bool) -> ScriptedEngine:
    return ScriptedEngine(timing=Timing.realistic() if realistic else Timing())
