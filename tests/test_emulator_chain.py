"""Chained inference between units (asr/whisper → llm → melotts) over the raw protocol.

On the device every output is published on its instance's out port, whatever `enoutput` says, and a
unit that names that work_id in its setup `input` or through `link` feeds it to its own handler; the
chained output keeps the subscriber's own connection and request_id (docs/protocol-notes.md 27-31).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from emulator_helpers import (
    SETUPS,
    RawClient,
    b64,
    client_for,
    jpeg_bytes,
    silence_pcm,
    started_emulator,
    text_of,
    tone_pcm,
    wav_bytes,
)
from stackflow_openai.emulator import Emulator, load_catalogue
from stackflow_openai.emulator.engines.scripted import render_speech, scripted_answer, transcribe_scripted

MELOTTS_SPEED = next(m for m in load_catalogue() if m.mode == "melotts-en-us").mode_param["spacker_speed"]
SPEECH = tone_pcm(1.2, 330) + silence_pcm(0.1) + tone_pcm(0.8, 520)
TRANSCRIPT = transcribe_scripted(SPEECH, "en")


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with started_emulator() as running:  # dev units, scripted engine without delays
        yield running


async def setup(client: RawClient, unit: str, **overrides: Any) -> tuple[str, str]:
    """Set a unit up; returns its work_id and the setup's request_id."""
    rid = await client.send(unit, "setup", f"{unit}.setup", {**SETUPS[unit], **overrides})
    reply = await client.recv_for(rid)
    assert reply["error"]["code"] == 0, reply
    return str(reply["work_id"]), rid


async def say(client: RawClient, whisper: str, pcm: bytes = SPEECH) -> str:
    return await client.send(whisper, "inference", "whisper.wav.base64", b64(wav_bytes(pcm)))


def speech_of(messages: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(base64.b64decode(m["data"]["delta"]), m["data"]["finish"]) for m in messages]


def test_the_scripted_audio_says_something() -> None:
    assert len(TRANSCRIPT.split()) >= 3  # the tests below would prove little on an empty transcript


async def test_whisper_feeds_the_llm_named_in_its_setup_input(emu: Emulator) -> None:
    async with client_for(emu) as mic, client_for(emu) as chat:
        whisper, _ = await setup(mic, "whisper")
        llm, llm_setup = await setup(chat, "llm", input=["llm.utf-8", whisper])
        spoken = await say(mic, whisper)
        heard = await mic.recv()
        assert (heard["request_id"], heard["work_id"], heard["data"]) == (spoken, whisper, TRANSCRIPT + ".")
        answer = await chat.stream()
        # The llm's own connection and setup request_id: a published output retargets nothing.
        assert {(m["request_id"], m["work_id"], m["object"]) for m in answer} == {
            (llm_setup, llm, "llm.utf-8.stream")
        }
        assert text_of(answer) == scripted_answer(TRANSCRIPT + ".")
        await mic.expect_silence()
        assert (await chat.call(llm, "taskinfo"))["data"]["inputs"] == ["llm.utf-8", whisper]


async def test_asr_link_feeds_only_finals_and_link_retargets_the_output(emu: Emulator) -> None:
    async with client_for(emu) as mic, client_for(emu) as chat, client_for(emu) as control:
        asr, _ = await setup(mic, "asr")
        llm, llm_setup = await setup(chat, "llm")
        reply = await control.call(llm, "link", "work_id", asr)
        assert (reply["error"]["code"], reply["work_id"]) == (0, llm)
        # Speech then 1.5 s of silence: partials (finish false), then the final at the endpoint.
        await mic.send(asr, "inference", "asr.pcm.base64", b64(SPEECH + silence_pcm(1.5)))
        heard = await mic.stream()
        assert [m["data"]["finish"] for m in heard][-1] is True and len(heard) >= 2
        final = heard[-1]["data"]["delta"]
        # `link` moved the llm's output to the linking connection; the request_id is still the setup's.
        answer = await control.stream()
        assert {m["request_id"] for m in answer} == {llm_setup}
        assert text_of(answer) == scripted_answer(final)  # one answer, to the final only
        await control.expect_silence()
        await chat.expect_silence()


