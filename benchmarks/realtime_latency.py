"""Realtime API latency: from the end of the user's speech to the first audio byte, on the gateway's path
and on the device's own asr -> llm -> melotts chain.

    python benchmarks/realtime_latency.py [--turns 5] [--delays 0 5] [--answers scripted prose]

The emulator runs with device-like timing (`Timing.realistic()`: 0.3 s plus 3.5 ms per prompt token to the
first token, 10 tokens/s, 10 ms of synthesis per character, 0.3 s per transcription). One session per path
(`device_chain: off` and `auto`) with the same models; a warm-up turn loads them (and forms the chain), then
each turn streams speech in real time (100 ms chunks every 100 ms, as a microphone would) and runs to its
response.done, so "end of speech" is the moment the last chunk with speech was sent. `--delays`: the device
behind a proxy that delays every chunk that many ms each way (a gateway on another machine). `--answers`: the
scripted engine's own answers ("You said N words: ...", first break a colon) or a fixed prose answer (first
break a comma): where the first clause ends decides when each path can speak. Also measured: the CPU cost per
second of audio of the two VAD candidates (webrtcvad, which the gateway uses, and Silero VAD through
onnxruntime when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import openai
import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.audio import PcmConverter
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, RealtimeSettings, Settings, VoicePipelineSettings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.emulator.engines import scripted
from stackflow_openai.emulator.engines.scripted import render_speech
from stackflow_openai.realtime.vad import TurnDetector
from stackflow_openai.serve import http_settings, uvicorn_config

CHUNK = 4800 * 2  # 100 ms of pcm16 at 24 kHz
SCRIPTED_ANSWER = scripted.scripted_answer
CHAT = "qwen2.5-HA-0.5B-ctx-ax630c"  # a ctx model: both paths keep the conversation on the device
TEXTS = ["What is the weather like today", "And what about tomorrow", "Should I take an umbrella"]
STAGES = [
    ("input_audio_buffer.speech_stopped", "VAD: silence that ends the turn (silence_duration_ms 500)"),
    ("conversation.item.input_audio_transcription.completed", "transcription"),
    ("response.created", "response started"),
    ("response.output_audio_transcript.delta", "LLM: first sentence complete"),
    ("response.output_audio.delta", "TTS: first sentence's first audio"),
]


def speech_24k(text: str) -> bytes:
    """The scripted engine's 'speech' for `text` (tones per character), as pcm16 at 24 kHz."""
    converter = PcmConverter(16_000, 24_000)
    return converter.feed(render_speech(text)) + converter.finish()


def vad_costs() -> None:
    audio = speech_24k("Hello there, how are you today? I am fine, thank you.") * 4
    seconds = len(audio) / 48000
    detector = TurnDetector()
    started = time.process_time()
    for start in range(0, len(audio), CHUNK):  # as a session gets it: 100 ms appends, resampled to 16 kHz
        detector.feed(audio[start : start + CHUNK])
    cost = 1000 * (time.process_time() - started) / seconds
    print(f"VAD webrtcvad (with the 24 -> 16 kHz resampling): {cost:.3f} ms CPU per audio second")
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or importlib.util.find_spec("onnxruntime") is None:
        print("VAD silero: not installed (pip install onnxruntime; pip install --no-deps silero-vad)")
        return
    import onnxruntime as ort

    path = os.path.join(next(iter(spec.submodule_search_locations or [])), "data", "silero_vad.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    pcm16k = np.frombuffer(render_speech("Hello there, how are you today? I am fine, thank you.") * 4, "<i2")
    samples = pcm16k.astype(np.float32) / 32768
    state, context = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32)
    started = time.process_time()
    for start in range(0, len(samples) - 511, 512):
        chunk = np.concatenate([context, samples[start : start + 512][None]], axis=1)
        _, state = session.run(None, {"input": chunk, "state": state, "sr": np.array(16000, np.int64)})
        context = chunk[:, -64:]
    cost = 1000 * (time.process_time() - started) / (len(samples) / 16000)
    print(f"VAD silero (onnxruntime, 1 thread): {cost:.3f} ms CPU per audio second")


async def speak_turn(conn: Any, text: str) -> dict[str, float]:
    """Stream one spoken turn in real time; the time from its last voiced sample to each event, up to the
    end of the response (a response left unfinished would end the device chain: chained.py)."""
    pcm = bytes(9600) + speech_24k(text)
    samples = np.frombuffer(pcm, "<i2")
    last_voiced = int(np.flatnonzero(np.abs(samples) > 300)[-1])
    first_sent = time.monotonic()
    for start in range(0, len(pcm), CHUNK):
        # A microphone sends a chunk once it is recorded: at the time its last sample was spoken.
        await asyncio.sleep(max(0.0, first_sent + (start + CHUNK) / 48000 - time.monotonic()))
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + CHUNK]).decode())
    speech_end = first_sent + last_voiced / 24000  # the last voiced sample left the "microphone" then
    silence = base64.b64encode(bytes(CHUNK)).decode()
    seen: dict[str, float] = {}

    async def keep_sending_silence() -> None:
        while True:
            await conn.input_audio_buffer.append(audio=silence)
            await asyncio.sleep(0.1)

    await asyncio.sleep(max(0.0, first_sent + len(pcm) / 48000 + 0.1 - time.monotonic()))
    feeder = asyncio.create_task(keep_sending_silence())
    try:
        while "response.done" not in seen:
            event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 60))
            seen.setdefault(event["type"], time.monotonic() - speech_end)
    finally:
        feeder.cancel()
    return seen


