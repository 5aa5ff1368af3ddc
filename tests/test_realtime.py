"""The Realtime API end to end: the official SDK's realtime client against the gateway and the emulator.

Every server event is checked against OpenAI's RealtimeServerEvent schema (realtime_support.recv)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import openai
import pytest
import websockets

from e2e_harness import Harness
from realtime_support import CHAT, PIPELINE, assert_in_order, b64, recv, silence_24k, speech_24k, until
from stackflow_openai.config import RealtimeSettings, Settings, VoicePipelineSettings
from stackflow_openai.emulator import Timing


def _settings() -> Settings:
    settings = Settings()
    settings.realtime = RealtimeSettings(pipelines={"voice": VoicePipelineSettings(**PIPELINE)})
    return settings


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    # Paced like a device: 40 tokens/s, so a barge-in lands while the answer is still being generated.
    h = Harness(_settings(), timing=Timing(tokens_per_second=40.0)).start()
    yield h
    h.stop()


def _client(harness: Harness, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)


async def test_a_text_turn(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model=CHAT) as conn:
        created = await recv(conn)
        assert created["type"] == "session.created"
        assert created["session"]["model"] == CHAT
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "instructions": "Answer briefly."}
        )
        assert (await recv(conn))["type"] == "session.updated"
        await _say(conn, "Name three colours")
        seen: list[dict] = []
        await until(conn, "conversation.item.done", seen)
        await conn.response.create()
        done = await until(conn, "response.done", seen)
    kinds = [e["type"] for e in seen]
    assert_in_order(
        kinds,
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ],
    )
    deltas = "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
    text_done = next(e for e in seen if e["type"] == "response.output_text.done")
    assert deltas and deltas == text_done["text"]
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": deltas}
    assert done["response"]["usage"]["input_tokens"] > 0 < done["response"]["usage"]["output_tokens"]
    harness.assert_no_leak()


async def _say(conn: object, text: str) -> None:
    """A user text message, as conversation.item.create."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await conn.conversation.item.create(item=item)  # type: ignore[attr-defined]


async def _send_audio(conn: object, pcm: bytes, chunk: int = 9600) -> None:
    for start in range(0, len(pcm), chunk):
        await conn.input_audio_buffer.append(audio=b64(pcm[start : start + chunk]))  # type: ignore[attr-defined]


async def test_an_audio_turn_with_server_vad(harness: Harness) -> None:
    """Speech then silence: the VAD ends the turn, it is transcribed, and the answer comes back spoken."""
    async with _client(harness).realtime.connect(model="voice") as conn:
        await recv(conn)
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        await until(conn, "session.updated", [])
        await _send_audio(conn, silence_24k(0.5) + speech_24k("Hello there, how are you") + silence_24k(1.0))
        seen: list[dict] = []
        done = await until(conn, "response.done", seen)
    kinds = [e["type"] for e in seen]
    assert_in_order(
        kinds,
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ],
    )
    started = next(e for e in seen if e["type"] == "input_audio_buffer.speech_started")
    assert 100 <= started["audio_start_ms"] <= 500  # 0.5 s of silence first, minus 300 ms of prefix padding
    heard = next(e for e in seen if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert heard["transcript"].strip()
    transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")["transcript"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta")
    seconds = len(audio) / 48000
    # The scripted voice speaks ~60 ms per character (letters) and less for spaces: plausible length.
    assert transcript and 0.02 * len(transcript) < seconds < 0.2 * len(transcript)
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == transcript
    harness.assert_no_leak()


async def test_barge_in_cancels_the_answer_and_keeps_what_was_spoken(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="voice") as conn:
        await recv(conn)
        await _say(conn, " ".join(["Tell me a long story about a lighthouse."] * 4))
        await conn.response.create()
        seen: list[dict] = []
        await until(conn, "response.output_audio.delta", seen)
        await _send_audio(conn, speech_24k("Stop please"))  # the user talks over the answer
        done = await until(conn, "response.done", seen)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        item = done["response"]["output"][0]
        assert item["status"] == "incomplete"
        spoken = "".join(e["delta"] for e in seen if e["type"] == "response.output_audio_transcript.delta")
        assert item["content"][0]["transcript"] == spoken
        assert any(e["type"] == "input_audio_buffer.speech_started" for e in seen)
        # The client played 0 ms of it: truncating keeps no transcript (nothing was heard).
        await conn.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=0)
        truncated = await until(conn, "conversation.item.truncated", [])
        assert truncated["audio_end_ms"] == 0
        await conn.conversation.item.retrieve(item_id=item["id"])
        retrieved = await until(conn, "conversation.item.retrieved", [])
        assert retrieved["item"]["content"][0]["transcript"] == ""
    harness.assert_no_leak()


