"""The playground's Voice section in headless Chromium: a spoken turn over the Realtime API.

Chromium's fake microphone plays a WAV file of the scripted engine's "speech" (tones the scripted ASR
transcribes into words), so the whole path is real: getUserMedia, the AudioWorklet at 24 kHz, the
WebSocket with the key in a subprotocol, server VAD, transcription, the answer's audio played back."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import pytest
from pydantic import SecretStr

from browser import chromium, open_page, screenshot
from e2e_harness import Harness
from realtime_support import PIPELINE
from stackflow_openai.config import RealtimeSettings, Settings, VoicePipelineSettings
from stackflow_openai.emulator.engines.scripted import render_speech

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voice") / "question.wav"
    pcm = bytes(8000) + render_speech("Hello there, how are you today") + bytes(64000)  # 16 kHz s16le
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def harness():
    settings = Settings(realtime=RealtimeSettings(pipelines={"voice": VoicePipelineSettings(**PIPELINE)}))
    settings.auth.api_keys = [SecretStr("sk-voice")]
    h = Harness(settings).start()
    yield h
    h.stop()


def test_a_spoken_turn_in_the_voice_section(harness: Harness, speech_wav: Path) -> None:
    fake_microphone = f"--use-file-for-fake-audio-capture={speech_wav}%noloop"
    url = harness.base_url.removesuffix("/v1") + "/"
    with chromium((fake_microphone,)) as browser, open_page(browser, url) as (page, record):
        page.get_by_label("API key").fill("sk-voice")
        page.get_by_label("API key").dispatch_event("change")  # kept in localStorage
        page.reload()
        # The browser logs the 401s of the first load, before the key was given: only those.
        assert all("401" in line for line in record.console_errors), record.console_errors
        record.console_errors.clear()
        page.get_by_role("tab", name="Voice").click()
        page.locator("#voice-model option").first.wait_for(state="attached", timeout=WAIT_MS)
        assert page.get_by_label("Voice model").input_value() == PIPELINE["chat_model"]
        page.get_by_role("button", name="Start conversation").click()
        user = page.locator('[data-role="voice-user"]').first
        user.wait_for(timeout=WAIT_MS)
        assert re.search(r"\w{3}", user.inner_text())
        answer = page.locator('[data-role="voice-assistant"]').first
        answer.wait_for(timeout=WAIT_MS)
        page.locator('[data-role="voice-stats"]').filter(has_text="first audio").wait_for(timeout=WAIT_MS)
        page.locator('[data-role="voice-state"]').filter(has_text="listening").wait_for(timeout=WAIT_MS)
        assert answer.inner_text().strip()
        screenshot(page, "playground-voice")
        page.get_by_role("button", name="Stop conversation").click()
        page.locator('[data-role="voice-state"]').filter(has_text="stopped").wait_for(timeout=WAIT_MS)
        record.check()
    harness.assert_no_leak()
