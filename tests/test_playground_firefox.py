"""The playground in headless Firefox (Debian's firefox-esr over WebDriver BiDi): chat, speech and
transcription round trips on the emulator, at desktop and phone width, with no request to a non-local host
and no console error. Chromium covers the rest of the page (tests/test_playground.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from audio_fakes import to_s16, tone
from e2e_harness import Harness
from firefox import FirefoxPage, firefox_page
from stackflow_openai.emulator import ScriptedEngine, Timing


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness(engine=ScriptedEngine(timing=Timing(tokens_per_second=50.0))).start()
    yield h
    h.stop()


def _url(h: Harness) -> str:
    return h.base_url.removesuffix("/v1") + "/"


async def _models_loaded(page: FirefoxPage) -> None:
    await page.wait_for("document.querySelectorAll('#chat-model option').length > 0")
    await page.wait_for("document.querySelectorAll('#speech-voice option').length > 0")


def _wav(seconds: float) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(8000) + to_s16(tone(seconds, 440.0)) + bytes(8000))
    return out.getvalue()


@pytest.mark.parametrize("width", [1280, 390])  # a desktop, and a phone's screen
async def test_chat_speech_and_transcription_in_firefox(harness: Harness, width: int) -> None:
    async with firefox_page(_url(harness), width=width) as page:
        await _models_loaded(page)
        await page.evaluate("(() => { document.getElementById('tab-chat').click(); return true; })()")
        await page.evaluate(
            "(() => { const m = document.getElementById('chat-message');"
            " m.value = 'What is the capital of France?'; document.getElementById('chat-send').click();"
            " return true; })()"
        )
        reply = await page.wait_for(
            "[...document.querySelectorAll('[data-role=assistant]')].map(e => e.textContent).join('')"
            ".includes('You said') && document.querySelector('#chat-stop').disabled"
            " && document.querySelector('[data-role=assistant]').textContent"
        )
        assert "You said 6 words" in reply
        # Speech: the mp3 streams into the <audio> element.
        await page.evaluate(
            "(() => { document.getElementById('tab-speech').click();"
            " document.getElementById('speech-speak').click(); return true; })()"
        )
        stats = await page.wait_for(
            "(t => t.includes('KiB') && t)(document.querySelector('[data-role=speech-stats]').textContent)"
        )
        assert "KiB of mp3" in stats
        await page.wait_for("document.querySelector('#speech-audio').readyState >= 1")
        # Transcription of a file (chosen through a DataTransfer: what a file picker sets).
        wav = base64.b64encode(_wav(1.0)).decode()
        await page.evaluate(
            "(() => { document.getElementById('tab-transcription').click();"
            f" const bytes = Uint8Array.from(atob({json.dumps(wav)}), c => c.charCodeAt(0));"
            " const dt = new DataTransfer();"
            " dt.items.add(new File([bytes], 'beep.wav', {type: 'audio/wav'}));"
            " const input = document.getElementById('transcription-file'); input.files = dt.files;"
            " input.dispatchEvent(new Event('change'));"
            " document.getElementById('transcription-go').click(); return true; })()"
        )
        transcript = await page.wait_for(
            "(t => t !== '…' && t)(document.querySelector('[data-role=transcript]').textContent)"
        )
        assert transcript.strip() and transcript != "(nothing heard)"
        # The layout fits the screen: no horizontal scrolling at phone width.
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        page.check()
    harness.assert_no_leak()
