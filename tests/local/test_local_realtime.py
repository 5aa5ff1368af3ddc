"""A spoken conversation with real models on a PC: piper speaks a question, the Realtime session hears it
(webrtcvad + faster-whisper), SmolLM2 answers, piper speaks the answer back."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from pathlib import Path

import numpy as np
import openai
import pytest
from local_support import require

for kind in ("llm", "tts", "asr"):
    require(kind)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the harness
from e2e_harness import Harness  # noqa: E402
from realtime_support import check_event  # noqa: E402
from stackflow_openai.config import RealtimeSettings, Settings, VoicePipelineSettings  # noqa: E402

pytestmark = pytest.mark.local
PIPELINE = VoicePipelineSettings(
    chat_model="qwen2.5-0.5B-p256-ax630c", transcription_model="whisper-tiny", speech_model="melotts-en-us"
)


@pytest.fixture(scope="module")
def harness(local_engine):
    chained = PIPELINE.model_copy(update={"device_chain": "auto"})  # the device's own chain: chained.py
    settings = Settings(realtime=RealtimeSettings(pipelines={"voice": PIPELINE, "chain": chained}))
    h = Harness(settings, engine=local_engine).start()
    yield h
    h.stop()


def _spoken(harness: Harness, text: str) -> bytes:
    """Real speech from the local TTS, through the gateway's own speech endpoint, as pcm16 24 kHz."""
    client = openai.OpenAI(base_url=harness.base_url, api_key="unused", max_retries=0, timeout=120)
    voice = client.audio.speech.create(
        model="melotts-en-us", voice="alloy", input=text, response_format="pcm"
    )
    return voice.content


@pytest.mark.parametrize("model", ["voice", "chain"])
async def test_a_spoken_question_gets_a_spoken_answer(harness: Harness, model: str) -> None:
    question = _spoken(harness, "What is the capital of France?")
    client = openai.AsyncOpenAI(base_url=harness.base_url, api_key="unused", max_retries=0)
    async with client.realtime.connect(model=model) as conn:
        seen: list[dict] = []
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer in one short sentence.",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            }
        )
        audio = bytes(12000) + question + bytes(48000)  # 0.25 s, the question, 1 s of silence
        for start in range(0, len(audio), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[start : start + 9600]).decode())
        while True:
            event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 120))
            check_event(event)
            seen.append(event)
            if event["type"] == "response.done":
                break
        # On "chain" the device answered by itself: its llm took the whisper instance's output.
        inputs = [i for unit in harness.live_instances() for i in unit.get("inputs", [])]
        assert any(re.fullmatch(r"whisper\.\d+", i) for i in inputs) == (model == "chain")
    heard = next(e for e in seen if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert "france" in heard["transcript"].lower()
    answer = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert re.search(r"[a-z]{3}", answer.lower())
    pcm = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta")
    samples = np.frombuffer(pcm, "<i2")
    assert len(samples) / 24000 > 0.5 and np.abs(samples).max() > 1000  # real, audible speech
    assert seen[-1]["response"]["status"] in ("completed", "incomplete")
