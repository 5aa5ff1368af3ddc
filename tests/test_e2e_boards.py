"""Every board and unit generation end to end: OpenAI SDK → gateway → emulator playing that board.

The emulator reproduces each board's catalogue and units (test_emulator_boards.py); these tests check
what a user of that board would see: speech of the right length, every model kind listed correctly,
CosyVoice2's voices, the AXCL memory check and a clear answer when a model does not fit.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from audio_fakes import encode_file
from e2e_harness import Harness
from emulator_helpers import silence_pcm, tone_pcm
from stackflow_openai.backends.stackflow_speech import tts_segments
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator.engines.scripted import render_speech, transcribe_scripted
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.setups import llm_setup

TEXT = "Hello there, this is the gateway. One more sentence follows!"
MELOTTS = {"ax630c": "melotts-en-us", "ax650": "melotts-en-us-ax650", "axcl": "melotts-en-us-axcl"}
OUT_RATE = 24000  # OpenAI's pcm format
ASR_MODEL = "sherpa-ncnn-streaming-zipformer-20M-2023-02-17"


def wav_of(pcm: bytes) -> bytes:
    """16 kHz s16le mono PCM as a wav upload."""
    return encode_file("wav", np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768, 16000, stereo=False)


def expected_seconds(text: str, speed: float = 1.0) -> float:
    """What the scripted engine speaks for `text`, cut into segments as the units cut it, at 16 kHz."""
    return sum(len(render_speech(segment, speed)) for segment in tts_segments(text)) / 2 / 16000


def speech_seconds(h: Harness, model: str, text: str = TEXT, voice: str = "alloy") -> float:
    client = h.sdk(timeout=60)
    audio = client.audio.speech.create(model=model, voice=voice, input=text, response_format="pcm")
    return len(audio.content) / 2 / OUT_RATE


@pytest.fixture
def boards() -> Iterator[dict[str, Harness]]:
    started: dict[str, Harness] = {}
    try:
        for board in ("ax630c", "ax650", "axcl"):
            started[board] = Harness(emulator_kwargs={"board": board}).start()
        yield started
        for h in started.values():
            h.assert_no_leak()
    finally:
        for h in started.values():
            h.stop()


def test_speech_lasts_as_long_on_every_board(boards: dict[str, Harness]) -> None:
    """The AX650/AXCL melotts descriptors say 48 kHz: the gateway asks 16 kHz, so nothing plays 3x slow."""
    seconds = {board: speech_seconds(h, MELOTTS[board]) for board, h in boards.items()}
    expected = expected_seconds(TEXT, speed=1.2)  # the descriptors' spacker_speed
    assert all(abs(s - expected) < 0.02 for s in seconds.values()), (seconds, expected)
    kokoro = speech_seconds(boards["ax650"], "kokoro-ax650")
    assert abs(kokoro - expected_seconds(TEXT)) < 0.02
    for board, model in (("ax650", "CosyVoice2-0.5B-ax650"), ("axcl", "CosyVoice2-0.5B-axcl")):
        cosy = speech_seconds(boards[board], model)
        assert abs(cosy - len(render_speech(TEXT)) / 2 / 16000) < 0.02  # one utterance, 48 kHz by default


def test_listed_models_are_the_boards_served_kinds(boards: dict[str, Harness]) -> None:
    for board, h in boards.items():
        listed = {m["id"] for m in httpx.get(f"{h.base_url}/models").json()["data"]}
        catalogue = {d.mode: d.type for d in h.emulator.catalogue}
        assert {m for m in listed if m in catalogue} == {
            m for m, t in catalogue.items() if t in ("llm", "vlm", "tts", "asr")
        }
        assert not any("kws" in m or m.startswith(("yolo", "silero", "depth")) for m in listed), board
    assert "sherpa-onnx-kws-zipformer-gigaspeech-3.3M-2024-01-01" in {
        d.mode for d in boards["ax630c"].emulator.catalogue
    }


@pytest.mark.parametrize("units", ["dev", "main"])
@pytest.mark.parametrize("stream", [False, True])
def test_summer_tts_full_audio_on_both_generations(units: str, stream: bool) -> None:
    """tts 1.7 sends every segment only in its stream format; 1.6 only in its non-stream format."""
    with Harness(emulator_kwargs={"units": units}).start().serving() as h:
        backend = h.call(lambda: h.registry.get("single-speaker-english-fast").speech)
        voice = backend._voices["alloy"]
        setup, _, _ = h.call(lambda: backend.plan(voice, TEXT))  # driven by the version version2 gave
        assert setup["response_format"] == ("tts.pcm.stream.base64" if units == "dev" else "tts.pcm.base64")
        client = h.sdk(timeout=60)
        for _ in range(2):  # the second request finds nothing left over on the instance
            if stream:
                with client.audio.speech.with_streaming_response.create(
                    model="single-speaker-english-fast", voice="alloy", input=TEXT, response_format="pcm"
                ) as response:
                    pcm = b"".join(response.iter_bytes())
            else:
                pcm = client.audio.speech.create(
                    model="single-speaker-english-fast", voice="alloy", input=TEXT, response_format="pcm"
                ).content
            assert abs(len(pcm) / 2 / OUT_RATE - expected_seconds(TEXT)) < 0.02


def test_tts_of_unknown_version_is_driven_one_segment_at_a_time() -> None:
    """Firmware without sys.version2: the way that works on 1.6 and 1.7 alike."""
    for units in ("dev", "main"):
        h = Harness(emulator_kwargs={"units": units})
        h.thread.start()
        h.call(h.start_emulator)
        h.emulator._sys._do_version2 = None  # type: ignore[attr-defined,assignment]  # answers -3 now
        h.call(h._start)
        try:
            assert h.call(lambda h=h: h.registry.devices[0].client.unit_versions) == {}
            backend = h.call(lambda h=h: h.registry.get("single-speaker-english-fast").speech)
            _, _, driver = backend.plan(backend._voices["alloy"], TEXT)
            assert driver.__name__ == "_one_segment_at_a_time"
            for _ in range(2):
                assert abs(speech_seconds(h, "single-speaker-english-fast") - expected_seconds(TEXT)) < 0.02
            h.assert_no_leak()
        finally:
            h.stop()


def test_melotts_extra_end_message_stays_out_of_the_next_request() -> None:
    with Harness(emulator_kwargs={"units": "dev"}).start().serving() as h:
        text = "One, two and three"  # no closing breakpoint: melotts 1.11 would send two end messages
        for _ in range(3):
            assert abs(speech_seconds(h, "melotts-en-us", text) - expected_seconds(text, 1.2)) < 0.02


def test_cosyvoice2_voices_are_its_prompts() -> None:
    settings = Settings(models={"cosy": ModelSettings(type="speech", voices={
        "default": "CosyVoice2-0.5B-ax650", "nobody": "CosyVoice2-0.5B-ax650@not_installed"})})  # fmt: skip
    with Harness(settings=settings, emulator_kwargs={"board": "ax650"}).start().serving() as h:
        voices = httpx.get(f"{h.base_url}/audio/voices", params={"model": "CosyVoice2-0.5B-ax650"}).json()
        assert "prompt_data" in {v["id"] for v in voices["voices"]}
        assert speech_seconds(h, "CosyVoice2-0.5B-ax650", voice="prompt_data") > 1.0
        assert speech_seconds(h, "cosy", voice="default") > 1.0
        response = httpx.post(
            f"{h.base_url}/audio/speech", json={"model": "cosy", "voice": "nobody", "input": "Hi."}
        )
        assert response.status_code == 503
        assert "CosyVoice2-0.5B-ax650" in response.json()["error"]["message"]


def test_axcl_memory_comes_from_axcl_cmminfo() -> None:
    """CosyVoice2-0.5B-axcl declares cmm_size: checked against the card's memory, not cmminfo's garbage."""
    with Harness(emulator_kwargs={"board": "axcl"}).start().serving() as h:
        client = h.registry.devices[0].client
        info = h.call(client.memory)
        assert h.call(lambda: client.axcl) is True
        assert (info.total, info.used, info.remain) == (7340032, 0, 7340032)
        assert speech_seconds(h, "CosyVoice2-0.5B-axcl") > 1.0
        assert h.call(client.memory).used == 1185772  # the descriptor's cmm_size, loaded
        metrics = httpx.get(h.base_url.removesuffix("/v1") + "/metrics").text
        assert 'stackflow_openai_device_memory_bytes{device="emu",kind="total"} 7.516192768e+09' in metrics


def test_a_model_that_does_not_fit_is_a_clear_503_and_idle_units_make_room() -> None:
    with Harness(emulator_kwargs={"board": "ax650"}).start().serving() as h:
        client = h.sdk(timeout=60)
        messages = [{"role": "user", "content": "hello"}]
        with pytest.raises(openai.InternalServerError) as caught:  # 503
            client.chat.completions.create(model="qwen2.5-7B-Int4-ax650", messages=messages)  # type: ignore[arg-type]
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "model_load_failed"  # nothing else was loaded
        assert "does not fit in the device's 4194304 KiB of memory" in error["message"]
        assert "qwen2.5-7B-Int4-ax650" in error["message"]
        # Still serving; and a -5 caused by an idle unit is cured by unloading it.
        client.chat.completions.create(model="qwen2.5-3B-Int4-ax650", messages=messages)  # type: ignore[arg-type]
        client.chat.completions.create(model="qwen2.5-1.5B-Int4-ax650", messages=messages)  # type: ignore[arg-type]
        live = [i["model"] for i in h.live_instances()]
        assert live == ["qwen2.5-1.5B-Int4-ax650"]  # 3B (3565158 KiB) was evicted to fit 1.5B (1782579)


def test_memory_held_by_another_program_is_device_out_of_memory() -> None:
    h = Harness(emulator_kwargs={"board": "ax650"}).start()
    try:

        async def other_program_loads_3b() -> DeviceClient:
            other = DeviceClient("127.0.0.1", h.emulator.port, timeout=5)
            setup = llm_setup("qwen2.5-3B-Int4-ax650", system_prompt="", max_token_len=1023)
            await other.open_unit("llm", setup)
            return other

        other = h.call(other_program_loads_3b)
        response = httpx.post(f"{h.base_url}/chat/completions", timeout=30, json={
            "model": "qwen2.5-1.5B-Int4-ax650", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "device_out_of_memory"
        assert "629146 KiB of 4194304 KiB free" in error["message"]  # 4194304 - 3565158
        h.call(other.close)
    finally:
        h.stop()


def test_sense_voice_1_10_answers_every_voiced_segment() -> None:
    """asr 1.10 sends each VAD segment, then the joined final: the answer is the final, whole."""
    with Harness(emulator_kwargs={"board": "ax650"}).start().serving() as h:
        first, second = tone_pcm(0.9), tone_pcm(0.9, 550)
        pcm = first + silence_pcm(1.0) + second
        upload = wav_of(pcm)
        client = h.sdk(timeout=60)
        text = client.audio.transcriptions.create(
            model="sense-voice-small-10s-ax650", file=("a.wav", io.BytesIO(upload))
        ).text
        # The upload is decoded and resampled on the way, so the scripted words differ from those of the
        # raw tones; their shape does not: two segments of two words, each segment capitalised.
        words = text.split()
        assert len(words) == 4 and words[0][0].isupper() and words[2][0].isupper(), text
        assert len(transcribe_scripted(first, "en").split()) == 2


def test_silence_on_asr_1_10_is_an_empty_final_and_the_instance_stays() -> None:
    """asr 1.10 (dev) sends its final at the endpoint even when empty: the stream was reset, keep it."""
    h = Harness().start()  # dev units
    try:
        c = h.sdk(timeout=60)
        silent = wav_of(silence_pcm(2.0))
        started = time.monotonic()
        assert c.audio.transcriptions.create(model=ASR_MODEL, file=("s.wav", io.BytesIO(silent))).text == ""
        assert time.monotonic() - started < 3.0  # answered by the final, not by the silence timeout
        kept = asr_instances(h)
        assert len(kept) == 1
        speech = wav_of(tone_pcm(0.9) + tone_pcm(0.9, 550))
        text = c.audio.transcriptions.create(model=ASR_MODEL, file=("a.wav", io.BytesIO(speech))).text
        assert text.strip() and not text.endswith(".")
        assert asr_instances(h) == kept  # reused: no model load for the next request
        h.assert_no_leak()
    finally:
        h.stop()


def asr_instances(h: Harness) -> list[str]:
    return [w for w in h.pool_work_ids() if w.startswith("asr.")]


def test_a_unit_left_at_its_own_rate_is_resampled_not_misplayed() -> None:
    """Without `audio_rate` in the setup the AX650 units speak 48 kHz; the rate is read where the unit
    reads it (the descriptor here) and converted, so the speech still lasts as long."""
    with Harness(emulator_kwargs={"board": "ax650"}).start().serving() as h:
        for model in ("melotts-en-us-ax650", "CosyVoice2-0.5B-ax650"):
            backend = h.call(lambda model=model: h.registry.get(model).speech)
            original = backend.plan

            def without_rate(voice, text, original=original):  # type: ignore[no-untyped-def]
                setup, sent, driver = original(voice, text)
                return {k: v for k, v in setup.items() if k != "audio_rate"}, sent, driver

            backend.plan = without_rate
            speed = 1.2 if model.startswith("melotts") else 1.0
            expected = expected_seconds(TEXT, speed) if speed != 1.0 else len(render_speech(TEXT)) / 2 / 16000
            assert abs(speech_seconds(h, model) - expected) < 0.03, model
