"""The AI Pyramid's and LLM-8850's speech models with real local models: every kind is heard right.

A board's 48 kHz melotts, Kokoro and CosyVoice2 (piper behind the emulator) are spoken through the gateway
and transcribed back by whisper on the same board: wrong sample rates or lost segments change the words.
"""

from __future__ import annotations

import difflib
import io
import re
import sys
from pathlib import Path

import pytest
from local_support import require

for kind in ("tts", "asr"):
    require(kind)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the harness
from e2e_harness import Harness  # noqa: E402

pytestmark = pytest.mark.local
SENTENCE = "The quick brown fox jumps over the lazy dog. It was a sunny day."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@pytest.mark.parametrize(
    ("board", "speech", "asr"),
    [
        ("ax650", "melotts-en-us-ax650", "whisper-tiny-ax650"),
        ("ax650", "kokoro-ax650", "whisper-tiny-ax650"),
        ("ax650", "CosyVoice2-0.5B-ax650", "whisper-tiny-ax650"),
        ("axcl", "CosyVoice2-0.5B-axcl", "whisper-tiny-axcl"),
    ],
)
def test_board_speech_is_transcribed_back_to_the_same_words(local_engine, board, speech, asr):
    with Harness(engine=local_engine, emulator_kwargs={"board": board}).start().serving() as h:
        client = h.sdk(timeout=120)
        audio = client.audio.speech.create(model=speech, voice="alloy", input=SENTENCE, response_format="wav")
        text = client.audio.transcriptions.create(model=asr, file=("speech.wav", io.BytesIO(audio.content)))
        # piper samples its noise, so whisper tiny now and then mishears one word ("jumped"); audio played
        # at the wrong rate or missing a segment loses far more than that.
        heard = difflib.SequenceMatcher(None, words(text.text), words(SENTENCE)).ratio()
        assert heard >= 0.9, (text.text, heard)
