"""Fake speech/transcription/chat backends and audio helpers for the audio tests.

The fakes produce and consume real audio (sine tones made with numpy, files encoded and decoded with
PyAV) so the tests check what a user would hear or read, not mocks of the codec layer.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import jsonschema
import numpy as np
import uvicorn
from fastapi import FastAPI

from stackflow_openai.app import create_app
from stackflow_openai.backends.base import BackendError, ChatModelInfo, ModelEntry, UnitSettings
from stackflow_openai.routers.audio import router

DEVICE_RATE = 16_000
VOICE_TONES = {"alloy": 220.0, "echo": 330.0, "nova": 440.0}


def tone(seconds: float, freq: float, rate: int = DEVICE_RATE, amplitude: float = 0.4) -> np.ndarray:
    """A sine with 10 ms fades (no clicks), as float64 in [-1, 1]."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    fade = min(n // 2, rate // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    return wave


def to_s16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


class FakeSpeechBackend:
    """Like melotts: one PCM piece per sentence, 16 kHz s16le, a tone whose pitch depends on the voice."""

    def __init__(
        self, voices: list[str] | None = None, *, delay: float = 0.0, seconds_per_char: float = 0.03
    ):
        self.voices = voices or ["alloy", "echo"]
        self.delay = delay
        self.seconds_per_char = seconds_per_char
        self.sentences_done: list[float] = []  # monotonic time each sentence was handed out
        self.closed = False
        self.calls: list[tuple[str, str]] = []

    async def synthesize(self, text: str, *, voice: str) -> AsyncIterator[bytes]:
        self.calls.append((text, voice))
        sentences = [s for s in re.split(r"(?<=[,.!?;])\s*", text) if s.strip()]
        try:
            for sentence in sentences:
                if self.delay:
                    await asyncio.sleep(self.delay)
                seconds = max(0.3, len(sentence) * self.seconds_per_char)
                self.sentences_done.append(time.monotonic())
                yield to_s16(tone(seconds, VOICE_TONES.get(voice, 500.0)))
        finally:
            self.closed = True

    def expected_seconds(self, text: str) -> float:
        sentences = [s for s in re.split(r"(?<=[,.!?;])\s*", text) if s.strip()]
        return sum(max(0.3, len(s) * self.seconds_per_char) for s in sentences)


class FakeTranscriptionBackend:
    """Returns text derived from each window and records what it was given."""

    def __init__(
        self, *, window_seconds: float = 30.0, can_translate: bool = False, fail_at: int | None = None
    ):
        self.window_seconds = window_seconds
        self.can_translate = can_translate
        self.fail_at = fail_at  # window number (0-based) whose call raises BackendError
        self.windows: list[float] = []  # seconds of each window received
        self.calls: list[dict[str, Any]] = []

    def language(self, requested: str | None) -> str | None:
        return requested

    async def transcribe(
        self, pcm: bytes, *, language: str | None, prompt: str | None, translate: bool = False
    ) -> str:
        if self.fail_at == len(self.windows):
            raise BackendError("the fake ASR failed", code="device_error")
        seconds = len(pcm) / 2 / DEVICE_RATE
        self.windows.append(seconds)
        self.calls.append({"language": language, "prompt": prompt, "translate": translate})
        if translate:
            return f"English for {seconds:.1f} seconds."
        return f"heard {seconds:.1f} seconds."


class _FakeChatUnit:
    stopped_at_capacity = False

    def __init__(self, owner: FakeChatBackend) -> None:
        self.owner = owner

    async def generate(self, prompt: str, *, images: list[bytes], turn: Any = None) -> AsyncIterator[str]:
        self.owner.prompts.append(prompt)
        for piece in ("EN: ", prompt.upper()):
            yield piece


class FakeChatBackend:
    def __init__(self) -> None:
        self.info = ChatModelInfo(
            prefill_len=1024, max_token_len=2048, tokenizer="estimate", template="generic"
        )
        self.settings: list[UnitSettings] = []
        self.prompts: list[str] = []

    @asynccontextmanager
    async def lease(self, settings: UnitSettings) -> AsyncIterator[_FakeChatUnit]:
        self.settings.append(settings)
        yield _FakeChatUnit(self)


