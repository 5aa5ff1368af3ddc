"""Helpers shared by the local-engine tests (imported by module name, pytest's prepend mode)."""

from __future__ import annotations

import pytest

from stackflow_openai.emulator.engines.local import local_engines_status
from stackflow_openai.stackflow.models import ModelDescriptor

INSTALL_HINT = "local engines not installed: run scripts/install-local-engines.sh"

# Device descriptors as `lsmode` reports them (abridged): the engine maps them to local models.
QWEN_P256 = ModelDescriptor.from_json(
    {
        "mode": "qwen2.5-0.5B-p256-ax630c",
        "type": "llm",
        "compile_flage": "pulsar2 llm_build --kv_cache_len 1023 --prefill_len 256 --chip AX620E",
        "mode_param": {"template_filename_axmodel": "qwen2_p256_l%d_together.axmodel"},
    }
)
VLM = ModelDescriptor.from_json({"mode": "internvl2.5-1B-364-ax630c", "type": "vlm"})
MELOTTS = ModelDescriptor.from_json({"mode": "melotts-en-us", "type": "tts"})
WHISPER = ModelDescriptor.from_json({"mode": "whisper-tiny", "type": "asr"})


def require(kind: str) -> None:
    """Skip the calling module when the `kind` engine or its model is not usable here."""
    state = local_engines_status().get(kind)
    if state is not True:
        pytest.skip(f"local {kind} engine unavailable: {state}", allow_module_level=True)