async def test_a_malformed_event_gets_an_error_and_the_session_goes_on(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model=CHAT) as conn:
        await recv(conn)
        await conn.send_raw("{not json")
        error = await until(conn, "error", [])
        assert error["error"]["code"] == "invalid_json"
        await conn.send_raw(json.dumps({"type": "response.explode", "event_id": "evt_1"}))
        error = await until(conn, "error", [])
        assert error["error"]["event_id"] == "evt_1" and error["error"]["param"] == "type"
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        assert (await until(conn, "error", []))["error"]["param"] == "audio"
        await conn.send_raw(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                }
            )
        )
        assert (await until(conn, "error", []))["error"]["param"] == "session.audio.input.format"
        await conn.input_audio_buffer.commit()
        assert (await until(conn, "error", []))["error"]["code"] == "input_audio_buffer_commit_empty"
        await conn.response.cancel()
        assert (await until(conn, "error", []))["error"]["code"] == "response_cancel_not_active"
        # Still serving:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        updated = await until(conn, "session.updated", [])
        assert updated["session"]["output_modalities"] == ["text"]


async def test_a_session_closed_mid_response_leaks_nothing(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="voice") as conn:
        await recv(conn)
        await _say(conn, " ".join(["Talk about the sea."] * 8))
        await conn.response.create()
        await until(conn, "response.output_audio.delta", [])
    harness.assert_no_leak(timeout=10)
    # The answer was paused, not left generating (it would run for many seconds at 40 tokens/s): within
    # 3 s every unit is idle (a speech unit may finish the sentence it was given).
    deadline = time.monotonic() + 3
    while any(i["state"] == "busy" for i in harness.live_instances()):
        assert time.monotonic() < deadline, harness.live_instances()
        await asyncio.sleep(0.05)


async def test_api_keys_on_the_socket() -> None:
    settings = _settings()
    from pydantic import SecretStr

    settings.auth.api_keys = [SecretStr("sk-right")]
    harness = Harness(settings).start()
    try:
        async with _client(harness, "sk-right").realtime.connect(model=CHAT) as conn:
            assert (await recv(conn))["type"] == "session.created"
        with pytest.raises(Exception, match="401"):
            async with _client(harness, "sk-wrong").realtime.connect(model=CHAT) as conn:
                await recv(conn)
        # Browsers cannot set headers on a WebSocket: the key rides in a subprotocol.
        url = harness.base_url.replace("http", "ws") + f"/realtime?model={CHAT}"
        async with websockets.connect(
            url, subprotocols=["realtime", "openai-insecure-api-key.sk-right"]
        ) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(
                url.replace(CHAT, "no-such-model"), subprotocols=["openai-insecure-api-key.sk-right"]
            ):
                pass
    finally:
        harness.stop()


async def test_an_audio_item_created_by_the_client_is_transcribed_and_answered(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="voice") as conn:
        await recv(conn)
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None}},
            }
        )
        await until(conn, "session.updated", [])
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": b64(speech_24k("Good morning to you"))}],
            }
        )
        seen: list[dict] = []
        heard = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
        done = await until(conn, "conversation.item.done", seen)
        assert heard["transcript"] and done["item"]["content"][0]["transcript"] == heard["transcript"]
        assert "audio" not in done["item"]["content"][0]
        await conn.response.create()
        answer = await until(conn, "response.done", seen)
        # The scripted model repeats the words of its prompt: the transcript reached it.
        text = answer["response"]["output"][0]["content"][0]["text"]
        assert heard["transcript"].split()[0].strip(".,").lower() in text.lower()
    harness.assert_no_leak()


