"""POST /v1/audio/speech and GET /v1/audio/voices over HTTP, with a fake TTS backend making real tones."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import jsonschema
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError

from audio_fakes import (
    SPEECH_EVENT_SCHEMAS,
    VOICE_TONES,
    FakeRegistry,
    FakeSpeechBackend,
    FakeTranscriptionBackend,
    decode_file,
    dominant_frequency,
    live_server,
    make_app,
    rms,
    sse_events,
    validate_openai,
)
from stackflow_openai.backends.base import BackendBusy, BackendError, ModelEntry

TEXT = "Hello there. This is a test, of the speech endpoint! Does it work?"
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def registry_with(speech: FakeSpeechBackend, *, strict: bool = False) -> FakeRegistry:
    registry = FakeRegistry()
    registry.add(ModelEntry(id="tts-1", kind="speech", speech=speech, strict_params=strict))
    registry.add(ModelEntry(id="whisper-1", kind="transcription", transcription=FakeTranscriptionBackend()))
    return registry


@pytest.fixture
def speech() -> FakeSpeechBackend:
    return FakeSpeechBackend(voices=["alloy", "echo"])


@pytest.fixture
async def client(speech: FakeSpeechBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(registry_with(speech))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as http:
        yield http


def samples_of(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float64) / 32768, 24_000
    return decode_file(data)


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
async def test_every_format_decodes_to_the_spoken_audio(
    client: httpx.AsyncClient, speech: FakeSpeechBackend, fmt: str
) -> None:
    response = await client.post(
        "/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": fmt}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPES[fmt]
    samples, rate = samples_of(fmt, response.content)
    assert rate == (48_000 if fmt == "opus" else 24_000)  # Ogg Opus always decodes at 48 kHz
    assert len(samples) / rate == pytest.approx(speech.expected_seconds(TEXT), abs=0.1)
    assert rms(samples) > 0.2
    assert dominant_frequency(samples, rate) == pytest.approx(VOICE_TONES["alloy"], abs=5)
    assert len(speech.calls) == 1 and speech.closed


async def test_default_format_is_mp3_and_voice_object_form_works(
    client: httpx.AsyncClient, speech: FakeSpeechBackend
) -> None:
    response = await client.post(
        "/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": {"id": "echo"}}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    samples, rate = decode_file(response.content)
    assert dominant_frequency(samples, rate) == pytest.approx(VOICE_TONES["echo"], abs=5)
    assert speech.calls == [("Hi.", "echo")]


async def test_speed_two_halves_duration_and_keeps_pitch(
    client: httpx.AsyncClient, speech: FakeSpeechBackend
) -> None:
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "wav"}
    normal = samples_of("wav", (await client.post("/audio/speech", json=body)).content)[0]
    fast, rate = samples_of("wav", (await client.post("/audio/speech", json={**body, "speed": 2.0})).content)
    assert len(fast) / len(normal) == pytest.approx(0.5, rel=0.1)
    assert dominant_frequency(fast, rate) == pytest.approx(VOICE_TONES["alloy"], abs=5)


async def test_sse_events_carry_the_audio_and_usage(
    client: httpx.AsyncClient, speech: FakeSpeechBackend
) -> None:
    body = {
        "model": "tts-1",
        "input": TEXT,
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "sse",
    }
    response = await client.post("/audio/speech", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    for event in events:
        jsonschema.validate(event, SPEECH_EVENT_SCHEMAS[event["type"]])
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) - 1 >= 4  # one delta per sentence at least
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["input_tokens"] > 0
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) / 2 / 24_000 == pytest.approx(speech.expected_seconds(TEXT), abs=0.05)


def test_first_audio_arrives_before_the_last_sentence_is_synthesized() -> None:
    speech = FakeSpeechBackend(delay=0.25)
    text = "One. Two. Three. Four."
    with live_server(make_app(registry_with(speech))) as base_url, httpx.Client(timeout=10) as http:
        body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "mp3"}
        with http.stream("POST", f"{base_url}/audio/speech", json=body) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            first_chunk = next(chunks)
            first_at = time.monotonic()
            data = first_chunk + b"".join(chunks)
    assert len(speech.sentences_done) == 4
    assert first_at < speech.sentences_done[-1]
    samples, rate = decode_file(data)
    assert len(samples) / rate == pytest.approx(speech.expected_seconds(text), abs=0.1)


def test_client_disconnect_frees_the_backend() -> None:
    speech = FakeSpeechBackend(delay=0.2)
    text = "One. Two. Three. Four. Five. Six. Seven. Eight."
    with live_server(make_app(registry_with(speech))) as base_url, httpx.Client(timeout=10) as http:
        body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}
        with http.stream("POST", f"{base_url}/audio/speech", json=body) as response:
            next(response.iter_raw())
        deadline = time.monotonic() + 5
        while not speech.closed and time.monotonic() < deadline:
            time.sleep(0.02)
    assert speech.closed
    assert len(speech.sentences_done) < 8


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": TEXT, "voice": "nova"}, "voice", "invalid_voice"),
        ({"input": "", "voice": "alloy"}, "input", "invalid_value"),
        ({"input": "   ", "voice": "alloy"}, "input", "invalid_value"),
        ({"input": "x" * 4097, "voice": "alloy"}, "input", "string_above_max_length"),
        ({"input": TEXT, "voice": "alloy", "speed": 4.5}, "speed", "invalid_value"),
        ({"input": TEXT, "voice": "alloy", "speed": 0.2}, "speed", "invalid_value"),
        ({"input": TEXT, "voice": "alloy", "response_format": "ogg"}, "response_format", "invalid_value"),
        ({"input": TEXT, "voice": "alloy", "stream_format": "chunks"}, "stream_format", "invalid_value"),
        ({"input": TEXT}, "voice", "invalid_value"),
        ({"input": TEXT, "voice": "alloy", "model": "whisper-1"}, "model", "model_not_supported"),
    ],
)
async def test_bad_requests_are_openai_400s(
    client: httpx.AsyncClient, speech: FakeSpeechBackend, body: dict[str, object], param: str, code: str
) -> None:
    response = await client.post("/audio/speech", json={"model": "tts-1", **body})
    assert response.status_code == 400, response.text
    error = response.json()
    validate_openai(error, "ErrorResponse")
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)
    assert error["error"]["type"] == "invalid_request_error"
    if code == "invalid_voice":
        assert "alloy" in error["error"]["message"] and "echo" in error["error"]["message"]
    assert speech.calls == []


async def test_4096_characters_are_accepted(client: httpx.AsyncClient) -> None:
    body = {"model": "tts-1", "input": "a" * 4095 + ".", "voice": "alloy", "response_format": "pcm"}
    response = await client.post("/audio/speech", json=body)
    assert response.status_code == 200


async def test_unknown_model_is_404_and_bad_json_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/audio/speech", json={"model": "nope", "input": "Hi.", "voice": "alloy"})
    assert response.status_code == 404
    validate_openai(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "model_not_found"
    response = await client.post(
        "/audio/speech", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_instructions_are_reported_as_ignored(client: httpx.AsyncClient) -> None:
    body = {
        "model": "tts-1",
        "input": "Hi.",
        "voice": "alloy",
        "instructions": "Whisper it.",
        "colour": "blue",
    }
    response = await client.post("/audio/speech", json=body)
    assert response.status_code == 200
    assert response.headers["x-ignored-params"] == "instructions, colour"


async def test_strict_model_refuses_instructions(speech: FakeSpeechBackend) -> None:
    app = make_app(registry_with(speech, strict=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t/v1") as http:
        body = {"model": "tts-1", "input": "Hi.", "voice": "alloy", "instructions": "Whisper it."}
        response = await http.post("/audio/speech", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "instructions"
    assert speech.calls == []


async def test_busy_device_is_503_with_retry_after(
    client: httpx.AsyncClient, speech: FakeSpeechBackend
) -> None:
    async def busy(text: str, *, voice: str) -> AsyncIterator[bytes]:
        raise BackendBusy("all TTS units are busy", retry_after=2.5)
        yield b""

    speech.synthesize = busy  # type: ignore[method-assign]
    response = await client.post("/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "alloy"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "server_busy"


async def test_voices_listing(client: httpx.AsyncClient) -> None:
    response = await client.get("/audio/voices", params={"model": "tts-1"})
    assert response.status_code == 200
    assert response.json()["voices"] == [
        {"id": "alloy", "name": "alloy", "model": "tts-1"},
        {"id": "echo", "name": "echo", "model": "tts-1"},
    ]
    everything = (await client.get("/audio/voices")).json()["voices"]
    assert [v["id"] for v in everything] == ["alloy", "echo"]
    missing = await client.get("/audio/voices", params={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    wrong = await client.get("/audio/voices", params={"model": "whisper-1"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"


async def test_official_sdk_speech(speech: FakeSpeechBackend) -> None:
    app = make_app(registry_with(speech))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with AsyncOpenAI(api_key="x", base_url="http://test/v1", http_client=http) as sdk:
        audio = await sdk.audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="flac"
        )
        samples, rate = decode_file(audio.content)
        assert rate == 24_000
        assert len(samples) / rate == pytest.approx(speech.expected_seconds(TEXT), abs=0.1)
        async with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="echo", input="Streaming works.", response_format="opus"
        ) as streamed:
            data = b"".join([chunk async for chunk in streamed.iter_bytes()])
        samples, rate = decode_file(data)
        assert dominant_frequency(samples, rate) == pytest.approx(VOICE_TONES["echo"], abs=5)
        with pytest.raises(BadRequestError) as info:
            await sdk.audio.speech.create(model="tts-1", voice="ash", input="Hi.")
        assert info.value.code == "invalid_voice"


async def test_sse_failure_mid_stream_is_an_error_event(
    client: httpx.AsyncClient, speech: FakeSpeechBackend
) -> None:
    async def fails_later(text: str, *, voice: str) -> AsyncIterator[bytes]:
        yield b"\x00\x10" * 16_000
        raise BackendError("the TTS unit stopped answering", code="device_timeout")

    speech.synthesize = fails_later  # type: ignore[method-assign]
    body = {
        "model": "tts-1",
        "input": "Hi. There.",
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "sse",
    }
    response = await client.post("/audio/speech", json=body)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0]["type"] == "speech.audio.delta"
    validate_openai(events[-1], "ErrorResponse")
    assert events[-1]["error"]["code"] == "device_timeout"
