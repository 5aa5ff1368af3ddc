"""The playground at GET /, driven in headless Chromium against the gateway and the emulator (scripted
engine): chat, speech and transcription round trips, with no request to a non-local host and no console
error. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import SecretStr

from browser import chromium, open_page, screenshot
from e2e_harness import Harness
from stackflow_openai.config import Settings
from stackflow_openai.emulator import ScriptedEngine, Timing

WAIT_MS = 30_000
# Paced so that a long answer takes seconds (the Stop test) while a short one takes a fraction of one.
TIMING = Timing(tokens_per_second=20.0)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def harness():
    h = Harness(engine=ScriptedEngine(timing=TIMING)).start()
    yield h
    h.stop()


def page_url(h: Harness) -> str:
    return h.base_url.removesuffix("/v1") + "/"


def models_loaded(page) -> None:
    """Until the page has its model lists (and the speech model's voices) from the gateway."""
    for select in ("#chat-model", "#speech-voice", "#transcription-model"):
        page.locator(f"{select} option").first.wait_for(state="attached", timeout=WAIT_MS)


def test_chat_streams_a_reply_with_its_figures_and_the_device_status(browser, harness):
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        page.get_by_role("tab", name="Chat").click()
        model = page.get_by_label("Model", exact=True)
        options = model.locator("option").all_inner_texts()
        # Chat and vision models only, no aliases: no speech or transcription model in the picker.
        assert "qwen2.5-0.5B-p256-ax630c" in options and "internvl2.5-1B-364-ax630c" in options
        assert not any(o.startswith(("melotts", "whisper", "gpt-", "tts-")) for o in options)
        assert model.input_value() == "qwen2.5-0.5B-p256-ax630c"  # what gpt-4o-mini stands for
        page.get_by_label("Message").fill("What is the capital of France?")
        page.get_by_role("button", name="Send").click()
        reply = page.locator('[data-role="assistant"]').last
        reply.filter(has_text="You said 6 words").wait_for(timeout=WAIT_MS)
        stats = page.locator('[data-role="stats"]').last
        page.wait_for_function("document.querySelector('#chat-stop').disabled", timeout=WAIT_MS)
        assert re.search(r"TTFT \d+\.\d\d s · \d+ tokens · \d+(\.\d)? tokens/s", stats.inner_text())
        # The second turn carries the first: the conversation is kept until cleared.
        page.get_by_label("Message").fill("And of Italy?")
        page.get_by_role("button", name="Send").click()
        page.locator('[data-role="assistant"]').nth(1).filter(has_text="You said").wait_for(timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#chat-stop').disabled", timeout=WAIT_MS)
        assert page.locator('[data-role="user"]').count() == 2
        page.get_by_role("button", name="Refresh").click()
        status = page.locator('[data-role="device-status"]')
        status.filter(has_text="qwen2.5-0.5B-p256-ax630c").wait_for(timeout=WAIT_MS)
        assert re.search(r"memory\s*\d+ MiB of \d+ MiB used", status.inner_text())
        assert re.search(r"queue\s*0 waiting", status.inner_text())
        screenshot(page, "playground-chat")
        page.reload()  # kept across a reload too, until "Clear conversation"
        assert page.locator('[data-role="user"]').count() == 2
        page.get_by_role("button", name="Clear conversation").click()
        assert page.locator('[data-role="user"]').count() == 0
        record.check()
    harness.assert_no_leak()


def test_stop_ends_a_streaming_reply_and_frees_the_unit(browser, harness):
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        page.get_by_label("Message").fill(" ".join(["word"] * 150))  # a ~55-token answer: ~3 s at 20/s
        page.get_by_role("button", name="Send").click()
        reply = page.locator('[data-role="assistant"]').last
        reply.filter(has_text="You said 150 words").wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name="Stop").click()
        stats = page.locator('[data-role="stats"]').last
        stats.filter(has_text="stopped").wait_for(timeout=WAIT_MS)
        assert len(reply.inner_text()) < len("You said 150 words: ") + 48 * 5  # cut before the end
        assert page.get_by_role("button", name="Send").is_enabled()
        record.check()
    harness.assert_no_leak()


def test_vision_models_take_an_image(browser, harness, tmp_path):
    png = tmp_path / "dot.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(png)
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        attach = page.get_by_label("Attach image")
        assert not attach.is_visible()  # a text model takes no image
        page.get_by_label("Model", exact=True).select_option("internvl2.5-1B-364-ax630c")
        attach.set_input_files(str(png))
        page.locator('[data-role="attachments"] img').wait_for(timeout=WAIT_MS)
        page.get_by_label("Message").fill("What colour is this?")
        page.get_by_role("button", name="Send").click()
        reply = page.locator('[data-role="assistant"]').last
        reply.filter(has_text="I see 1 image").wait_for(timeout=WAIT_MS)
        assert page.locator(".conversation li.user img").count() == 1
        record.check()
    harness.assert_no_leak()


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_speech_plays_in_the_audio_element(browser, harness, fmt):
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        page.get_by_role("tab", name="Speech").click()
        page.get_by_label("Text to speak").fill("Hello there. This is the playground speaking.")
        assert page.get_by_role("combobox", name="Voice", exact=True).input_value() == "alloy"
        page.get_by_label("Format").select_option(fmt)
        page.get_by_role("button", name="Speak").click()
        page.locator('[data-role="speech-stats"]').filter(has_text=f"KiB of {fmt}").wait_for(timeout=WAIT_MS)
        audio = page.locator("#speech-audio")
        page.wait_for_function(
            "document.querySelector('#speech-audio').readyState >= 1", timeout=WAIT_MS
        )  # metadata decoded: the browser took the bytes as audio
        duration = audio.evaluate("a => a.duration")
        # MediaSource may report Infinity until endOfStream; either way the audio has length.
        assert duration > 1.0
        streamed = audio.evaluate("a => a.src.startsWith('blob:')")
        assert streamed
        if fmt == "wav":
            screenshot(page, "playground-speech")
        record.check()
    harness.assert_no_leak()


def test_transcription_of_a_file_and_its_translation(browser, harness, tmp_path):
    speech = httpx.post(
        f"{harness.base_url}/audio/speech",
        json={
            "model": "tts-1",
            "voice": "alloy",
            "input": "Good morning to everyone.",
            "response_format": "wav",
        },
        timeout=60,
    )
    expected = httpx.post(
        f"{harness.base_url}/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("a.wav", speech.content)},
        timeout=60,
    ).json()["text"]
    assert expected
    wav = tmp_path / "speech.wav"
    wav.write_bytes(speech.content)
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        page.get_by_role("tab", name="Transcription").click()
        page.get_by_label("Audio file").set_input_files(str(wav))
        page.get_by_role("button", name="Transcribe").click()
        transcript = page.locator('[data-role="transcript"]')
        transcript.filter(has_text=expected).wait_for(timeout=WAIT_MS)
        page.get_by_label("Translate to English").check()
        page.get_by_role("button", name="Transcribe").click()
        stats = page.locator('[data-role="transcription-stats"]')
        stats.filter(has_text="translated by qwen2.5-0.5B-p256-ax630c").wait_for(timeout=WAIT_MS)
        assert transcript.inner_text().startswith("You said")  # the scripted chat model's words
        screenshot(page, "playground-transcription")
        record.check()
    harness.assert_no_leak()


def test_transcription_of_a_microphone_recording(browser, harness):
    with open_page(browser, page_url(harness)) as (page, record):
        models_loaded(page)
        page.get_by_role("tab", name="Transcription").click()
        record_button = page.get_by_role("button", name="Record")
        record_button.click()
        page.wait_for_function(
            "document.querySelector('#transcription-record').getAttribute('aria-pressed') === 'true'",
            timeout=WAIT_MS,
        )
        page.wait_for_timeout(1500)  # Chromium's fake microphone: a beep every second
        record_button.click()
        page.locator('[data-role="recording"]').filter(has_text="recorded").wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name="Transcribe").click()
        stats = page.locator('[data-role="transcription-stats"]')
        stats.filter(has_text="s of audio").wait_for(timeout=WAIT_MS)  # the webm upload was decoded
        assert page.locator('[data-role="error"]').is_hidden()
        record.check()
    harness.assert_no_leak()


