"""The emulator per board (ax630c, ax650, axcl) and unit generation (main, dev), on the raw wire.

What each test asserts is the device's behaviour read in StackFlow's sources (docs/protocol-notes.md
16-24); the gateway's handling of it is tested end to end in test_e2e_boards.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from emulator_helpers import b64, client_for, silence_pcm, started_emulator, tone_pcm
from stackflow_openai.emulator.engines.scripted import render_speech, transcribe_scripted

TEXT = "One, two and three"  # a remainder without a closing breakpoint
SUMMER = {"model": "single-speaker-english-fast", "input": "tts.utf-8", "enoutput": True}
MELO_STREAM = {"response_format": "tts.pcm.stream.base64", "input": "tts.utf-8", "enoutput": True}


def pcm_of(message: dict[str, Any]) -> bytes:
    data = message["data"]
    return base64.b64decode(data["delta"] if isinstance(data, dict) else data)


def shape(messages: list[dict[str, Any]]) -> list[tuple[bool, bool]]:
    """(carries audio, finish) per stream message."""
    return [(bool(m["data"]["delta"]), m["data"]["finish"]) for m in messages]


@pytest.mark.parametrize(
    ("board", "units", "expected"),
    [
        ("ax630c", None, ["llm_asr-1.10", "llm_melotts-1.11", "llm_sys-1.6", "llm_tts-1.7"]),
        ("ax630c", "main", ["llm_asr-1.8", "llm_melotts-1.10", "llm_sys-1.6", "llm_tts-1.6"]),
        ("axcl", None, ["llm_asr-1.9", "llm_melotts-1.10", "llm_sys-1.7", "llm_tts-1.6"]),
    ],
)
async def test_version2_lists_the_boards_unit_binaries(
    board: str, units: str | None, expected: list[str]
) -> None:
    units_installed = ["asr", "melotts", "tts"]
    async with (
        started_emulator(board=board, units=units, installed_units=units_installed) as emu,
        client_for(emu) as client,
    ):
        reply = await client.call("sys", "version2")
    assert reply["object"] == "sys.utf-8.stream" and reply["data"] == expected


async def test_ax650_melotts_speaks_at_48khz_unless_the_setup_asks_otherwise() -> None:
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        native = await client.setup("melotts", model="melotts-en-us-ax650", **MELO_STREAM)
        await client.send(native, "inference", "tts.utf-8", "Hello.")
        at_48k = b"".join(pcm_of(m) for m in await client.stream())
        await client.call(native, "exit")
        asked = await client.setup("melotts", model="melotts-en-us-ax650", audio_rate=16000, **MELO_STREAM)
        await client.send(asked, "inference", "tts.utf-8", "Hello.")
        at_16k = b"".join(pcm_of(m) for m in await client.stream())
    expected = len(render_speech("Hello.", 1.2))
    assert len(at_16k) == expected
    assert abs(len(at_48k) - 3 * expected) <= 6  # three times the samples: 3x too slow if played at 16 kHz


async def test_dev_melotts_sends_an_extra_empty_end_after_the_remainder() -> None:
    for units, expected in (
        ("dev", [(True, False), (True, True), (False, True)]),
        ("main", [(True, False), (True, True)]),
    ):
        async with started_emulator(units=units) as emu, client_for(emu) as client:
            work_id = await client.setup("melotts", **MELO_STREAM, model="melotts-en-us")
            await client.send(work_id, "inference", "tts.utf-8", TEXT)
            messages = await client.stream()
            if units == "dev":
                messages += await client.stream()  # the second finish:true
            await client.expect_silence()
        assert shape(messages) == expected, units


async def test_tts_1_7_non_stream_sends_only_the_remainder_then_an_empty_end() -> None:
    async with started_emulator() as emu, client_for(emu) as client:
        work_id = await client.setup("tts", **SUMMER, response_format="tts.pcm.base64")
        await client.send(work_id, "inference", "tts.utf-8", TEXT)  # "One," " two and three."
        first, second = await client.recv(), await client.recv()
        await client.expect_silence()
    assert pcm_of(first) == render_speech(" two and three.") and second["data"] == ""


async def test_tts_1_7_stream_carries_every_segment() -> None:
    async with started_emulator() as emu, client_for(emu) as client:
        work_id = await client.setup("tts", **SUMMER, response_format="tts.pcm.stream.base64")
        await client.send(work_id, "inference", "tts.utf-8", "One. Two.")
        messages = await client.stream()
        await client.expect_silence()
    assert shape(messages) == [(True, False), (True, False), (False, True)]
    assert [pcm_of(m) for m in messages[:2]] == [render_speech("One."), render_speech(" Two.")]


async def test_kokoro_runs_on_tts_1_7_at_its_rate_and_not_on_1_6() -> None:
    kokoro = {
        "model": "kokoro-ax650",
        "response_format": "tts.pcm.stream.base64",
        "input": "tts.utf-8",
        "enoutput": True,
    }
    async with started_emulator(board="ax650", units="main") as emu, client_for(emu) as client:
        reply = await client.call("tts", "setup", "tts.setup", kokoro)
        assert reply["error"]["code"] == -5  # 1.6 knows SummerTTS only
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        work_id = await client.setup("tts", **{**kokoro, "audio_rate": 16000})
        await client.send(work_id, "inference", "tts.utf-8", "Hi.")
        messages = await client.stream()
    assert pcm_of(messages[0]) == render_speech("Hi.")


async def test_cosy_voice_streams_chunks_and_needs_an_existing_prompt_dir() -> None:
    setup = {"model": "CosyVoice2-0.5B-ax650", "response_format": "tts.pcm.stream.base64",
             "input": "tts.utf-8", "enoutput": True, "audio_rate": 16000}  # fmt: skip
    text = "Good morning, this is a longer sentence."
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        missing = await client.call(
            "cosy_voice", "setup", "cosy_voice.setup", {**setup, "prompt_dir": "nobody"}
        )
        assert (missing["error"]["code"], missing["work_id"]) == (-5, "llm")  # sic: copied code
        work_id = (
            await client.call(
                "cosy_voice", "setup", "cosy_voice.setup", {**setup, "prompt_dir": "prompt_data"}
            )
        )["work_id"]
        await client.send(work_id, "inference", "tts.utf-8", text)
        messages = await client.stream()
        non_stream = {**setup, "response_format": "tts.pcm.base64", "audio_rate": 48000}
        native = (await client.call("cosy_voice", "setup", "cosy_voice.setup", non_stream))["work_id"]
        await client.send(native, "inference", "tts.utf-8", text)
        last_only = await client.recv()
    chunks = [pcm_of(m) for m in messages]
    assert len(chunks) > 2 and [m["data"]["finish"] for m in messages][-2:] == [False, True]
    assert b"".join(chunks) == render_speech(text)  # the whole text as one utterance, not cut at ","
    assert 0 < len(pcm_of(last_only)) < 3 * len(render_speech(text)) // len(chunks) + 6  # only the last chunk


async def test_axcl_cmminfo_is_garbage_and_axcl_cmminfo_is_the_card() -> None:
    async with started_emulator(board="axcl") as emu, client_for(emu) as client:
        garbage = [(await client.call("sys", "cmminfo"))["data"] for _ in range(3)]
        card = await client.call("sys", "axcl_cmminfo")
    assert card["object"] == "sys.axcl_cmminfo"
    assert card["data"] == {"total": 7340032, "used": 0, "remain": 7340032, "devid": 0}
    assert any(g["used"] + g["remain"] != g["total"] for g in garbage)
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        assert (await client.call("sys", "axcl_cmminfo"))["error"]["code"] == -3
        assert (await client.call("sys", "cmminfo"))["data"]["total"] == 4194304


async def test_a_model_that_does_not_fit_fails_its_setup_with_minus_5() -> None:
    llm = {"model": "qwen2.5-7B-Int4-ax650", "response_format": "llm.utf-8.stream", "input": "llm.utf-8",
           "enoutput": True, "max_token_len": 1023, "prompt": ""}  # fmt: skip
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        reply = await client.call("llm", "setup", "llm.setup", llm)  # 4439040 KiB of a 4194304 KiB board
        assert reply["error"]["code"] == -5
        small = await client.call("llm", "setup", "llm.setup", {**llm, "model": "qwen2.5-0.5B-Int4-ax650"})
        assert small["error"]["code"] == 0
        memory = (await client.call("sys", "cmminfo"))["data"]
    assert memory["used"] == 560460  # the emulator's table (memory.py), not a descriptor field


async def test_dev_asr_sends_an_empty_final_on_silence_and_no_period() -> None:
    async with started_emulator() as emu, client_for(emu) as client:
        work_id = await client.setup("asr")  # sherpa-ncnn streaming
        await client.send(work_id, "inference", "asr.pcm.base64", b64(silence_pcm(3.0)))
        final = await client.recv()
        assert (final["data"]["delta"], final["data"]["finish"]) == ("", True)  # main sends nothing
        speech = tone_pcm(0.9) + silence_pcm(1.5)
        await client.send(work_id, "inference", "asr.pcm.base64", b64(speech))
        messages = await client.stream()
    assert messages[-1]["data"]["delta"] == transcribe_scripted(tone_pcm(0.9), "en").lower()  # no "."


async def test_dev_sense_voice_sends_each_voiced_segment_then_the_joined_final() -> None:
    async with started_emulator(board="ax650") as emu, client_for(emu) as client:
        work_id = await client.setup(
            "asr", model="sense-voice-small-10s-ax650", response_format="asr.utf-8.stream"
        )
        first, second = tone_pcm(0.9), tone_pcm(0.9, 550)
        await client.send(work_id, "inference", "asr.pcm.base64", b64(first + silence_pcm(1.0) + second))
        messages = await client.stream()
    texts = [transcribe_scripted(first, "en"), transcribe_scripted(second, "en")]
    assert [(m["data"]["delta"], m["data"]["finish"]) for m in messages] == [
        (texts[0], False),
        (texts[1], False),
        (" ".join(texts), True),
    ]