@dataclass
class FakeRegistry:
    entries: dict[str, ModelEntry] = field(default_factory=dict)

    def add(self, entry: ModelEntry) -> ModelEntry:
        self.entries[entry.id] = entry
        return entry

    def get(self, model_id: str) -> ModelEntry | None:
        return self.entries.get(model_id)

    def list(self) -> list[ModelEntry]:
        return list(self.entries.values())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def make_app(registry: FakeRegistry) -> FastAPI:
    """The gateway's app (its error rendering and middleware) with the audio router included."""
    app = create_app(registry)
    if not any(getattr(route, "path", "") == "/v1/audio/speech" for route in app.routes):
        app.include_router(router)
    return app


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """uvicorn on 127.0.0.1 with a free port, in a thread; yields the base URL ("http://.../v1")."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---- files made and read with PyAV ------------------------------------------------------------------

# input format → (container, codec, sample rate); rates differ from 16 kHz on purpose (resampling).
FILE_FORMATS: dict[str, tuple[str, str, int]] = {
    "wav": ("wav", "pcm_s16le", 44_100),
    "mp3": ("mp3", "libmp3lame", 44_100),
    "ogg": ("ogg", "libopus", 48_000),
    "webm": ("webm", "libopus", 48_000),
    "m4a": ("ipod", "aac", 44_100),
    "flac": ("flac", "flac", 22_050),
}


def encode_file(fmt: str, wave: np.ndarray, rate: int | None = None, *, stereo: bool = True) -> bytes:
    """`wave` (float, mono, at `rate` or the format's rate) as a file in `fmt`, stereo by default."""
    container_name, codec, native_rate = FILE_FORMATS[fmt]
    rate = rate or native_rate
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_name) as container:
        layout = "stereo" if stereo else "mono"
        stream = container.add_stream(codec, rate=rate, layout=layout)
        samples = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        if stereo:
            samples = np.repeat(samples, 2)  # interleaved L R L R
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def tone_file(fmt: str, seconds: float, freq: float = 440.0, *, stereo: bool = True) -> bytes:
    """A `seconds`-long tone as a file in `fmt`, at the format's usual rate."""
    rate = FILE_FORMATS[fmt][2]
    return encode_file(fmt, tone(seconds, freq, rate), rate, stereo=stereo)


def decode_file(data: bytes) -> tuple[np.ndarray, int]:
    """(mono float samples in [-1, 1], sample rate) of an encoded file, decoded by PyAV, not resampled."""
    scale = {"s16": 32768.0, "s16p": 32768.0, "s32": 2.0**31, "s32p": 2.0**31}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks, rate = [], 0
        for frame in container.decode(stream):
            rate = frame.sample_rate
            array = frame.to_ndarray().astype(np.float64) / scale.get(frame.format.name, 1.0)
            channels = frame.layout.nb_channels
            if frame.format.is_planar:
                chunks.append(array.mean(axis=0))
            else:
                chunks.append(array.reshape(-1, channels).mean(axis=1))
    return (np.concatenate(chunks) if chunks else np.zeros(0)), rate


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


# ---- OpenAI schemas -----------------------------------------------------------------------------------

_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "openai" / "openai-subset.json"

# Not in openai-subset.json: the speech SSE events, as OpenAI's OpenAPI document defines them
# (SpeechAudioDeltaEvent, SpeechAudioDoneEvent).
SPEECH_EVENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "speech.audio.delta": {
        "type": "object",
        "required": ["type", "audio"],
        "properties": {"type": {"const": "speech.audio.delta"}, "audio": {"type": "string"}},
    },
    "speech.audio.done": {
        "type": "object",
        "required": ["type", "usage"],
        "properties": {
            "type": {"const": "speech.audio.done"},
            "usage": {
                "type": "object",
                "required": ["input_tokens", "output_tokens", "total_tokens"],
                "properties": {
                    k: {"type": "integer"} for k in ("input_tokens", "output_tokens", "total_tokens")
                },
            },
        },
    },
}


def validate_openai(instance: Any, name: str) -> None:
    """Validate against `#/$defs/<name>` of OpenAI's schema subset (shared/openai)."""
    document = json.loads(_SUBSET.read_text())
    validator = jsonschema.Draft202012Validator({**document, "$ref": f"#/$defs/{name}"})
    validator.validate(instance)


def sse_events(body: str) -> list[dict[str, Any]]:
    """The JSON payloads of an SSE body's `data:` lines."""
    events = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events
