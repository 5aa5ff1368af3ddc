"""A catalogue entry can point a device model name at the user's own local model file."""

from __future__ import annotations

import asyncio
import json

import pytest
from local_support import QWEN_P256, require

from stackflow_openai.emulator.engines.base import LlmSettings
from stackflow_openai.emulator.engines.local import (
    MODEL_PATH_FIELD,
    LocalEngine,
    LocalEngineUnavailable,
    local_engines_status,
)
from stackflow_openai.stackflow.models import ModelDescriptor

require("llm")
pytestmark = pytest.mark.local


def descriptor(path: str) -> ModelDescriptor:
    raw = dict(QWEN_P256.raw, mode="my-own-llm", **{MODEL_PATH_FIELD: path})
    return ModelDescriptor.from_json(json.loads(json.dumps(raw)))


def test_an_entry_with_its_own_gguf_loads_that_file(local_engine: LocalEngine) -> None:
    gguf = str(local_engines_status()["llm_model"])

    async def answer() -> str:
        session = await local_engine.open_llm(descriptor(gguf), LlmSettings("Be brief.", 256))
        text = "".join(
            [
                p
                async for p in session.generate(
                    "What is the capital of France?", images=[], max_new_tokens=20
                )
            ]
        )
        await session.close()
        return text

    assert "paris" in asyncio.run(answer()).lower()


def test_an_entry_pointing_at_a_missing_file_is_refused_by_name(tmp_path) -> None:
    missing = str(tmp_path / "nope.gguf")
    with pytest.raises(LocalEngineUnavailable, match=r"nope\.gguf"):
        asyncio.run(LocalEngine().open_llm(descriptor(missing), LlmSettings("x", 256)))
