"""Realtime API latency: from the end of the user's speech to the first audio byte, stage by stage.

    python benchmarks/realtime_latency.py [--turns 5]

The emulator runs with device-like timing (`Timing.realistic()`: 0.3 s plus 3.5 ms per prompt token to the
first token, 10 tokens/s, 10 ms of synthesis per character, 0.3 s per transcription; models are loaded by a
warm-up turn first). Audio
is streamed in real time (100 ms chunks every 100 ms), as a microphone would, so "end of speech" is the
moment the last chunk with speech was sent. Also measured: the CPU cost per second of audio of the two VAD
candidates (webrtcvad, which the gateway uses, and Silero VAD through onnxruntime when installed).
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

import numpy as np
import openai
import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.audio import PcmConverter
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, RealtimeSettings, Settings, VoicePipelineSettings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.emulator.engines.scripted import render_speech
from stackflow_openai.realtime.vad import TurnDetector
from stackflow_openai.serve import http_settings, uvicorn_config

CHUNK = 4800 * 2  # 100 ms of pcm16 at 24 kHz
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


async def one_turn(client: openai.AsyncOpenAI, text: str) -> dict[str, float]:
    async with client.realtime.connect(model="voice") as conn:
        await conn.recv_bytes()  # session.created
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        pcm = bytes(9600) + speech_24k(text)
        samples = np.frombuffer(pcm, "<i2")
        last_voiced = int(np.flatnonzero(np.abs(samples) > 300)[-1])
        first_sent = time.monotonic()
        for start in range(0, len(pcm), CHUNK):
            # A microphone sends a chunk once it is recorded: at the time its last sample was spoken.
            await asyncio.sleep(max(0.0, first_sent + (start + CHUNK) / 48000 - time.monotonic()))
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + CHUNK]).decode())
        # Sent in real time: the last voiced sample left the "microphone" at this moment.
        speech_end = first_sent + last_voiced / 24000
        silence = base64.b64encode(bytes(CHUNK)).decode()
        seen: dict[str, float] = {}

        async def keep_talking_silence() -> None:
            while True:
                await conn.input_audio_buffer.append(audio=silence)
                await asyncio.sleep(0.1)

        await asyncio.sleep(max(0.0, first_sent + len(pcm) / 48000 + 0.1 - time.monotonic()))
        feeder = asyncio.create_task(keep_talking_silence())
        try:
            while "response.output_audio.delta" not in seen:
                event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 30))
                seen.setdefault(event["type"], time.monotonic() - speech_end)
        finally:
            feeder.cancel()
        await conn.response.cancel()
    return seen


async def main(turns: int) -> None:
    vad_costs()
    timing = Timing.realistic()
    emulator = Emulator(engine=ScriptedEngine(timing=timing), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    settings = Settings(devices=[DeviceSettings(name="emu", host="127.0.0.1", port=emulator.port)])
    pipeline = VoicePipelineSettings(
        chat_model="qwen2.5-0.5B-p256-ax630c",
        transcription_model="whisper-tiny",
        speech_model="melotts-en-us",
    )
    settings.realtime = RealtimeSettings(pipelines={"voice": pipeline})
    server = uvicorn.Server(
        uvicorn_config(create_app(GatewayRegistry(settings), http_settings(settings)), "127.0.0.1", 0)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn has no started event)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        await one_turn(client, "Warm up the units please")  # model loads (5 s each) are not latency
        runs = [await one_turn(client, "What is the weather like today") for _ in range(turns)]
    finally:
        server.should_exit = True
        await task
        await emulator.stop()
    print(f"\nend of speech -> event, median of {turns} turns (emulator with device-like timing):")
    previous = 0.0
    for kind, label in STAGES:
        at = statistics.median(run[kind] for run in runs)
        print(f"  {at * 1000:7.0f} ms  (+{(at - previous) * 1000:5.0f})  {label}")
        previous = at


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5)
    asyncio.run(main(parser.parse_args().turns))
