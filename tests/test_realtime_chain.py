"""Voice turns on the device's own asr -> llm -> melotts chain (realtime/chain.py, chained.py).

The emulator runs chained inference as the device does (a linked unit takes its source's output), so these
check from the client's side that a turn the device can answer by itself is answered there, with the same
events, that the conversation is kept by a ctx model between turns, and that anything the device would not
answer the same way goes back to the gateway's path without losing or leaking anything."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from e2e_harness import Harness
from realtime_support import assert_in_order, b64, recv, silence_24k, speech_24k, until
from stackflow_openai.config import RealtimeSettings, Settings, VoicePipelineSettings
from stackflow_openai.emulator import Timing

CTX = "qwen2.5-HA-0.5B-ctx-ax630c"
SINGLE = "qwen2.5-0.5B-p256-ax630c"
ASR = "sherpa-ncnn-streaming-zipformer-20M-2023-02-17"
SPEECH = {"speech_model": "melotts-en-us"}


def _settings() -> Settings:
    settings = Settings()
    settings.realtime = RealtimeSettings(
        pipelines={
            "ctx": VoicePipelineSettings(chat_model=CTX, transcription_model="whisper-tiny", **SPEECH),
            "asr": VoicePipelineSettings(chat_model=CTX, transcription_model=ASR, **SPEECH),
            "single": VoicePipelineSettings(chat_model=SINGLE, transcription_model="whisper-tiny", **SPEECH),
            "off": VoicePipelineSettings(
                chat_model=CTX, transcription_model="whisper-tiny", device_chain="off", **SPEECH
            ),
        },
        device_chain="auto",  # the gateway's default is off (docs/realtime.md): these test the chain
    )
    return settings


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness(_settings(), timing=Timing(tokens_per_second=40.0)).start()
    yield h
    h.stop()


def _client(harness: Harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key="unused", max_retries=0)


def _chained(harness: Harness) -> list[tuple[str, list[str]]]:
    """Instances that take another instance's output on the emulated device: (work_id, its sources)."""
    found = []
    for instance in harness.live_instances():
        sources = [i for i in instance.get("inputs", []) if re.fullmatch(r"\w+\.\d+", i)]
        if sources:
            found.append((instance["work_id"], sources))
    return found


def _wait_unchained(harness: Harness, timeout: float = 5.0) -> None:
    """The socket is closed; the server ends the session (and dissolves its chain) shortly after."""
    deadline = time.monotonic() + timeout
    while _chained(harness) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _chained(harness) == []


async def _open(conn: Any) -> None:
    await recv(conn)
    await conn.session.update(
        session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    )
    await until(conn, "session.updated", [])


async def _turn(conn: Any, text: str) -> list[dict[str, Any]]:
    pcm = silence_24k(0.3) + speech_24k(text) + silence_24k(1.0)
    for start in range(0, len(pcm), 9600):
        await conn.input_audio_buffer.append(audio=b64(pcm[start : start + 9600]))
    seen: list[dict[str, Any]] = []
    await until(conn, "response.done", seen)
    return seen


def _spoken(seen: list[dict[str, Any]]) -> tuple[str, float]:
    transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")["transcript"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta")
    return transcript, len(audio) / 48000


