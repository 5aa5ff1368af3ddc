"""The local ASR engine (faster-whisper tiny.en) through the engine Protocol, fed by the local TTS."""

from __future__ import annotations

import re

import pytest
from local_support import INSTALL_HINT, MELOTTS, WHISPER, require

pytest.importorskip("faster_whisper", reason=INSTALL_HINT)
pytest.importorskip("piper", reason=INSTALL_HINT)
np = pytest.importorskip("numpy", reason=INSTALL_HINT)
require("asr")
require("tts")

from stackflow_openai.emulator.engines.local import LocalEngine  # noqa: E402

pytestmark = pytest.mark.local

PANGRAM = "The quick brown fox jumps over the lazy dog"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def test_round_trip_through_tts_and_asr(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, None)
    asr = await local_engine.open_asr(WHISPER)
    pcm = await tts.synthesize(PANGRAM)
    text = await asr.transcribe(pcm, language="en")
    assert words(text) == words(PANGRAM)
    assert text == text.strip()


async def test_silence_is_heard_as_nothing(local_engine: LocalEngine) -> None:
    asr = await local_engine.open_asr(WHISPER)
    assert await asr.transcribe(b"\x00\x00" * 16000, language="en") == ""
    assert await asr.transcribe(b"", language="en") == ""


async def test_other_language_on_an_english_only_model_still_transcribes(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, None)
    asr = await local_engine.open_asr(WHISPER)
    pcm = await tts.synthesize("Good morning everyone.")
    assert words(await asr.transcribe(pcm, language="fr")) == ["good", "morning", "everyone"]