async def one_session(
    client: openai.AsyncOpenAI, model: str, turns: int
) -> tuple[float, list[dict[str, float]]]:
    """A warm-up turn (model loads, forming the chain), then `turns` timed turns, in one session."""
    async with client.realtime.connect(model=model) as conn:
        await conn.recv_bytes()  # session.created
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        started = time.monotonic()
        await speak_turn(conn, "Hello, please warm up")
        warm_up = time.monotonic() - started
        runs = [await speak_turn(conn, TEXTS[i % len(TEXTS)]) for i in range(turns)]
    return warm_up, runs


class DelayProxy:
    """A TCP proxy that delivers every chunk `delay` seconds after it arrived, each way: the gateway on
    another machine than the device (Wi-Fi or Ethernet), where every stage's hop costs that much."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, chunk))
            queue.put_nowait((time.monotonic() + self.delay, b""))
            await sender
        finally:
            sender.cancel()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def measure(turns: int, delay_ms: float) -> dict[str, tuple[float, list[dict[str, float]]]]:
    emulator = Emulator(engine=ScriptedEngine(timing=Timing.realistic()), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    proxy = DelayProxy(emulator.port, delay_ms / 1000)
    await proxy.start()
    settings = Settings(devices=[DeviceSettings(name="emu", host="127.0.0.1", port=proxy.port)])
    models = {"chat_model": CHAT, "transcription_model": "whisper-tiny", "speech_model": "melotts-en-us"}
    settings.realtime = RealtimeSettings(
        pipelines={
            "gateway": VoicePipelineSettings(**models, device_chain="off"),
            "device": VoicePipelineSettings(**models, device_chain="auto"),
        }
    )
    server = uvicorn.Server(
        uvicorn_config(create_app(GatewayRegistry(settings), http_settings(settings)), "127.0.0.1", 0)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn has no started event)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        return {path: await one_session(client, path, turns) for path in ("gateway", "device")}
    finally:
        server.should_exit = True
        await task
        await proxy.stop()
        await emulator.stop()


def report(results: dict[str, tuple[float, list[dict[str, float]]]], turns: int) -> None:
    print(
        f"\nend of speech -> event, median of {turns} turns in one session ({CHAT}, whisper-tiny, melotts):"
    )
    print(f"  {'stage':58} " + " ".join(f"{path:>16}" for path in results))
    previous = dict.fromkeys(results, 0.0)
    for kind, label in STAGES:
        cells = []
        for path, (_, runs) in results.items():
            at = statistics.median(run[kind] for run in runs)
            cells.append(f"{at * 1000:6.0f} (+{(at - previous[path]) * 1000:4.0f})")
            previous[path] = at
        print(f"  {label:58} " + " ".join(f"{c:>16}" for c in cells))
    first = {
        path: statistics.median(run[STAGES[-1][0]] for run in runs) for path, (_, runs) in results.items()
    }
    print(f"  first audio, device chain / gateway: {first['device'] / first['gateway']:.3f}")
    print(
        "  warm-up turn (loads; the chain's own llm for whisper): "
        + ", ".join(f"{path} {warm:.1f} s" for path, (warm, _) in results.items())
    )


PROSE = (
    "Sure, here is what I know. It will be mild today, with some clouds in the afternoon, "
    "and a light wind from the west."
)


def prose_answer(prompt: str, image_count: int = 0, history: Any = ()) -> str:
    return PROSE


async def main(turns: int, delays: list[float], answers: list[str]) -> None:
    vad_costs()
    for answer in answers:
        # The scripted engine's own answers ("You said N words: ...") or a fixed prose answer: where the first
        # clause ends decides when each path can speak first (docs/realtime.md).
        scripted.scripted_answer = prose_answer if answer == "prose" else SCRIPTED_ANSWER
        for delay in delays:
            print(f"\n== {answer} answers, device reached with {delay:g} ms one-way delay")
            report(await measure(turns, delay), turns)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument(
        "--delays", type=float, nargs="+", default=[0.0, 5.0], help="one-way ms to the device"
    )
    parser.add_argument("--answers", nargs="+", choices=["scripted", "prose"], default=["scripted", "prose"])
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.delays, args.answers))
