"""melotts, tts, whisper and asr (protocol §5.1, §5.4, §5.5), including stream-input errors.

These are the `main` generation's units (tts 1.6, melotts 1.10); `dev`'s differences are in
test_emulator_boards.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from emulator_helpers import (
    RawClient,
    b64,
    client_fixture,  # noqa: F401 (a pytest fixture, used by name)
    client_for,
    silence_pcm,
    started_emulator,
    tone_pcm,
    wav_bytes,
)
from stackflow_openai.backends.stackflow_speech import tts_segments
from stackflow_openai.emulator import Emulator, ScriptedEngine, load_catalogue
from stackflow_openai.emulator.engines.scripted import ScriptedTtsSession, render_speech, transcribe_scripted
from stackflow_openai.stackflow.models import ModelDescriptor

RATE = 16000


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with started_emulator(units="main") as running:
        yield running


# melotts speaks at its descriptor's `spacker_speed` unless the setup says otherwise (1.2 for en-us).
MELOTTS_SPEED = next(m for m in load_catalogue() if m.mode == "melotts-en-us").mode_param["spacker_speed"]


def melotts_speech(text: str) -> bytes:
    return render_speech(text, MELOTTS_SPEED)


def pcm_of(message: dict[str, Any]) -> bytes:
    data = message["data"]
    return base64.b64decode(data["delta"] if isinstance(data, dict) else data)


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


# ----------------------------------------------------------------------------------- melotts
async def test_melotts_stream_one_message_per_segment_and_empty_final(client: RawClient) -> None:
    work_id = await client.setup("melotts")
    rid = await client.send(work_id, "inference", "tts.utf-8", "Hello there. How are you?")
    messages = await client.stream()
    assert [(m["data"]["index"], m["data"]["finish"]) for m in messages] == [
        (0, False),
        (1, False),
        (2, True),
    ]
    assert pcm_of(messages[0]) == melotts_speech("Hello there.")
    assert pcm_of(messages[1]) == melotts_speech(" How are you?")
    assert messages[2]["data"]["delta"] == ""  # the text ended on punctuation
    assert {(m["request_id"], m["work_id"], m["object"]) for m in messages} == {
        (rid, work_id, "tts.pcm.stream.base64")
    }
    assert 0.5 < seconds(pcm_of(messages[0])) < 1.5  # plausible speech length at 16 kHz


async def test_melotts_stream_final_holds_the_remainder_with_a_period(client: RawClient) -> None:
    work_id = await client.setup("melotts")
    await client.send(work_id, "inference", "tts.utf-8", "One, two and three")
    messages = await client.stream()
    assert [pcm_of(m) for m in messages] == [melotts_speech("One,"), melotts_speech(" two and three.")]
    assert len(pcm_of(messages[1])) > len(pcm_of(messages[0]))  # longer text, longer audio


async def test_melotts_non_stream_returns_only_the_final_segment(client: RawClient) -> None:
    work_id = await client.setup("melotts", response_format="tts.base64.wav")
    await client.send(work_id, "inference", "tts.utf-8", "Hello there. How are you?")
    assert (await client.recv())["data"] == ""  # device bug: punctuated text returns nothing
    await client.send(work_id, "inference", "tts.utf-8", "Hello. Good bye")
    assert pcm_of(await client.recv()) == melotts_speech(" Good bye.")
    await client.expect_silence()


async def test_melotts_stream_input_is_spoken_chunk_by_chunk(client: RawClient) -> None:
    work_id = await client.setup("melotts")
    await client.send(
        work_id, "inference", "tts.utf-8.stream", {"delta": "First part. Sec", "index": 0, "finish": False}
    )
    first = await client.recv()
    assert (pcm_of(first), first["data"]["finish"]) == (melotts_speech("First part."), False)
    await client.expect_silence()  # "Sec" waits for more text
    # melotts reads `finish` as "contains true": a missing one means "not finished".
    await client.send(work_id, "inference", "tts.utf-8.stream", {"delta": "ond", "index": 1})
    await client.expect_silence()
    await client.send(work_id, "inference", "tts.utf-8.stream", {"delta": "", "index": 2, "finish": True})
    final = await client.recv()
    assert (pcm_of(final), final["data"]["finish"]) == (melotts_speech(" Second."), True)


async def test_melotts_ignores_empty_none_and_bad_base64(client: RawClient) -> None:
    work_id = await client.setup("melotts")
    await client.send(work_id, "inference", "tts.utf-8", "")
    await client.send(work_id, "inference", "tts.utf-8", "None")
    await client.send(work_id, "inference", "tts.utf-8.base64", "!!not base64!!")
    await client.expect_silence()


async def test_melotts_audio_rate_resamples(client: RawClient) -> None:
    work_id = await client.setup("melotts", audio_rate=8000)
    await client.send(work_id, "inference", "tts.utf-8", "Hello there.")
    messages = await client.stream()
    assert abs(len(pcm_of(messages[0])) * 2 - len(melotts_speech("Hello there."))) <= 4


# ----------------------------------------------------------------------------------- tts
async def test_tts_non_stream_one_message_per_segment_without_end_marker(client: RawClient) -> None:
    work_id = await client.setup("tts")
    await client.send(work_id, "inference", "tts.utf-8", "Hi. Good day, friend")
    messages = [await client.recv() for _ in range(3)]
    assert [pcm_of(m) for m in messages] == [render_speech(t) for t in ("Hi.", " Good day,", " friend.")]
    await client.expect_silence()


async def test_tts_stream_sends_empty_finished_deltas(client: RawClient) -> None:
    work_id = await client.setup("tts", response_format="tts.pcm.stream.base64")
    await client.send(work_id, "inference", "tts.utf-8", "Hi. There.")
    messages = [await client.recv() for _ in range(2)]
    assert [m["data"] for m in messages] == [{"delta": "", "finish": True, "index": 0}] * 2
    await client.expect_silence()


TTS_SPLITS = {
    "Hello. ": ["Hello.", " ."],  # a blank remainder is spoken too, with its "."
    "One.\nTwo.\n": ["One.", "\nTwo.", "\n."],
    "Hi.. There,\t": ["Hi.", ".", " There,", "\t."],  # punctuation alone is a segment
    "你好，世界。再见": ["你好，", "世界。", "再见."],
    "No punctuation": ["No punctuation."],
}


@pytest.mark.parametrize("text", list(TTS_SPLITS))
async def test_tts_sends_one_message_per_device_segment_as_the_gateway_counts_them(
    client: RawClient, text: str
) -> None:
    work_id = await client.setup("tts")
    await client.send(work_id, "inference", "tts.utf-8", text)
    expected = TTS_SPLITS[text]
    messages = [await client.recv() for _ in expected]
    await client.expect_silence()
    assert [pcm_of(m) for m in messages] == [render_speech(t) for t in expected]
    assert tts_segments(text) == expected  # the gateway reads exactly this many messages


async def test_melotts_speaks_a_blank_remainder_in_its_final_message(client: RawClient) -> None:
    work_id = await client.setup("melotts")
    await client.send(work_id, "inference", "tts.utf-8", "Hello. ")
    messages = await client.stream()
    assert [pcm_of(m) for m in messages] == [melotts_speech("Hello."), melotts_speech(" .")]


@pytest.mark.parametrize("unit", ["melotts", "tts"])
async def test_tts_units_ignore_the_text_none(client: RawClient, unit: str) -> None:
    work_id = await client.setup(unit)
    await client.send(work_id, "inference", "tts.utf-8", "None")
    await client.expect_silence()


# ----------------------------------------------------------------------------------- whisper
SPEECH = tone_pcm(1.0) + silence_pcm(0.3) + tone_pcm(0.8, 660)


async def test_whisper_wav_gives_one_message_with_a_period(client: RawClient) -> None:
    work_id = await client.setup("whisper")
    rid = await client.send(work_id, "inference", "whisper.wav.base64", b64(wav_bytes(SPEECH)))
    reply = await client.recv()
    assert (reply["data"], reply["object"], reply["request_id"]) == (
        transcribe_scripted(SPEECH, "en") + ".",
        "asr.utf-8",
        rid,
    )
    await client.expect_silence()


async def test_whisper_strips_up_to_the_first_data_chunk(client: RawClient) -> None:
    work_id = await client.setup("whisper", input="whisper.pcm.base64")
    await client.send(work_id, "inference", "whisper.pcm.base64", b64(SPEECH))
    raw = (await client.recv())["data"]
    await client.send(
        work_id, "inference", "whisper.wav.base64", b64(b"RIFFjunkdata\x00\x00\x00\x00" + SPEECH)
    )
    assert (await client.recv())["data"] == raw
    await client.send(
        work_id, "inference", "whisper.wav.base64", b64(b"no marker here at all, only " + SPEECH[:64])
    )
    await client.expect_silence()  # no `data` chunk: dropped silently


async def test_whisper_stream_chunks_and_stream_output(client: RawClient) -> None:
    work_id = await client.setup(
        "whisper", response_format="asr.utf-8.stream", input="whisper.pcm.stream.base64"
    )
    encoded = b64(SPEECH)
    chunks = [encoded[i : i + 4096] for i in range(0, len(encoded), 4096)]
    for index, chunk in enumerate(chunks):
        data = {"delta": chunk, "index": index, "finish": index == len(chunks) - 1}
        await client.send(work_id, "inference", "whisper.pcm.stream.base64", data)
    reply = await client.recv()
    assert reply["data"] == {"delta": transcribe_scripted(SPEECH, "en") + ".", "finish": True, "index": 0}


async def test_whisper_silence(client: RawClient) -> None:
    work_id = await client.setup("whisper")
    await client.send(work_id, "inference", "whisper.wav.base64", b64(wav_bytes(silence_pcm(1.0))))
    assert (await client.recv())["data"] == "."  # en/ja: even an empty result is sent
    await client.call(work_id, "exit")
    work_id = await client.setup("whisper", language="zh")
    await client.send(work_id, "inference", "whisper.wav.base64", b64(wav_bytes(silence_pcm(1.0))))
    await client.expect_silence()  # other languages: nothing at all


async def test_whisper_cuts_audio_after_30_seconds(client: RawClient) -> None:
    work_id = await client.setup("whisper")
    late_speech = silence_pcm(31.0) + tone_pcm(2.0)
    await client.send(work_id, "inference", "whisper.wav.base64", b64(wav_bytes(late_speech)))
    assert (await client.recv(wait=10.0))["data"] == "."


# ----------------------------------------------------------------------------------- stream input errors
async def test_stream_input_errors_go_to_the_last_control_request(emu: Emulator) -> None:
    async with client_for(emu) as owner, client_for(emu) as other:
        setup_rid = await owner.send(
            "whisper",
            "setup",
            "whisper.setup",
            {
                "model": "whisper-tiny",
                "response_format": "asr.utf-8",
                "input": "whisper.pcm.stream.base64",
                "language": "en",
                "enoutput": True,
            },
        )
        work_id = (await owner.recv())["work_id"]
        await other.send(
            work_id, "inference", "whisper.pcm.stream.base64", {"delta": "AAAA", "index": 1, "finish": True}
        )
        gap = await owner.recv()  # not to `other`: to the connection of the last control request
        assert (gap["error"], gap["work_id"], gap["request_id"]) == (
            {"code": -25, "message": "Stream data index error."},
            "whisper",
            setup_rid,
        )
        await other.send(work_id, "inference", "whisper.pcm.stream.base64", {"delta": "AAAA", "finish": True})
        assert (await owner.recv())["error"]["code"] == -25  # missing index
        await other.send(work_id, "inference", "whisper.pcm.stream.base64", {"delta": "A*A=", "index": 0})
        bad = await owner.recv()  # a missing finish counts as true: decoded at once, and fails
        assert (bad["error"], bad["work_id"]) == (
            {"code": -23, "message": "Base64 decoding error."},
            "whisper",
        )
        await other.expect_silence()


async def test_missing_finish_counts_as_true(client: RawClient) -> None:
    work_id = await client.setup("llm", response_format="llm.utf-8")
    await client.send(work_id, "inference", "llm.utf-8.stream", {"delta": "hello", "index": 0})
    assert (await client.recv())["data"].startswith("You said 1 word")


async def test_bad_base64_in_llm_gives_minus_23(client: RawClient) -> None:
    work_id = await client.setup("llm")
    await client.send(work_id, "inference", "llm.utf-8.base64", "aGVsbG8\\/")
    reply = await client.recv()
    assert (reply["error"]["code"], reply["work_id"]) == (-23, "llm")


# ----------------------------------------------------------------------------------- asr
async def test_asr_partials_are_cumulative_and_final_needs_trailing_silence(client: RawClient) -> None:
    work_id = await client.setup("asr")
    speech = tone_pcm(0.9) + tone_pcm(0.9, 550)
    half = len(speech) // 2 // 640 * 640
    await client.send(work_id, "inference", "asr.pcm.base64", b64(speech[:half]))
    first = await client.recv()
    await client.send(work_id, "inference", "asr.pcm.base64", b64(speech[half:]))
    second = await client.recv()
    assert first["data"]["finish"] is False and second["data"]["finish"] is False
    assert second["data"]["delta"].startswith(first["data"]["delta"])  # cumulative, not incremental
    assert second["data"]["delta"] == transcribe_scripted(speech, "en").lower()
    await client.send(work_id, "inference", "asr.pcm.base64", b64(silence_pcm(0.6)))
    assert (await client.recv())["data"]["finish"] is False  # 0.6 s of silence: no endpoint yet
    await client.send(work_id, "inference", "asr.pcm.base64", b64(silence_pcm(0.7)))
    partial, final = await client.recv(), await client.recv()
    assert partial["data"]["finish"] is False
    assert final["data"]["delta"] == second["data"]["delta"] + "." and final["data"]["finish"] is True
    assert final["data"]["index"] == partial["data"]["index"] + 1
    await client.send(work_id, "inference", "asr.pcm.base64", b64(silence_pcm(3.0)))
    await client.expect_silence()  # a new utterance of pure silence sends nothing


async def test_asr_input_finish_does_not_flush(client: RawClient) -> None:
    work_id = await client.setup("asr", input="asr.pcm.stream.base64")
    encoded = b64(tone_pcm(1.0))
    await client.send(
        work_id, "inference", "asr.pcm.stream.base64", {"delta": encoded, "index": 0, "finish": True}
    )
    assert (await client.recv())["data"]["finish"] is False
    await client.expect_silence()


SENSE_VOICE = {
    "mode": "sense-voice-small-10s-ax650",
    "type": "asr",
    "capabilities": ["Chinese", "English"],
    "input_type": ["sys.pcm", "asr.pcm.base64"],
    "output_type": ["asr.utf-8"],
    "mode_param": {
        "model_config.sense_voice.model": "model.axmodel",
        "model_config.sense_voice.use_itn": True,
    },
}


@pytest.mark.parametrize("itn", [True, False])
async def test_sense_voice_always_sends_a_final_with_a_period_only_without_itn(
    tmp_path: Path, itn: bool
) -> None:
    (tmp_path / "mode_sense-voice-small-10s-ax650.json").write_text(json.dumps(SENSE_VOICE))
    async with started_emulator(catalogue_dirs=[tmp_path], units="main") as emu, client_for(emu) as client:
        overrides = {} if itn else {"model_config.sense_voice.use_itn": False}
        work_id = await client.setup("asr", model=SENSE_VOICE["mode"], **overrides)
        end = "" if itn else "."
        await client.send(work_id, "inference", "asr.pcm.base64", b64(silence_pcm(1.0)))
        assert (await client.recv())["data"] == {"delta": end, "finish": True, "index": 0}
        await client.send(work_id, "inference", "asr.pcm.base64", b64(SPEECH))
        heard = await client.recv()
        assert heard["data"]["delta"] == transcribe_scripted(SPEECH, "en") + end
        await client.expect_silence()


class FailingTtsEngine(ScriptedEngine):
    """Synthesis always throws, as a broken TTS model would."""

    async def open_tts(self, model: ModelDescriptor, voice: str | None) -> ScriptedTtsSession:
        session = await super().open_tts(model, voice)

        async def broken(text: str, *, speed: float = 1.0) -> bytes:
            raise RuntimeError("synthesis failed")

        session.synthesize = broken  # type: ignore[method-assign]
        return session


@pytest.mark.parametrize("unit", ["melotts", "tts"])
async def test_synthesis_failure_is_minus_11_on_the_instance(unit: str) -> None:
    async with started_emulator(engine=FailingTtsEngine(), units="main") as emu, client_for(emu) as client:
        work_id = await client.setup(unit)
        rid = await client.send(work_id, "inference", "tts.utf-8", "Hi. There")
        failures = [await client.recv(), await client.recv()]  # one per segment, and no finish
        assert {(m["error"]["code"], m["work_id"], m["request_id"]) for m in failures} == {
            (-11, work_id, rid)
        }
        assert failures[0]["error"]["message"] == "Model run failed."
        await client.expect_silence()


async def test_setup_speed_overrides_the_descriptor(client: RawClient) -> None:
    work_id = await client.setup("melotts", spacker_speed=2.0)  # the descriptor says 1.0
    await client.send(work_id, "inference", "tts.utf-8", "Hello there.")
    fast = pcm_of((await client.stream())[0])
    assert fast == render_speech("Hello there.", speed=2.0)
    assert len(fast) < len(render_speech("Hello there."))


async def test_whisper_decodes_an_unknown_language_as_chinese(client: RawClient) -> None:
    # main_whisper `detect_language`: a string not in whisper's table falls back to index 51, "zh".
    results = {}
    for language in ("en", "english"):
        work_id = await client.setup("whisper", language=language)
        await client.send(work_id, "inference", "whisper.pcm.base64", b64(SPEECH))
        results[language] = (await client.recv())["data"]
        await client.call(work_id, "exit")
    assert results["en"].isascii() and not results["english"].isascii()
