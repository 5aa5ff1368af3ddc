"""Small pure pieces behind the board support: version2 parsing, memory plausibility, speech rates."""

from __future__ import annotations

from stackflow_openai.backends.stackflow_speech import device_tts_text, output_rate
from stackflow_openai.stackflow.models import CmmInfo, ModelDescriptor
from stackflow_openai.stackflow.setups import cosy_voice_setup, melotts_setup, tts_setup
from stackflow_openai.stackflow.versions import parse_version2


def test_version2_names_parse_into_unit_versions() -> None:
    names = ["llm_sys-1.6", "llm_tts-1.7", "llm_cosy_voice-1.10", "llm_melotts-1.11", "junk", 7, "llm_x-1"]
    assert parse_version2(names) == {"sys": (1, 6), "tts": (1, 7), "cosy_voice": (1, 10), "melotts": (1, 11)}
    assert (1, 10) > (1, 7)  # compared as numbers: "1.10" sorts before "1.7" as a string
    assert parse_version2(None) == {}


def test_memory_reports_are_plausible_only_when_they_add_up() -> None:
    assert CmmInfo(remain=2000, total=3000, used=1000).plausible
    assert not CmmInfo(remain=0, total=0, used=0).plausible  # axcl-smi failed
    assert not CmmInfo(remain=140737488355327, total=65535, used=4294967295).plausible  # stack garbage


def test_every_speech_setup_asks_16khz_and_the_rate_is_read_where_the_unit_reads_it() -> None:
    melo = ModelDescriptor.from_json(
        {"mode": "melotts-en-us-ax650", "type": "tts", "mode_param": {"audio_rate": 48000}}
    )
    summer = ModelDescriptor.from_json({"mode": "single-speaker-fast", "type": "tts", "mode_param": {}})
    cosy = ModelDescriptor.from_json({"mode": "CosyVoice2-0.5B-ax650", "type": "tts", "mode_param": {}})
    for setup in (melotts_setup("m"), tts_setup("t"), tts_setup("t", stream=True), cosy_voice_setup("c")):
        assert setup["audio_rate"] == 16000
    assert output_rate(melo, melotts_setup(melo.mode)) == 16000
    assert output_rate(melo, {}) == 48000  # what the old gateway got, and played 3x too slow
    assert output_rate(cosy, {}) == 48000  # runner/LLM.hpp's default
    assert output_rate(summer, {"audio_rate": 48000}) == 16000  # SummerTTS ignores it
    assert cosy.unit == "cosy_voice" and melo.unit == "melotts" and summer.unit == "tts"


def test_text_closed_for_the_units() -> None:
    assert device_tts_text("One, two and three ", close=True) == "One, two and three."
    assert device_tts_text("Done!", close=True) == "Done!"
    assert device_tts_text("None", close=True) == "None."
    assert device_tts_text("   ", close=True) == ""
