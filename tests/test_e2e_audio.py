"""End to end audio: openai SDK → gateway → device backends → emulator's melotts/tts/whisper/asr units."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import openai
import pytest

from audio_fakes import decode_file, encode_file, rms
from e2e_harness import Harness
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator import ScriptedEngine, Timing
from stackflow_openai.emulator.catalogue import BUILTIN_CATALOGUE_DIR
from stackflow_openai.emulator.engines.scripted import ScriptedAsrSession
from stackflow_openai.stackflow.models import ModelDescriptor

ASR_RATE = 16000


@pytest.fixture
def harness():
    h = Harness().start()
    h.call(lambda: setattr(h.registry.get("whisper-tiny").transcription, "result_timeout", 1.0))
    with h.serving():
        yield h


def speech_like(seconds: float, *, pauses_every: float = 3.0) -> np.ndarray:
    """Tones with short pauses, like sentences: something ASR hears and window splitting can cut."""
    t = np.arange(int(seconds * ASR_RATE)) / ASR_RATE
    wave = 0.3 * np.sin(2 * np.pi * (220 + 80 * np.sin(t)) * t)
    wave[(t % pauses_every) > pauses_every - 0.6] = 0.0
    return wave


@pytest.mark.parametrize("model", ["melotts-en-us", "single-speaker-english-fast"])
@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
def test_speech_from_the_device_units(harness, model, fmt):
    text = "Hello there. This is the gateway speaking, one sentence at a time!"
    audio = harness.sdk(timeout=60).audio.speech.create(
        model=model, voice="alloy", input=text, response_format=fmt
    )
    samples, rate = decode_file(audio.content)
    assert rate == 24000
    assert len(samples) / rate > 1.0  # the scripted engine gives ~0.05 s per character
    assert rms(samples) > 0.01


def test_speech_streams_before_the_last_sentence_is_synthesized():
    with Harness(timing=Timing(synthesis_seconds_per_char=0.02)).start().serving() as h:
        text = "First sentence here. " + "Then a much longer second sentence that takes a while to say. " * 3
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{h.base_url}/audio/speech",
            timeout=30,
            json={"model": "melotts-en-us", "voice": "alloy", "input": text, "response_format": "pcm"},
        ) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()
            next(chunks)
            first = time.monotonic() - started
            for _ in chunks:
                pass
            total = time.monotonic() - started
        assert first < total / 2, (first, total)


def test_tts_1_alias_and_voices(harness):
    assert harness.call(lambda: harness.registry.get("whisper-1").id).startswith("whisper-")
    assert harness.call(lambda: harness.registry.get("tts-1").id) == "melotts-en-us"
    c = harness.sdk(timeout=60)
    audio = c.audio.speech.create(model="tts-1", voice="nova", input="Hi.", response_format="pcm")
    assert len(audio.content) > 1000
    voices = httpx.get(
        f"{harness.base_url}/audio/voices", params={"model": "melotts-en-us"}, timeout=10
    ).json()
    assert {"alloy", "marin", "cedar"} <= {v["id"] for v in voices["voices"]}  # OpenAI's newest too
    marin = c.audio.speech.create(model="tts-1", voice="marin", input="Hi.", response_format="pcm")
    assert len(marin.content) > 1000
    with pytest.raises(openai.BadRequestError) as err:
        c.audio.speech.create(model="melotts-en-us", voice="nobody", input="Hi.")
    assert "alloy" in err.value.message


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "webm", "m4a"])
def test_transcription_on_whisper(harness, fmt):
    data = encode_file(fmt, speech_like(4.0), ASR_RATE, stereo=True)
    name = {"ogg": "a.ogg", "m4a": "a.m4a"}.get(fmt, f"a.{fmt}")
    text = harness.sdk(timeout=60).audio.transcriptions.create(
        model="whisper-1", file=(name, io.BytesIO(data))
    )
    assert text.text.strip() and not text.text.endswith(".")  # the device's trailing '.' is removed


def test_transcription_formats_and_long_audio_windows(harness):
    data = encode_file("wav", speech_like(75.0), ASR_RATE, stereo=False)
    c = harness.sdk(timeout=60)
    verbose = c.audio.transcriptions.create(
        model="whisper-tiny", file=("long.wav", io.BytesIO(data)), response_format="verbose_json"
    )
    starts = [s.start for s in verbose.segments]
    ends = [s.end for s in verbose.segments]
    assert len(verbose.segments) >= 3 and starts == sorted(starts)
    assert all(e - s <= 30 for s, e in zip(starts, ends, strict=True))
    assert abs(verbose.duration - 75.0) < 0.5
    srt = c.audio.transcriptions.create(
        model="whisper-tiny", file=("long.wav", io.BytesIO(data)), response_format="srt"
    )
    assert "00:00:00,000 --> " in srt and srt.count("-->") == len(verbose.segments)


def test_silence_in_a_non_english_language_is_an_empty_text_after_a_bounded_wait(harness):
    data = encode_file("wav", np.zeros(ASR_RATE * 2), ASR_RATE, stereo=False)
    started = time.monotonic()
    text = harness.sdk(timeout=60).audio.transcriptions.create(
        model="whisper-tiny", file=("s.wav", io.BytesIO(data)), language="de"
    )
    assert text.text == "" and time.monotonic() - started < 10


def test_transcription_on_the_sherpa_asr_unit(harness):
    data = encode_file("wav", speech_like(3.0), ASR_RATE, stereo=False)
    text = harness.sdk(timeout=60).audio.transcriptions.create(
        model="sherpa-ncnn-streaming-zipformer-20M-2023-02-17", file=("a.wav", io.BytesIO(data))
    )
    assert text.text.strip()


def test_translation_without_configuration_uses_a_chat_model_on_the_same_device(harness):
    data = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)
    response = harness.sdk(timeout=60).audio.translations.with_raw_response.create(
        model="whisper-1", file=("a.wav", io.BytesIO(data))
    )
    # The first text-only chat model of the device (what gpt-4o-mini stands for), named in a header.
    assert response.headers["x-translation-model"] == "qwen2.5-0.5B-p256-ax630c"
    assert response.parse().text.startswith("You said")  # the scripted LLM's answer about the transcript


def test_translation_refused_when_the_automatic_choice_is_off():
    settings = Settings()
    settings.discovery.auto_translation_model = False
    h = Harness(settings=settings).start()
    try:
        data = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)
        with pytest.raises(openai.BadRequestError) as refused:
            h.sdk(timeout=60).audio.translations.create(
                model="whisper-tiny", file=("a.wav", io.BytesIO(data))
            )
        assert refused.value.code == "translation_not_supported"
        transcribed = h.sdk(timeout=60).audio.transcriptions.with_raw_response.create(
            model="whisper-tiny", file=("a.wav", io.BytesIO(data))
        )
        assert "x-translation-model" not in transcribed.headers
    finally:
        h.stop()


def test_translation_through_a_configured_chat_model():
    settings = Settings(
        models={
            "whisper-translate": ModelSettings(
                type="transcription",
                device_model="whisper-tiny",
                translation_chat_model="qwen2.5-1.5B-ax630c",  # not the automatic choice
            )
        }
    )
    with Harness(settings=settings).start().serving() as h:
        data = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)
        response = h.sdk(timeout=60).audio.translations.with_raw_response.create(
            model="whisper-translate", file=("a.wav", io.BytesIO(data))
        )
        # The scripted LLM answers "You said N words: ..." about the transcript it was given.
        assert response.parse().text.startswith("You said")
        assert response.headers["x-translation-model"] == "qwen2.5-1.5B-ax630c"


def test_the_transcription_language_comes_from_the_request_the_config_or_english():
    settings = Settings(
        models={"ears-ja": ModelSettings(type="transcription", device_model="whisper-tiny", language="ja")}
    )
    with Harness(settings=settings).start().serving() as h:
        data = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)

        def verbose(model: str, **extra: str) -> dict:
            reply = httpx.post(
                f"{h.base_url}/audio/transcriptions",
                data={"model": model, "response_format": "verbose_json", **extra},
                files={"file": ("a.wav", data)},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
            return reply.json()

        # The scripted whisper transcribes in the language its setup names: the text shows which one.
        english = verbose("whisper-tiny")
        assert english["language"] == "english" and english["text"].isascii()
        japanese = verbose("ears-ja")
        assert japanese["language"] == "japanese" and not japanese["text"].isascii()
        chinese = verbose("ears-ja", language="zh")  # the request wins over the config
        assert chinese["language"] == "chinese" and chinese["text"] != japanese["text"]


# ------------------------------------------------------------------ device quirks the gateway must absorb
ASR_MODEL = "sherpa-ncnn-streaming-zipformer-20M-2023-02-17"


def quick_asr(h: Harness, model: str = ASR_MODEL) -> None:
    """The scripted unit answers at once: judge "nothing heard" after 0.5 s + 0.1 s per second of audio,
    and let any other wait fail after 2 s instead of 20."""

    def tune() -> None:
        backend = h.registry.get(model).transcription
        backend.asr_grace, backend.asr_seconds_per_second, backend.result_timeout = 0.5, 0.1, 2.0

    h.call(tune)


def asr_instances(h: Harness) -> list[str]:
    return [w for w in h.pool_work_ids() if w.startswith("asr.")]


def test_silence_on_the_sherpa_asr_unit_is_an_empty_text_and_the_instance_is_not_reused():
    h = Harness(emulator_kwargs={"units": "main"}).start()  # asr 1.8: no message at all for silence
    try:
        quick_asr(h)
        c = h.sdk(timeout=60)
        silent = encode_file("wav", np.zeros(ASR_RATE * 2), ASR_RATE, stereo=False)
        # The unit sends no message at all for an empty result: that silence is the answer.
        assert c.audio.transcriptions.create(model=ASR_MODEL, file=("s.wav", io.BytesIO(silent))).text == ""
        # Its recognizer may keep state when no endpoint was reached, so the instance is exited...
        h.assert_no_leak()
        assert asr_instances(h) == []
        # ...and the next request gets a fresh one that hears its own audio.
        speech = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)
        assert c.audio.transcriptions.create(model=ASR_MODEL, file=("a.wav", io.BytesIO(speech))).text.strip()
    finally:
        h.stop()


def test_asr_without_an_endpoint_returns_its_partial_and_nothing_carries_over(tmp_path):
    # A model whose endpoint rules never fire: the unit sends partials only and keeps the utterance
    # open, so whatever the next inference on that instance hears is appended to it (main_asr).
    descriptor = json.loads(
        (BUILTIN_CATALOGUE_DIR / f"mode_{ASR_MODEL}.json").read_text(encoding="utf-8"), object_pairs_hook=dict
    )
    descriptor["mode"] = "sherpa-ncnn-streaming-zipformer-no-endpoint"
    params = descriptor["mode_param"]
    params["endpoint_config.rule1.min_trailing_silence"] = 600
    params["endpoint_config.rule2.min_trailing_silence"] = 600
    params["endpoint_config.rule3.min_utterance_length"] = 600
    (tmp_path / "mode_sherpa-ncnn-streaming-zipformer-no-endpoint.json").write_text(json.dumps(descriptor))
    with Harness(emulator_kwargs={"catalogue_dirs": [tmp_path]}).start().serving() as h:
        model = descriptor["mode"]
        quick_asr(h, model)
        c = h.sdk(timeout=60)

        def transcribe(seconds: float, pause: float) -> str:
            data = encode_file("wav", speech_like(seconds, pauses_every=pause), ASR_RATE, stereo=False)
            return c.audio.transcriptions.create(model=model, file=("a.wav", io.BytesIO(data))).text

        first = transcribe(3.0, 1.5)
        assert first.strip() and first == first.lower()  # the partial: lowercased, no final "."
        second = transcribe(2.0, 1.0)
        assert second.strip() and second == transcribe(2.0, 1.0)  # only its own audio, every time
        assert first not in second


def pcm_speech(h: Harness, model: str, text: str) -> bytes:
    reply = httpx.post(
        f"{h.base_url}/audio/speech",
        json={"model": model, "voice": "alloy", "input": text, "response_format": "pcm"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.content


@pytest.mark.parametrize("text", ["Hello. ", "One.\nTwo.\n", "Hi.. There,\t"])
def test_tts_trailing_blanks_do_not_leak_audio_into_the_next_request(text):
    # Slow synthesis: a segment the gateway did not wait for arrives after the next request started.
    with Harness(timing=Timing(synthesis_seconds_per_char=0.15)).start().serving() as h:
        model = "single-speaker-english-fast"
        first = pcm_speech(h, model, text)
        following = pcm_speech(h, model, "Hi.")  # same instance, right away
        assert rms(np.frombuffer(first, "<i2") / 32768) > 0.01
        assert following == pcm_speech(h, model, "Hi.")  # its own audio, nothing left over
        assert rms(np.frombuffer(following, "<i2") / 32768) > 0.01


@pytest.mark.parametrize("model", ["melotts-en-us", "single-speaker-english-fast"])
def test_trailing_blanks_add_no_sound(harness, model):
    assert pcm_speech(harness, model, "Hello there. \n ") == pcm_speech(harness, model, "Hello there.")


@pytest.mark.parametrize("model", ["melotts-en-us", "single-speaker-english-fast"])
def test_the_word_none_is_spoken(harness, model):
    # The units drop an input of exactly "None" without a reply.
    harness.call(lambda: setattr(harness.registry.get(model).speech, "idle_timeout", 2.0))
    assert rms(np.frombuffer(pcm_speech(harness, model, "None"), "<i2") / 32768) > 0.01


class PunctuatingEngine(ScriptedEngine):
    """Transcripts end with "." like those of sense-voice with inverse text normalisation."""

    async def open_asr(self, model: ModelDescriptor) -> ScriptedAsrSession:
        session = await super().open_asr(model)
        plain = session.transcribe

        async def punctuated(pcm: bytes, *, language: str) -> str:
            text = await plain(pcm, language=language)
            return text + "." if text else ""

        session.transcribe = punctuated  # type: ignore[method-assign]
        return session


def test_sense_voice_with_itn_keeps_its_own_punctuation(tmp_path):
    descriptor = {
        "mode": "sense-voice-small-10s-ax650",
        "type": "asr",
        "capabilities": ["English"],
        "input_type": ["sys.pcm", "asr.pcm.base64"],
        "output_type": ["asr.utf-8"],
        "mode_param": {"model_config.sense_voice.use_itn": True},
    }
    (tmp_path / "mode_sense-voice-small-10s-ax650.json").write_text(json.dumps(descriptor))
    with (
        Harness(engine=PunctuatingEngine(), emulator_kwargs={"catalogue_dirs": [tmp_path]})
        .start()
        .serving() as h
    ):
        c = h.sdk(timeout=60)
        speech = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)
        text = c.audio.transcriptions.create(model=descriptor["mode"], file=("a.wav", io.BytesIO(speech)))
        # With ITN the unit appends no "." of its own: the one there is the model's and stays.
        assert text.text.strip() and text.text.endswith(".")
        silent = encode_file("wav", np.zeros(ASR_RATE), ASR_RATE, stereo=False)
        nothing = c.audio.transcriptions.create(model=descriptor["mode"], file=("s.wav", io.BytesIO(silent)))
        assert nothing.text == ""  # this engine always answers, an empty text included


def test_tts_abandoned_between_sentences_does_not_leak_into_the_next_request():
    with Harness(timing=Timing(synthesis_seconds_per_char=0.03)).start().serving() as h:
        model = "single-speaker-english-fast"
        body = {"model": model, "voice": "alloy", "input": "One. Two. Three. Four.", "response_format": "pcm"}
        with httpx.stream("POST", f"{h.base_url}/audio/speech", json=body, timeout=30) as reply:
            next(reply.iter_bytes())  # the first sentence, then the client goes away
        following = pcm_speech(h, model, "Hi.")
        assert following == pcm_speech(h, model, "Hi.")


def test_languages_are_whisper_codes_or_a_400(harness):
    data = encode_file("wav", speech_like(2.0), ASR_RATE, stereo=False)

    def transcribe(language: str) -> httpx.Response:
        return httpx.post(
            f"{harness.base_url}/audio/transcriptions",
            data={"model": "whisper-tiny", "response_format": "verbose_json", "language": language},
            files={"file": ("a.wav", data)},
            timeout=30,
        )

    # A device's whisper decodes any string its table lacks as Chinese: the gateway sends the code.
    english = transcribe("en").json()
    for spelling in ("EN", "en-US", "english"):
        reply = transcribe(spelling).json()
        assert (reply["language"], reply["text"]) == ("english", english["text"]) and english[
            "text"
        ].isascii()
    assert transcribe("zh_CN").json()["language"] == "chinese"
    for bad in ("klingon", "xx"):  # no language code at all; a code whisper's table lacks
        refused = transcribe(bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "language"
        assert refused.json()["error"]["code"] == "invalid_language"
    # A unit that takes no language (sherpa asr) is not refused a code whisper lacks.
    asr = httpx.post(
        f"{harness.base_url}/audio/transcriptions",
        data={"model": "sherpa-ncnn-streaming-zipformer-20M-2023-02-17", "language": "yue"},
        files={"file": ("a.wav", data)},
        timeout=30,
    )
    assert asr.status_code == 200, asr.text


def test_a_configured_language_whisper_lacks_leaves_the_model_unserved():
    # Served, every request would get a 400 (or, on a device, Chinese): refused at start-up instead.
    settings = Settings(
        models={"ears-yue": ModelSettings(type="transcription", device_model="whisper-tiny", language="yue")}
    )
    h = Harness(settings=settings).start()
    try:
        ids = [m.id for m in h.sdk(timeout=60).models.list().data]
        assert "ears-yue" not in ids and "whisper-tiny" in ids
    finally:
        h.stop()
