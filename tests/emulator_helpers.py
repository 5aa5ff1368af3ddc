"""Raw-socket helpers for the emulator tests.

Deliberately independent of the project's client and codec: requests are written as bytes and
replies are read as lines and parsed with `json.loads`, so a misunderstanding shared by the client
and the emulator cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stackflow_openai.emulator import Emulator

TIMEOUT = 3.0
SILENCE = 0.3

LLM_SETUP: dict[str, Any] = {
    "model": "qwen2.5-0.5B-p256-ax630c",
    "response_format": "llm.utf-8.stream",
    "input": "llm.utf-8",
    "enoutput": True,
    "max_token_len": 1023,
    "prompt": "You are a helpful assistant.",
}
VLM_SETUP: dict[str, Any] = {
    **LLM_SETUP,
    "model": "internvl2.5-1B-364-ax630c",
    "response_format": "vlm.utf-8.stream",
    "input": "vlm.utf-8",
}
MELOTTS_SETUP: dict[str, Any] = {
    "model": "melotts-en-us",
    "response_format": "tts.pcm.stream.base64",
    "input": "tts.utf-8",
    "enoutput": True,
}
TTS_SETUP: dict[str, Any] = {
    "model": "single-speaker-english-fast",
    "response_format": "tts.base64.wav",
    "input": "tts.utf-8",
    "enoutput": True,
}
WHISPER_SETUP: dict[str, Any] = {
    "model": "whisper-tiny",
    "response_format": "asr.utf-8",
    "input": "whisper.wav.base64",
    "language": "en",
    "enoutput": True,
}
ASR_SETUP: dict[str, Any] = {
    "model": "sherpa-ncnn-streaming-zipformer-20M-2023-02-17",
    "response_format": "asr.utf-8.stream",
    "input": "asr.pcm.base64",
    "enoutput": True,
}
SETUPS = {
    "llm": LLM_SETUP,
    "vlm": VLM_SETUP,
    "melotts": MELOTTS_SETUP,
    "tts": TTS_SETUP,
    "whisper": WHISPER_SETUP,
    "asr": ASR_SETUP,
}


def request(request_id: str, work_id: str, action: str, obj: str | None = None, data: Any = None) -> bytes:
    """A request written the way a careful client does: compact, keys in order, `data` last."""
    parts = [
        f'"request_id":{json.dumps(request_id)}',
        f'"work_id":{json.dumps(work_id)}',
        f'"action":{json.dumps(action)}',
    ]
    if obj is not None:
        parts.append(f'"object":{json.dumps(obj)}')
    if data is not None:
        parts.append(f'"data":{json.dumps(data, ensure_ascii=False, separators=(",", ":"))}')
    return ("{" + ",".join(parts) + "}\n").encode()


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.others: list[dict[str, Any]] = []  # replies skipped by recv_for
        self._ids = 0

    @classmethod
    async def open(cls, emu: Emulator) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(emu.host, emu.port), TIMEOUT)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)

    def next_id(self) -> str:
        self._ids += 1
        return f"r{self._ids}"

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(
        self,
        work_id: str,
        action: str,
        obj: str | None = None,
        data: Any = None,
        request_id: str | None = None,
    ) -> str:
        rid = request_id or self.next_id()
        await self.send_raw(request(rid, work_id, action, obj, data))
        return rid

    async def _fill(self, wait: float) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(65536), wait)
        self.buffer += chunk
        return bool(chunk)

    async def recv(self, wait: float = TIMEOUT) -> dict[str, Any]:
        """The next newline-terminated reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while b"\n" not in self.buffer:
            if not await self._fill(max(0.001, deadline - loop.time())):
                raise ConnectionError(f"EOF; pending bytes {self.buffer!r}")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line.decode("utf-8"))

    async def recv_raw(self, settle: float = SILENCE) -> bytes:
        """Every byte that arrives until the connection stays quiet for `settle` seconds."""
        with contextlib.suppress(asyncio.TimeoutError):
            while await self._fill(settle):
                pass
        data, self.buffer = self.buffer, b""
        return data

    async def expect_silence(self, duration: float = SILENCE) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await self._fill(duration)
        assert self.buffer == b"", f"unexpected bytes: {self.buffer[:300]!r}"

    async def expect_eof(self, wait: float = TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with contextlib.suppress(ConnectionError):
            while await self._fill(max(0.001, deadline - loop.time())):
                pass

    async def call(
        self, work_id: str, action: str, obj: str | None = None, data: Any = None, wait: float = TIMEOUT
    ) -> dict[str, Any]:
        """Send and return the reply with that request_id (other messages are kept in `others`)."""
        rid = await self.send(work_id, action, obj, data)
        return await self.recv_for(rid, wait)

    async def recv_for(self, request_id: str, wait: float = TIMEOUT) -> dict[str, Any]:
        while True:
            message = await self.recv(wait)
            if message.get("request_id") == request_id:
                return message
            self.others.append(message)

    async def setup(self, unit: str, wait: float = TIMEOUT, **overrides: Any) -> str:
        data = {**SETUPS[unit], **overrides}
        reply = await self.call(unit, "setup", f"{unit}.setup", data, wait)
        assert reply["error"]["code"] == 0, reply
        return str(reply["work_id"])

    async def collect(
        self, until: Callable[[dict[str, Any]], bool], wait: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        """Replies up to and including the first one for which `until` is true."""
        out = []
        while True:
            message = await self.recv(wait)
            out.append(message)
            if until(message):
                return out

    async def stream(self, wait: float = TIMEOUT) -> list[dict[str, Any]]:
        """Stream messages up to and including the one with data.finish true."""
        return await self.collect(
            lambda m: isinstance(m.get("data"), dict) and m["data"].get("finish") is True, wait
        )


@contextlib.asynccontextmanager
async def started_emulator(**kwargs: Any) -> AsyncIterator[Emulator]:
    kwargs.setdefault("hwinfo_delay", 0.05)
    emu = Emulator(**kwargs)
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


@contextlib.asynccontextmanager
async def client_for(emu: Emulator) -> AsyncIterator[RawClient]:
    client = await RawClient.open(emu)
    try:
        yield client
    finally:
        await client.close()


# The fixtures most emulator test modules share; a module takes them with
# `from emulator_helpers import emu_fixture, client_fixture` (and may define its own `emu` instead).
@pytest.fixture(name="emu")
async def emu_fixture() -> AsyncIterator[Emulator]:
    """A default emulator on a free loopback port."""
    async with started_emulator() as running:
        yield running


@pytest.fixture(name="client")
async def client_fixture(emu: Emulator) -> AsyncIterator[RawClient]:
    """A raw socket connection to the module's `emu`."""
    async with client_for(emu) as raw:
        yield raw


def text_of(messages: list[dict[str, Any]]) -> str:
    """The text an llm/vlm stream delivered, its deltas joined."""
    return "".join(m["data"]["delta"] for m in messages)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tone_pcm(seconds: float, frequency: float = 440.0, amplitude: int = 8000, rate: int = 16000) -> bytes:
    import math
    from array import array

    samples = array(
        "h",
        (int(amplitude * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(seconds * rate))),
    )
    return samples.tobytes()


def silence_pcm(seconds: float, rate: int = 16000) -> bytes:
    return bytes(2 * int(seconds * rate))


def wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def jpeg_bytes() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()
