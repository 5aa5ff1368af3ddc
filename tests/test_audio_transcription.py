"""POST /v1/audio/transcriptions and /v1/audio/translations over HTTP, with fake ASR and chat backends."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError

from audio_fakes import (
    FILE_FORMATS,
    FakeChatBackend,
    FakeRegistry,
    FakeSpeechBackend,
    FakeTranscriptionBackend,
    encode_file,
    make_app,
    sse_events,
    to_s16,
    tone,
    tone_file,
    validate_openai,
)
from stackflow_openai.backends.base import ModelEntry


class Setup:
    def __init__(self, *, can_translate: bool = False, chat_model: str | None = None, strict: bool = False):
        self.asr = FakeTranscriptionBackend(can_translate=can_translate)
        self.chat = FakeChatBackend()
        self.registry = FakeRegistry()
        extra = {"translation_chat_model": chat_model} if chat_model else {}
        self.registry.add(
            ModelEntry(
                id="whisper-1",
                kind="transcription",
                transcription=self.asr,
                extra=extra,
                strict_params=strict,
            )
        )
        self.registry.add(ModelEntry(id="qwen", kind="chat", chat=self.chat))
        self.registry.add(ModelEntry(id="tts-1", kind="speech", speech=FakeSpeechBackend()))
        self.app = make_app(self.registry)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test/v1")


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    yield Setup()


async def post(
    setup: Setup, data: bytes, path: str = "transcriptions", name: str = "a.wav", **fields: str | list[str]
) -> httpx.Response:
    async with setup.client() as http:
        return await http.post(
            f"/audio/{path}", files={"file": (name, data)}, data={"model": "whisper-1", **fields}
        )


def parse_times(text: str, decimal: str) -> list[tuple[float, float]]:
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d)"
    pattern = f"{stamp} --> {stamp}"
    spans = []
    for match in re.finditer(pattern, text):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        spans.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return spans


@pytest.mark.parametrize("fmt", list(FILE_FORMATS))
async def test_every_input_format_in_every_response_format(setup: Setup, fmt: str) -> None:
    data = tone_file(fmt, 2.0)
    expected = "heard 2.0 seconds."

    response = await post(setup, data, name=f"speech.{fmt}")
    assert response.status_code == 200, response.text
    validate_openai(response.json(), "CreateTranscriptionResponseJson")
    assert response.json()["text"] == expected
    assert response.json()["usage"]["seconds"] == pytest.approx(2.0, abs=0.05)

    text = await post(setup, data, response_format="text")
    assert text.headers["content-type"].startswith("text/plain") and text.text == expected + "\n"

    verbose = (await post(setup, data, response_format="verbose_json")).json()
    validate_openai(verbose, "CreateTranscriptionResponseVerboseJson")
    assert verbose["task"] == "transcribe" and verbose["duration"] == pytest.approx(2.0, abs=0.05)
    assert [(s["id"], s["start"], s["text"]) for s in verbose["segments"]] == [(0, 0.0, expected)]

    srt = (await post(setup, data, response_format="srt")).text
    assert srt.splitlines()[0] == "1" and expected in srt
    ((start, end),) = parse_times(srt, ",")
    assert start == 0.0 and end == pytest.approx(2.0, abs=0.05)

    vtt = await post(setup, data, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT\n\n")
    ((start, end),) = parse_times(vtt.text, ".")
    assert start == 0.0 and end == pytest.approx(2.0, abs=0.05)
    assert all(w == pytest.approx(2.0, abs=0.05) for w in setup.asr.windows)


async def test_long_audio_is_split_into_windows_with_monotonic_times(setup: Setup) -> None:
    # 75 s of "speech" with short pauses every 9 s: cuts must land in pauses, under 30 s each.
    wave = tone(75.0, 180.0, 16_000)
    for pause in range(9, 75, 9):
        wave[pause * 16_000 : pause * 16_000 + 4_000] = 0.0
    response = await post(
        setup, encode_file("flac", wave, 16_000, stereo=False), response_format="verbose_json"
    )
    assert response.status_code == 200
    verbose = response.json()
    validate_openai(verbose, "CreateTranscriptionResponseVerboseJson")
    segments = verbose["segments"]
    assert len(segments) == len(setup.asr.windows) == 3
    assert all(w <= 28.0 for w in setup.asr.windows)
    assert sum(setup.asr.windows) == pytest.approx(75.0, abs=0.01)
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == pytest.approx(75.0, abs=0.01)
    for before, after in itertools.pairwise(segments):
        assert before["end"] == after["start"]
        assert before["start"] < before["end"]
        # The cut is in a pause (the 0.25 s after each multiple of 9 s).
        assert any(9 * k <= before["end"] <= 9 * k + 0.25 for k in range(1, 9))
    assert [s["id"] for s in segments] == [0, 1, 2]
    assert verbose["text"] == " ".join(s["text"] for s in segments)
    srt_spans = parse_times(
        (await post(setup, encode_file("wav", wave, 16_000), response_format="srt")).text, ","
    )
    assert [a for a, _ in srt_spans] == sorted(a for a, _ in srt_spans) and len(srt_spans) == 3


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "empty_file"), (b"RIFF\x00\x00garbage that is not a wav file" * 20, "invalid_audio_file")],
)
async def test_empty_or_corrupt_upload_is_400(setup: Setup, data: bytes, code: str) -> None:
    response = await post(setup, data)
    assert response.status_code == 400
    validate_openai(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == "file"
    assert response.json()["error"]["code"] == code
    assert setup.asr.windows == []


@pytest.mark.parametrize("size", [26 * 1024 * 1024, 25 * 1024 * 1024 + 1])
async def test_oversized_upload_is_413_in_openai_shape(setup: Setup, size: int) -> None:
    # 26 MB is refused from Content-Length alone; 25 MB + 1 byte only once the file part is read.
    response = await post(setup, bytes(size))
    assert response.status_code == 413
    validate_openai(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "file_too_large"
    assert response.json()["error"]["param"] == "file"


async def test_missing_fields_and_bad_values(setup: Setup) -> None:
    async with setup.client() as http:
        no_file = await http.post(
            "/audio/transcriptions", data={"model": "whisper-1"}, files={"x": ("x", b"1")}
        )
        no_model = await http.post("/audio/transcriptions", files={"file": ("a.wav", tone_file("wav", 0.5))})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    for field, value in [("response_format", "diarized_json"), ("temperature", "7"), ("stream", "maybe")]:
        response = await post(setup, tone_file("wav", 0.5), **{field: value})
        assert response.status_code == 400 and response.json()["error"]["param"] == field
    wrong_kind = await post(setup, tone_file("wav", 0.5), model="tts-1")
    assert wrong_kind.status_code == 400 and wrong_kind.json()["error"]["param"] == "model"


async def test_language_and_prompt_are_passed_temperature_and_words_reported(setup: Setup) -> None:
    response = await post(
        setup,
        tone_file("mp3", 1.0),
        response_format="verbose_json",
        language="de",
        prompt="Fachbegriffe",
        temperature="0.4",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    assert response.status_code == 200
    assert setup.asr.calls == [{"language": "de", "prompt": "Fachbegriffe", "translate": False}]
    assert response.headers["x-ignored-params"] == "temperature, timestamp_granularities"
    assert response.json()["language"] == "german" and "words" not in response.json()
    plain = await post(setup, tone_file("mp3", 1.0), temperature="0", chunking_strategy="auto")
    assert "x-ignored-params" not in plain.headers  # long audio is always chunked: nothing ignored


async def test_strict_model_refuses_word_timestamps() -> None:
    setup = Setup(strict=True)
    response = await post(
        setup, tone_file("wav", 1.0), response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "timestamp_granularities"


async def test_stream_sends_delta_and_done_events(setup: Setup) -> None:
    wave = tone(60.0, 200.0, 16_000)
    response = await post(setup, encode_file("wav", wave, 16_000, stereo=False), stream="true")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"]
    assert events[-1]["text"].startswith("heard 2")


async def test_native_translation(setup: Setup) -> None:
    setup = Setup(can_translate=True)
    response = await post(setup, tone_file("ogg", 1.5), path="translations")
    assert response.status_code == 200
    validate_openai(response.json(), "CreateTranslationResponseJson")
    assert response.json() == {"text": "English for 1.5 seconds."}
    assert setup.asr.calls[0]["translate"] is True
    verbose = (
        await post(setup, tone_file("ogg", 1.5), path="translations", response_format="verbose_json")
    ).json()
    assert verbose["task"] == "translate" and verbose["language"] == "english"
    streamed = await post(setup, tone_file("ogg", 1.5), path="translations", stream="true")
    assert streamed.json()["text"] == "English for 1.5 seconds."
    assert streamed.headers["x-ignored-params"] == "stream"


async def test_translation_through_a_chat_model() -> None:
    setup = Setup(chat_model="qwen")
    response = await post(setup, tone_file("webm", 1.0), path="translations", response_format="srt")
    assert response.status_code == 200
    assert "EN: HEARD 1.0 SECONDS." in response.text
    assert setup.asr.calls[0]["translate"] is False
    assert setup.chat.prompts == ["heard 1.0 seconds."]
    assert setup.chat.settings[0].system_prompt.startswith("Translate the user's text to English")


async def test_translation_refused_without_a_mode(setup: Setup) -> None:
    response = await post(setup, tone_file("wav", 1.0), path="translations")
    assert response.status_code == 400
    validate_openai(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "translation_not_supported"
    assert setup.asr.windows == []


async def test_backend_failure_is_an_openai_error(setup: Setup) -> None:
    setup.asr.fail_at = 0
    response = await post(setup, tone_file("wav", 1.0))
    assert response.status_code == 502
    validate_openai(response.json(), "ErrorResponse")
    streamed = await post(setup, tone_file("wav", 1.0), stream="true")
    assert streamed.status_code == 502  # the first window runs before the 200 is sent


async def test_failure_mid_stream_is_an_error_event(setup: Setup) -> None:
    setup.asr.fail_at = 1
    response = await post(setup, encode_file("wav", tone(40.0, 200.0, 16_000), 16_000), stream="true")
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0]["type"] == "transcript.text.delta"
    validate_openai(events[1], "ErrorResponse")
    assert len(events) == 2


async def test_official_sdk_transcription(setup: Setup) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=setup.app))
    async with AsyncOpenAI(api_key="x", base_url="http://test/v1", http_client=http) as sdk:
        data = tone_file("m4a", 1.0)
        result = await sdk.audio.transcriptions.create(model="whisper-1", file=("clip.m4a", data))
        assert result.text.startswith("heard 1.0")
        verbose = await sdk.audio.transcriptions.create(
            model="whisper-1",
            file=("clip.m4a", data),
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
        assert verbose.segments is not None and verbose.segments[0].end == pytest.approx(1.0, abs=0.06)
        vtt = await sdk.audio.transcriptions.create(
            model="whisper-1", file=("clip.m4a", data), response_format="vtt"
        )
        assert isinstance(vtt, str) and vtt.startswith("WEBVTT")
        stream = await sdk.audio.transcriptions.create(
            model="whisper-1", file=("clip.m4a", data), stream=True
        )
        events = [event async for event in stream]
        assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]
        with pytest.raises(BadRequestError) as info:
            await sdk.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"not audio"))
        assert info.value.code == "invalid_audio_file"


def test_fake_files_are_what_they_claim() -> None:
    # Guards the fixtures: a stereo 44.1 kHz wav really is stereo, so the mono mixdown is exercised.
    data = encode_file("wav", tone(0.1, 440.0, 44_100), 44_100)
    assert int.from_bytes(data[22:24], "little") == 2
    assert np.frombuffer(to_s16(tone(0.1, 440.0)), "<i2").size == 1600
