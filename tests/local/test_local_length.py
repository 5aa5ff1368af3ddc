"""The emulator's local LLM caps an answer where the emulated device would: at max_token_len counted in
the device model's tokens (Qwen's), not SmolLM2's. Counted in SmolLM2 tokens, a long answer ended tens of
tokens before the gateway's room and was labelled "stop" (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from local_support import require

require("llm")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the harness
from e2e_harness import Harness, write_llm_descriptor  # noqa: E402

pytestmark = pytest.mark.local
MODE = "qwen2.5-0.5B-window-640"
WINDOW = 640
ESSAY = "Write a very long, detailed essay about the history of France, with many sections."


@pytest.fixture(scope="module")
def harness(local_engine, tmp_path_factory):
    catalogue = tmp_path_factory.mktemp("catalogue")
    write_llm_descriptor(catalogue, MODE, WINDOW, prefill_len=128)
    h = Harness(engine=local_engine, emulator_kwargs={"catalogue_dirs": [catalogue]}).start()
    yield h
    h.stop()


def test_a_long_answer_without_max_tokens_ends_at_the_window_labelled_length(harness):
    client = harness.sdk(timeout=120)
    reply = client.chat.completions.create(model=MODE, messages=[{"role": "user", "content": ESSAY}])
    usage = reply.usage
    assert reply.choices[0].finish_reason == "length"
    # The gateway's Qwen count of prompt + answer is the device's window, less the held group at most.
    assert WINDOW - 4 <= usage.prompt_tokens + usage.completion_tokens <= WINDOW
