"""/v1/models on the emulator: every alias is listed as a model, and every entry says what it is for."""

from __future__ import annotations

import httpx
import pytest

from e2e_harness import Harness
from stackflow_openai.config import Settings


@pytest.fixture(scope="module")
def harness():
    settings = Settings(aliases={"house-model": "qwen2.5-1.5B-ax630c"})
    h = Harness(settings=settings).start()
    yield h
    h.stop()


def listed(h: Harness) -> dict[str, dict]:
    body = httpx.get(f"{h.base_url}/models", timeout=10).json()
    return {m["id"]: m for m in body["data"]}


def test_aliases_are_listed_as_models_naming_their_target(harness):
    models = listed(harness)
    for alias, target in [
        ("gpt-4o-mini", "qwen2.5-0.5B-p256-ax630c"),
        ("tts-1", "melotts-en-us"),
        ("whisper-1", "whisper-base"),
        ("house-model", "qwen2.5-1.5B-ax630c"),
    ]:
        assert models[alias]["stackflow"]["alias_of"] == target, alias
        assert models[alias]["stackflow"]["kind"] == models[target]["stackflow"]["kind"]
        assert models[target]["stackflow"]["alias_of"] is None


def test_each_entry_says_its_kind_and_device(harness):
    models = listed(harness)
    kinds = {i: m["stackflow"]["kind"] for i, m in models.items() if m["stackflow"]["alias_of"] is None}
    assert kinds["qwen2.5-0.5B-p256-ax630c"] == "chat"
    assert kinds["internvl2.5-1B-364-ax630c"] == "vision"
    assert kinds["melotts-en-us"] == "speech"
    assert kinds["whisper-tiny"] == "transcription"
    assert set(kinds.values()) == {"chat", "vision", "speech", "transcription"}
    assert all(m["stackflow"]["device"] == "emu" for m in models.values())
    assert all(m["stackflow"]["devices"] == ["emu"] for m in models.values())


def test_an_alias_is_retrieved_as_itself(harness):
    model = httpx.get(f"{harness.base_url}/models/tts-1", timeout=10).json()
    assert model["id"] == "tts-1"
    assert model["stackflow"] == {
        "kind": "speech",
        "device": "emu",
        "devices": ["emu"],
        "alias_of": "melotts-en-us",
    }


class _Ears:
    """A transcription backend that cannot translate by itself (as the device's units)."""

    can_translate = False
    window_seconds = 30.0


def test_the_translating_chat_model_is_a_text_model_on_the_asr_models_device():
    from dataclasses import replace

    from fakes import QWEN_P256, FakeChatBackend
    from stackflow_openai.backends.base import ModelEntry
    from stackflow_openai.backends.entries import _choose_translation_models

    vision = FakeChatBackend(replace(QWEN_P256, vision=True))
    entries = {
        "vlm-a": ModelEntry(id="vlm-a", kind="chat", chat=vision, devices=("a",)),
        "llm-b": ModelEntry(id="llm-b", kind="chat", chat=FakeChatBackend(), devices=("b",)),
        "llm-a": ModelEntry(id="llm-a", kind="chat", chat=FakeChatBackend(), devices=("a",)),
        "ears-a": ModelEntry(id="ears-a", kind="transcription", transcription=_Ears(), devices=("a",)),  # type: ignore[arg-type]
        "ears-c": ModelEntry(id="ears-c", kind="transcription", transcription=_Ears(), devices=("c",)),  # type: ignore[arg-type]
        "ears-set": ModelEntry(
            id="ears-set",
            kind="transcription",
            transcription=_Ears(),  # type: ignore[arg-type]
            devices=("a",),
            extra={"translation_chat_model": "llm-b"},
        ),
    }
    _choose_translation_models(entries)
    assert entries["ears-a"].extra["translation_chat_model"] == "llm-a"  # same device, text before vision
    assert "translation_chat_model" not in entries["ears-c"].extra  # no chat model on its device
    assert entries["ears-set"].extra["translation_chat_model"] == "llm-b"  # the config's choice stays