async def test_a_silent_client_is_closed_after_the_idle_timeout() -> None:
    settings = _settings()
    settings.realtime.idle_timeout = 0.5
    harness = Harness(settings).start()
    try:
        async with _client(harness).realtime.connect(model=CHAT) as conn:
            await recv(conn)
            error = await until(conn, "error", [], wait=5)
            assert error["error"]["code"] == "session_idle_timeout"
            with pytest.raises(websockets.ConnectionClosed):
                await conn.recv_bytes()
        harness.assert_no_leak()
    finally:
        harness.stop()


async def test_session_update_refuses_an_unknown_voice_and_keeps_the_old_settings(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="voice") as conn:
        created = await recv(conn)
        voice = created["session"]["audio"]["output"]["voice"]
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {"output": {"voice": "no-such-voice"}},
            }
        )
        error = await until(conn, "error", [])
        assert error["error"]["code"] == "invalid_voice"
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 5})
        updated = await until(conn, "session.updated", [])
        assert updated["session"]["audio"]["output"]["voice"] == voice
        assert updated["session"]["instructions"] == ""  # the refused update changed nothing


async def test_a_response_the_device_cannot_take_fails_cleanly(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model=CHAT) as conn:
        await recv(conn)
        await _say(conn, "word " * 2000)  # far beyond the p256 prefill window
        await conn.response.create(response={"output_modalities": ["text"]})
        seen: list[dict] = []
        done = await until(conn, "response.done", seen)
        error = next(e for e in seen if e["type"] == "error")
        assert error["error"]["code"] == "context_length_exceeded"
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["code"] == "context_length_exceeded"
        # The session goes on.
        await _say(conn, "Hello")
        await conn.response.create(response={"output_modalities": ["text"]})
        assert (await until(conn, "response.done", []))["response"]["status"] == "completed"
    harness.assert_no_leak()


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def test_function_tools_round_trip(harness: Harness) -> None:
    async with _client(harness).realtime.connect(model="voice") as conn:
        await recv(conn)
        await conn.session.update(session={"type": "realtime", "tools": [WEATHER], "tool_choice": "required"})
        await until(conn, "session.updated", [])
        await _say(conn, "What is the weather in Paris?")
        await conn.response.create()
        seen: list[dict] = []
        done = await until(conn, "response.done", seen)
        kinds = [e["type"] for e in seen]
        assert_in_order(
            kinds,
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.done",
            ],
        )
        call = next(e for e in seen if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "get_weather" and isinstance(json.loads(call["arguments"])["city"], str)
        assert done["response"]["status"] == "completed"
        output = done["response"]["output"]
        assert [item["type"] for item in output] == ["function_call"]  # no empty spoken message
        assert not any(e["type"] == "response.output_audio.delta" for e in seen)
        # The client runs the function and hands the result back; the next answer is spoken.
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": json.dumps({"sky": "sunny", "celsius": 21}),
            }
        )
        await until(conn, "conversation.item.done", [])
        await conn.session.update(session={"type": "realtime", "tool_choice": "none"})
        await until(conn, "session.updated", [])
        await conn.response.create()
        seen = []
        answer = await until(conn, "response.done", seen)
        assert answer["response"]["output"][0]["type"] == "message"
        assert answer["response"]["output"][0]["content"][0]["transcript"]
        assert any(e["type"] == "response.output_audio.delta" for e in seen)
    harness.assert_no_leak()


def test_the_first_spoken_piece_ends_at_the_first_clause_and_later_ones_at_sentences() -> None:
    from stackflow_openai.realtime.responder import SentenceSplitter

    text = "Sure, here is what I know. It will be mild today, with some clouds. Yes. And wind from the west"
    splitter, pieces = SentenceSplitter(), []
    for start in range(0, len(text), 3):  # deltas cut anywhere
        pieces += splitter.feed(text[start : start + 3])
    pieces += splitter.flush()
    assert pieces == [
        "Sure, ",  # spoken while the model goes on: the first audio as early as melotts itself would give it
        "here is what I know. ",
        "It will be mild today, with some clouds. ",
        "Yes. And wind from the west",  # "Yes." alone is not worth a request of its own
    ]
    assert "".join(pieces) == text
