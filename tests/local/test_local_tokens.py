"""The conservative estimate against SmolLM2's real tokenizer (the GGUF the local LLM engine runs):
SmolVLM, whose SmolLM2 tokenizer is not available offline, is counted with the estimate on a device, so
it must never under-count SmolLM2 (docs/decisions.md, "Which tokenizer counts which model")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_support import INSTALL_HINT, require

pytest.importorskip("xllamacpp", reason=INSTALL_HINT)
require("llm")

from stackflow_openai.emulator.engines.local import LocalModelPaths  # noqa: E402
from stackflow_openai.emulator.engines.local_llm import LlamaCppModel  # noqa: E402
from stackflow_openai.tokens import EstimateCounter  # noqa: E402
from test_services_tokens import SAMPLES  # noqa: E402

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppModel]:
    path = LocalModelPaths.resolve().llm_gguf
    assert path is not None
    yield LlamaCppModel.load(path, n_threads=1, slots=1, slot_context=512)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_estimate_never_under_counts_smollm2(name: str, smollm2: LlamaCppModel) -> None:
    text = SAMPLES[name]
    tokens = smollm2._post("/tokenize", {"content": text, "add_special": False})["tokens"]
    assert EstimateCounter().count(text) >= len(tokens), name
