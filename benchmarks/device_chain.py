"""The device's own whisper → llm → melotts chain against the same three units driven by a client.

    python benchmarks/device_chain.py [--turns 5]

Both paths run on one emulator with device-like timing (`Timing.realistic()`), over the raw StackFlow
protocol on loopback, with no gateway. "chained": the llm's setup `input` names the whisper work_id and the
melotts is linked to the llm, so the units pass data among themselves (docs/protocol-notes.md 27-31).
"client": nothing is linked; the client waits for the transcript, sends it to the llm, and forwards every
llm delta to melotts as a `.stream` inference the moment it arrives (what the chained melotts does with
the published deltas). Times are from sending the audio: transcript, first llm delta, first audio, last
audio. The scripted engine's models are no models: only the differences between the paths mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import time
import wave
from typing import Any

from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.emulator.engines.scripted import render_speech

QUESTION = render_speech("what is the capital of france")
LLM = {"model": "qwen2.5-0.5B-p256-ax630c", "response_format": "llm.utf-8.stream", "input": "llm.utf-8",
       "enoutput": True, "max_token_len": 256, "prompt": "You are a helpful assistant."}  # fmt: skip
WHISPER = {"model": "whisper-tiny", "response_format": "asr.utf-8", "input": "whisper.wav.base64",
           "language": "en", "enoutput": True}  # fmt: skip
MELOTTS = {"model": "melotts-en-us", "response_format": "tts.pcm.stream.base64", "input": "tts.utf-8",
           "enoutput": True}  # fmt: skip
STAGES = ("transcript", "first llm delta", "first audio", "last audio")


class Conn:
    """One raw protocol connection; `recv` returns parsed reply lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self._ids = reader, writer, 0

    async def send(self, work_id: str, action: str, obj: str, data: Any) -> str:
        self._ids += 1
        rid = f"b{self._ids}"
        line = {"request_id": rid, "work_id": work_id, "action": action, "object": obj, "data": data}
        self.writer.write((json.dumps(line) + "\n").encode())
        await self.writer.drain()
        return rid

    async def recv(self) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.reader.readline(), 60)))

    async def setup(self, unit: str, config: dict[str, Any]) -> str:
        rid = await self.send(unit, "setup", f"{unit}.setup", config)
        while (reply := await self.recv())["request_id"] != rid:
            pass
        assert reply["error"]["code"] == 0, reply
        return str(reply["work_id"])


def wav_b64(pcm: bytes) -> str:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm)
    return base64.b64encode(out.getvalue()).decode()


async def audio_times(speaker: Conn, start: float, times: dict[str, float]) -> None:
    while True:
        message = await speaker.recv()
        times.setdefault("first audio", time.perf_counter() - start)
        if message["data"]["finish"]:
            times["last audio"] = time.perf_counter() - start
            return


async def chained_turn(mic: Conn, chat: Conn, speaker: Conn, whisper: str) -> dict[str, float]:
    times: dict[str, float] = {}
    start = time.perf_counter()
    await mic.send(whisper, "inference", "whisper.wav.base64", wav_b64(QUESTION))
    audio = asyncio.create_task(audio_times(speaker, start, times))
    await mic.recv()
    times["transcript"] = time.perf_counter() - start
    while not (await chat.recv())["data"]["finish"]:
        times.setdefault("first llm delta", time.perf_counter() - start)
    await audio
    return times


async def client_turn(mic: Conn, chat: Conn, speaker: Conn, units: tuple[str, str, str]) -> dict[str, float]:
    whisper, llm, melotts = units
    times: dict[str, float] = {}
    start = time.perf_counter()
    await mic.send(whisper, "inference", "whisper.wav.base64", wav_b64(QUESTION))
    audio = asyncio.create_task(audio_times(speaker, start, times))
    transcript = (await mic.recv())["data"]
    times["transcript"] = time.perf_counter() - start
    await chat.send(llm, "inference", "llm.utf-8", transcript)
    index = 0
    while True:
        data = (await chat.recv())["data"]
        times.setdefault("first llm delta", time.perf_counter() - start)
        chunk = {"delta": data["delta"], "index": index, "finish": data["finish"]}
        await speaker.send(melotts, "inference", "tts.utf-8.stream", chunk)
        index += 1
        if data["finish"]:
            break
    await audio
    return times


async def run(turns: int) -> None:
    emu = Emulator(engine=ScriptedEngine(Timing.realistic()), hwinfo_delay=0.05)
    await emu.start("127.0.0.1", 0)
    try:
        conns = [Conn(*await asyncio.open_connection(emu.host, emu.port, limit=1 << 24)) for _ in range(3)]
        mic, chat, speaker = conns
        whisper = await mic.setup("whisper", WHISPER)
        llm = await chat.setup("llm", LLM)
        melotts = await speaker.setup("melotts", MELOTTS)
        # Each path's first turn warms up and is not counted.
        client = [await client_turn(mic, chat, speaker, (whisper, llm, melotts)) for _ in range(turns + 1)]
        await chat.send(llm, "exit", "None", "None")
        await chat.recv()
        llm = await chat.setup("llm", {**LLM, "input": whisper})  # now fed by whisper itself
        await speaker.send(melotts, "link", "work_id", llm)
        assert (await speaker.recv())["error"]["code"] == 0
        chained = [await chained_turn(mic, chat, speaker, whisper) for _ in range(turns + 1)]
        report({"client": client, "chained": chained}, turns)
    finally:
        await emu.stop()


def report(results: dict[str, list[dict[str, float]]], turns: int) -> None:
    print(f"{turns} turns per path after one warm-up, Timing.realistic(); median ms from sending the audio")
    print(f"{'stage':<18}{'client':>10}{'chained':>10}{'chained-client':>16}{'chained/client':>16}")
    for stage in STAGES:
        client = 1000 * statistics.median(t[stage] for t in results["client"][1:])
        chained = 1000 * statistics.median(t[stage] for t in results["chained"][1:])
        print(f"{stage:<18}{client:>10.1f}{chained:>10.1f}{chained - client:>16.1f}{chained / client:>16.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=5)
    asyncio.run(run(parser.parse_args().turns))


if __name__ == "__main__":
    main()