async def test_llm_link_feeds_melotts_which_ends_with_a_finish(emu: Emulator) -> None:
    async with client_for(emu) as chat, client_for(emu) as speaker:
        llm, _ = await setup(chat, "llm")
        melotts, tts_setup = await setup(speaker, "melotts")
        assert (await speaker.call(melotts, "link", "work_id", llm))["error"]["code"] == 0
        await chat.send(llm, "inference", "llm.utf-8", "Tell me, please, a story")
        answer = text_of(await chat.stream())
        assert answer == scripted_answer("Tell me, please, a story")
        audio = await speaker.stream()
        assert {(m["request_id"], m["work_id"], m["object"]) for m in audio} == {
            (tts_setup, melotts, "tts.pcm.stream.base64")
        }
        # The deltas are gathered into sentences at punctuation; the llm's finish flushes the rest.
        assert speech_of(audio) == [(render_speech(answer, MELOTTS_SPEED), False), (b"", True)]
        await speaker.expect_silence()


async def test_three_stages_with_quiet_upstream_units(emu: Emulator) -> None:
    """whisper → llm → melotts with enoutput false on both upstream units: only the audio comes out."""
    async with client_for(emu) as mic, client_for(emu) as chat, client_for(emu) as speaker:
        whisper, _ = await setup(mic, "whisper", enoutput=False)
        llm, _ = await setup(chat, "llm", input=whisper, enoutput=False)
        melotts, tts_setup = await setup(speaker, "melotts", input=["tts.utf-8", llm])
        await say(mic, whisper)
        audio = await speaker.stream()
        answer = scripted_answer(TRANSCRIPT + ".")
        assert speech_of(audio) == [(render_speech(answer, MELOTTS_SPEED), False), (b"", True)]
        assert {(m["request_id"], m["work_id"]) for m in audio} == {(tts_setup, melotts)}
        await mic.expect_silence()
        await chat.expect_silence()


async def test_non_stream_llm_answer_is_spoken_whole(emu: Emulator) -> None:
    async with client_for(emu) as chat, client_for(emu) as speaker:
        llm, _ = await setup(chat, "llm", response_format="llm.utf-8", enoutput=False)
        melotts, _ = await setup(speaker, "melotts", input=llm)
        await chat.send(llm, "inference", "llm.utf-8", "Hello there")
        audio = await speaker.stream()
        answer = scripted_answer("Hello there")
        assert {m["work_id"] for m in audio} == {melotts}
        assert speech_of(audio) == [(render_speech(answer, MELOTTS_SPEED), False), (b"", True)]


async def test_unlink_stops_the_flow(emu: Emulator) -> None:
    async with client_for(emu) as mic, client_for(emu) as chat:
        whisper, _ = await setup(mic, "whisper")
        llm, _ = await setup(chat, "llm", input=["llm.utf-8", whisper])
        assert (await chat.call(llm, "unlink", "work_id", whisper))["error"]["code"] == 0
        assert (await chat.call(llm, "taskinfo"))["data"]["inputs"] == ["llm.utf-8"]
        await say(mic, whisper)
        assert (await mic.recv())["data"] == TRANSCRIPT + "."
        await chat.expect_silence()
        # The llm itself still answers its user input.
        await chat.send(llm, "inference", "llm.utf-8", "still there")
        assert text_of(await chat.stream()) == scripted_answer("still there")


async def test_exit_of_the_upstream_ends_the_flow_until_its_ports_return(emu: Emulator) -> None:
    """The subscription is to the out-port URL. A new instance of another unit on the freed ports
    publishes elsewhere; a new instance of the same unit on them feeds the old subscriber again."""
    async with client_for(emu) as mic, client_for(emu) as chat:
        whisper, _ = await setup(mic, "whisper")
        llm, _ = await setup(chat, "llm", input=whisper)
        assert (await mic.call(whisper, "exit"))["error"]["code"] == 0
        assert (await chat.call(llm, "link", "work_id", whisper))["error"]["code"] == -20  # gone
        asr, _ = await setup(mic, "asr", response_format="asr.utf-8")
        await mic.send(asr, "inference", "asr.pcm.base64", b64(SPEECH + silence_pcm(1.5)))
        assert (await mic.recv())["work_id"] == asr
        await chat.expect_silence()
        assert (await mic.call(asr, "exit"))["error"]["code"] == 0
        again, _ = await setup(mic, "whisper")
        assert again != whisper
        await say(mic, again)
        assert text_of(await chat.stream()) == scripted_answer(TRANSCRIPT + ".")