async def test_voice_turns_run_on_the_device_chain_and_a_ctx_model_keeps_the_conversation(
    harness: Harness,
) -> None:
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        first = await _turn(conn, "My name is Ada")
        # While the session lasts the device holds whisper -> llm -> melotts for it.
        chained = dict(_chained(harness))
        llm = next(w for w, sources in chained.items() if w.startswith("llm."))
        assert any(s.startswith("whisper.") for s in chained[llm])
        assert any(llm in sources for w, sources in chained.items() if w.startswith("melotts."))
        second = await _turn(conn, "What is my name")
    for seen in (first, second):
        assert_in_order(
            [e["type"] for e in seen],
            [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.committed",
                "conversation.item.input_audio_transcription.completed",
                "response.created",
                "response.output_audio_transcript.delta",
                "response.output_audio.delta",
                "response.output_audio_transcript.done",
                "response.done",
            ],
        )
        done = next(e for e in seen if e["type"] == "response.done")
        assert done["response"]["status"] == "completed"
        transcript, seconds = _spoken(seen)
        assert transcript and 0.02 * len(transcript) < seconds < 0.2 * len(transcript)
        assert done["response"]["output"][0]["content"][0]["transcript"] == transcript
    heard = next(e for e in first if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert heard["transcript"].strip()
    # The second answer comes from a device that remembers the first turn (the scripted ctx engine repeats
    # the earlier user turns it holds): the chain kept the conversation on the device.
    assert heard["transcript"].lower().rstrip(".") in _spoken(second)[0].lower()
    # That answer has two sentences: melotts speaks each as one message, and each message's transcript
    # delta is the text it speaks.
    deltas = [e["delta"] for e in second if e["type"] == "response.output_audio_transcript.delta"]
    assert len(deltas) == 2 and "".join(deltas) == _spoken(second)[0]
    _wait_unchained(harness)  # unlinked, and the chain's own llm (whisper) exited
    harness.assert_no_leak()


async def test_an_asr_unit_is_linked_to_a_pooled_llm_and_given_back(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="asr") as conn:
        await _open(conn)
        seen = await _turn(conn, "Good evening")
        chained = _chained(harness)
        assert any(w.startswith("llm.") and any(s.startswith("asr.") for s in src) for w, src in chained)
    assert next(e for e in seen if e["type"] == "response.done")["response"]["status"] == "completed"
    assert _spoken(seen)[0]
    _wait_unchained(harness)
    harness.assert_no_leak()
    assert any(w.startswith("llm.") for w in harness.pool_work_ids())  # linked, not set up for the chain


async def test_turns_the_device_would_answer_otherwise_take_the_gateways_path(harness: Harness) -> None:
    # Tools: the device cannot call them, so no chain is formed.
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        tool = {"type": "function", "name": "now", "description": "Time", "parameters": {"type": "object"}}
        await conn.session.update(session={"type": "realtime", "tools": [tool]})
        await until(conn, "session.updated", [])
        seen = await _turn(conn, "Hello there")
        _wait_unchained(harness)
    assert next(e for e in seen if e["type"] == "response.done")["response"]["status"] == "completed"
    # A single-turn model chains the first turn; the second needs the history, which only the gateway sends.
    async with _client(harness).realtime.connect(model="single") as conn:
        await _open(conn)
        await _turn(conn, "My name is Ada")
        assert _chained(harness)
        second = await _turn(conn, "What is my name")
        _wait_unchained(harness)  # dissolved before the gateway's path leased the units
    assert next(e for e in second if e["type"] == "response.done")["response"]["status"] == "completed"
    # Switched off in the config.
    async with _client(harness).realtime.connect(model="off") as conn:
        await _open(conn)
        await _turn(conn, "Hello there")
        _wait_unchained(harness)
    harness.assert_no_leak()


async def test_barge_in_on_the_chain_then_the_gateway_takes_over(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        long = " ".join(["Tell me a long story about a lighthouse"] * 3)
        pcm = silence_24k(0.3) + speech_24k(long) + silence_24k(0.8)
        for start in range(0, len(pcm), 9600):
            await conn.input_audio_buffer.append(audio=b64(pcm[start : start + 9600]))
        seen: list[dict[str, Any]] = []
        await until(conn, "response.created", seen)
        assert _chained(harness)  # the device is answering by itself
        stop = speech_24k("Stop please") + silence_24k(1.0)
        for start in range(0, len(stop), 9600):  # the user talks over the answer
            await conn.input_audio_buffer.append(audio=b64(stop[start : start + 9600]))
        done = await until(conn, "response.done", seen)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        spoken = "".join(e["delta"] for e in seen if e["type"] == "response.output_audio_transcript.delta")
        for item in done["response"]["output"]:  # what was heard, if anything was
            assert item["status"] == "incomplete" and item["content"][0]["transcript"] == spoken
        # The device heard and said more than the conversation holds now: the next turn (the barge-in
        # itself) is answered on the gateway's path, with the units given back first.
        after = await until(conn, "response.done", seen)
        assert after["response"]["status"] == "completed"
        assert _spoken(seen[seen.index(done) :])[0]
        _wait_unchained(harness)
    harness.assert_no_leak(timeout=10)


async def test_the_chain_gives_its_units_back_when_another_client_needs_them(harness: Harness) -> None:
    """The board has one melotts and one whisper instance: an HTTP speech request made while a chain
    session holds them is served (the chain yields between turns); the session goes on along the
    gateway's path."""
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        await _turn(conn, "Hello there")
        assert _chained(harness)
        speech = await asyncio.to_thread(
            lambda: harness.sdk(timeout=20).audio.speech.create(
                model="melotts-en-us", voice="default", input="Dinner is ready.", response_format="wav"
            )
        )
        assert speech.content[:4] == b"RIFF" and len(speech.content) > 8000
        _wait_unchained(harness)
        after = await _turn(conn, "Thank you")
    assert next(e for e in after if e["type"] == "response.done")["response"]["status"] == "completed"
    assert _spoken(after)[0]
    harness.assert_no_leak()


async def test_a_device_failing_mid_answer_fails_the_response_and_the_gateway_takes_over(
    harness: Harness,
) -> None:
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        # The llm's connection is dropped mid-answer:
        harness.call(lambda: setattr(harness.emulator.faults, "close_mid_stream", 1))
        seen = await _turn(conn, "Hello there")
        done = next(e for e in seen if e["type"] == "response.done")
        assert done["response"]["status"] == "failed"
        error = next(e for e in seen if e["type"] == "error")["error"]
        assert error["type"] == "server_error" and "stopped answering" in error["message"]
        after = await _turn(conn, "Are you there")  # the broken chain is gone: the gateway's path answers
        assert next(e for e in after if e["type"] == "response.done")["response"]["status"] == "completed"
        assert _spoken(after)[0]
        _wait_unchained(harness)
    harness.assert_no_leak(timeout=15)


async def test_an_empty_transcript_gets_no_answer_though_the_device_answers_it(harness: Harness) -> None:
    """Whisper sends "." for speech it cannot make out, and the chained llm answers even that: the gateway
    asks for no response, drains the device's answer, and the session goes on."""
    async with _client(harness).realtime.connect(model="ctx") as conn:
        await _open(conn)
        mumble = (np.frombuffer(speech_24k("Hello there how are you"), "<i2") * 0.05).astype("<i2").tobytes()
        pcm = silence_24k(0.3) + mumble + silence_24k(1.0)  # voiced for the VAD, silence for the transcriber
        for start in range(0, len(pcm), 9600):
            await conn.input_audio_buffer.append(audio=b64(pcm[start : start + 9600]))
        seen: list[dict[str, Any]] = []
        heard = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
        assert heard["transcript"] == ""
        await until(conn, "conversation.item.done", seen)
        melotts = next(w for w, _ in _chained(harness) if w.startswith("melotts."))
        after = await _turn(conn, "Hello there")  # answered, by whichever path: nothing is left in the way
        assert not any(e["type"] == "response.created" for e in seen)
        assert next(e for e in after if e["type"] == "response.done")["response"]["status"] == "completed"
        assert _spoken(after)[0]
    _wait_unchained(harness)
    harness.assert_no_leak()
    assert not any(i["state"] == "busy" for i in harness.live_instances())
    assert melotts in harness.pool_work_ids()  # given back clean (drained), not exited as left busy
