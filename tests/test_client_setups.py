"""Setup-data builders: the fields each unit needs (protocol §4.1, §5.4, §5.5)."""

from __future__ import annotations

import json

from stackflow_openai.stackflow import (
    asr_setup,
    encode_request,
    llm_setup,
    melotts_setup,
    tts_setup,
    vlm_setup,
    whisper_setup,
)


def test_llm_setup_sets_format_input_output_and_enable_flags() -> None:
    setup = llm_setup(
        "qwen2.5-0.5B-p256-ax630c",
        system_prompt="Be {brief}.",
        max_token_len=1023,
        temperature=0.7,
        top_p=0.9,
    )
    assert setup == {
        "model": "qwen2.5-0.5B-p256-ax630c",
        "response_format": "llm.utf-8.stream",
        "input": "llm.utf-8",
        "enoutput": True,
        "max_token_len": 1023,
        "prompt": "Be {brief}.",
        "enable_temperature": True,
        "temperature": 0.7,
        "enable_top_p_sampling": True,
        "top_p": 0.9,
    }


def test_llm_setup_without_sampling_sends_no_sampling_field() -> None:
    # Not even a false enable flag: it would override a descriptor that turns sampling on.
    setup = llm_setup("m", system_prompt="", max_token_len=127, stream=False)
    assert setup["response_format"] == "llm.utf-8"
    assert not [key for key in setup if "temperature" in key or "top_" in key]
    assert None not in setup.values()
    wire = encode_request({"request_id": "1", "work_id": "llm", "action": "setup", "data": setup})
    assert b"null" not in wire


def test_llm_setup_top_k_turns_its_flag_on() -> None:
    setup = llm_setup("m", system_prompt="", max_token_len=127, top_k=40)
    assert (setup["enable_top_k_sampling"], setup["top_k"]) == (True, 40)


def test_vlm_setup_uses_the_vlm_tag() -> None:
    setup = vlm_setup("internvl2.5-1B-364-ax630c", system_prompt="x", max_token_len=1023)
    assert (setup["response_format"], setup["input"]) == ("vlm.utf-8.stream", "vlm.utf-8")


def test_melotts_uses_a_stream_format_and_tts_a_non_stream_one() -> None:
    mel = melotts_setup("melotts-en-us", speed=1.2)
    assert (mel["response_format"], mel["input"], mel["enoutput"], mel["spacker_speed"]) == (
        "tts.pcm.stream.base64",
        "tts.utf-8",
        True,
        1.2,
    )
    tts = tts_setup("single-speaker-english-fast")
    assert (tts["response_format"], tts["input"], tts["enoutput"]) == ("tts.pcm.base64", "tts.utf-8", True)
    assert "stream" not in tts["response_format"]


def test_speech_to_text_setups_carry_their_unit_tag_in_input() -> None:
    whisper = whisper_setup("whisper-tiny", "en")
    assert whisper == {
        "model": "whisper-tiny",
        "response_format": "asr.utf-8",
        "input": "whisper.pcm.stream.base64",
        "language": "en",
        "enoutput": True,
    }
    asr = asr_setup("sherpa-ncnn-streaming-zipformer-20M-2023-02-17")
    assert "asr" in asr["input"] and asr["response_format"] == "asr.utf-8.stream"
    assert asr_setup("sense-voice-small", stream=False)["response_format"] == "asr.utf-8"


def test_setups_round_trip_through_the_codec() -> None:
    for setup in (llm_setup("m", system_prompt="{x}\\", max_token_len=9), whisper_setup("w", "zh")):
        msg = {"request_id": "s1", "work_id": "llm", "action": "setup", "object": "llm.setup", "data": setup}
        assert json.loads(encode_request(msg))["data"] == setup