async def test_exit_of_the_subscriber_ends_the_flow(emu: Emulator) -> None:
    async with client_for(emu) as mic, client_for(emu) as chat:
        whisper, _ = await setup(mic, "whisper")
        llm, _ = await setup(chat, "llm", input=whisper)
        assert (await chat.call(llm, "exit"))["error"]["code"] == 0
        await say(mic, whisper)
        assert (await mic.recv())["data"] == TRANSCRIPT + "."
        await chat.expect_silence()


async def test_whisper_cannot_be_linked_to_an_llm(emu: Emulator) -> None:
    """llm `link` knows "asr" and "kws" only: a whisper work_id matches neither (-20, not listed)."""
    async with client_for(emu) as client:
        whisper, _ = await setup(client, "whisper")
        llm, _ = await setup(client, "llm")
        reply = await client.call(llm, "link", "work_id", whisper)
        assert (reply["error"]["code"], reply["error"]["message"]) == (-20, "link false")
        assert (await client.call(llm, "taskinfo"))["data"]["inputs"] == ["llm.utf-8"]
        await say(client, whisper)
        assert (await client.recv())["work_id"] == whisper
        await client.expect_silence()


async def test_llm_queue_of_three_applies_to_chained_input(emu: Emulator) -> None:
    """Five utterances while the llm is busy: one runs, three wait, the fifth is dropped."""
    emu.faults.token_delay = 0.02
    async with client_for(emu) as mic, client_for(emu) as chat:
        whisper, _ = await setup(mic, "whisper", enoutput=False)
        llm, _ = await setup(chat, "llm", input=whisper)
        for _ in range(5):
            await say(mic, whisper)
        streams = [await chat.stream(wait=10) for _ in range(4)]
        assert [text_of(s) for s in streams] == [scripted_answer(TRANSCRIPT + ".")] * 4
        assert {m["work_id"] for s in streams for m in s} == {llm}
        await chat.expect_silence(1.0)


async def test_vlm_takes_an_asr_final_with_its_held_image(emu: Emulator) -> None:
    async with client_for(emu) as mic, client_for(emu) as chat:
        asr, _ = await setup(mic, "asr", enoutput=False)
        vlm, vlm_setup = await setup(chat, "vlm", input=["vlm.utf-8", asr])
        await chat.send(vlm, "inference", "vlm.jpeg.base64", b64(jpeg_bytes()), request_id="img")
        await chat.expect_silence(0.1)
        await mic.send(asr, "inference", "asr.pcm.base64", b64(SPEECH + silence_pcm(1.5)))
        answer = await chat.stream()
        assert {m["request_id"] for m in answer} == {"img"}  # the jpeg inference retargeted it
        assert text_of(answer).startswith("I see 1 image.")
        assert vlm_setup != "img"


async def test_cosy_voice_speaks_a_linked_llm_answer_whole_and_refuses_a_vlm_link() -> None:
    cosy = {"model": "CosyVoice2-0.5B-ax650", "response_format": "tts.pcm.stream.base64",
            "input": "tts.utf-8", "enoutput": True, "audio_rate": 16000}  # fmt: skip
    async with started_emulator(board="ax650") as emu, client_for(emu) as chat, client_for(emu) as speaker:
        llm, _ = await setup(chat, "llm", model="qwen2.5-0.5B-Int4-ax650", enoutput=False)
        vlm, _ = await setup(chat, "vlm", model="smolvlm-256M-ax650")
        reply = await speaker.call("cosy_voice", "setup", "cosy_voice.setup", cosy)
        voice = reply["work_id"]
        assert (await speaker.call(voice, "link", "work_id", vlm))["error"]["code"] == -20  # `link`: llm only
        assert (await speaker.call(voice, "link", "work_id", llm))["error"]["code"] == 0
        await chat.send(llm, "inference", "llm.utf-8", "Good morning, friend")
        audio = await speaker.stream()
        # The stream is reassembled by index and spoken as one utterance once the llm finishes.
        answer = scripted_answer("Good morning, friend")
        assert b"".join(pcm for pcm, _ in speech_of(audio)) == render_speech(answer)
        assert {m["request_id"] for m in audio} == {reply["request_id"]}