def test_sections_at_phone_width(browser, harness):
    with open_page(browser, page_url(harness), viewport={"width": 390, "height": 844}) as (page, record):
        models_loaded(page)
        for name in ("Chat", "Speech", "Transcription"):
            page.get_by_role("tab", name=name).click()
            assert page.get_by_role("tabpanel", name=name).is_visible()
            wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not wide, f"{name}: the page scrolls sideways at phone width"
        page.get_by_role("tab", name="Chat").click()
        page.get_by_label("Message").fill("Hi")
        page.get_by_role("button", name="Send").click()
        page.locator('[data-role="assistant"]').last.filter(has_text="You said").wait_for(timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#chat-stop').disabled", timeout=WAIT_MS)
        screenshot(page, "playground-phone")
        record.check()


def test_api_key_is_asked_for_and_kept(browser):
    settings = Settings()
    settings.auth.api_keys = [SecretStr("sk-play")]
    h = Harness(settings=settings).start()
    try:
        with open_page(browser, page_url(h)) as (page, record):
            # Without the key the page still loads, and says what is wrong.
            page.locator('[data-role="error"]').filter(has_text="API key").wait_for(timeout=WAIT_MS)
            page.get_by_label("API key").fill("sk-play")
            page.get_by_label("API key").press("Tab")  # change event: stored, models reloaded
            page.locator("#chat-model option").first.wait_for(state="attached", timeout=WAIT_MS)
            page.get_by_label("Message").fill("Hello")
            page.get_by_role("button", name="Send").click()
            page.locator('[data-role="assistant"]').last.filter(has_text="You said").wait_for(timeout=WAIT_MS)
            page.reload()
            assert page.get_by_label("API key").input_value() == "sk-play"
            # The only console errors are the browser's own lines for the refused requests (401).
            assert all("401" in line for line in record.console_errors), record.console_errors
            assert record.foreign_requests == []
    finally:
        h.stop()


def test_playground_off():
    settings = Settings()
    settings.playground = False
    h = Harness(settings=settings).start()
    try:
        page = httpx.get(page_url(h), timeout=10)
        assert page.status_code == 404 and page.json()["error"]["code"] == "unknown_url"
        assert httpx.get(page_url(h) + "playground/app.js", timeout=10).status_code == 404
    finally:
        h.stop()
