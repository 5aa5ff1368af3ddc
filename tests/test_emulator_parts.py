"""The emulator's building blocks on their own: device string helpers, scripted engine, catalogue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from stackflow_openai.emulator import ScriptedEngine, Timing, load_catalogue, run_emulator
from stackflow_openai.emulator.engines.base import LlmSettings
from stackflow_openai.emulator.engines.scripted import (
    estimate_tokens,
    render_speech,
    scripted_answer,
    scripted_pieces,
    transcribe_scripted,
)
from stackflow_openai.emulator.rawjson import (
    StreamIndexError,
    decode_base64,
    decode_stream,
    extract,
    strip_wav_header,
    unescape,
)
from stackflow_openai.stackflow.models import ModelDescriptor

# ----------------------------------------------------------------------------------- rawjson


def test_extract_returns_raw_values_the_device_way() -> None:
    raw = '{"request_id":"a1","object":"llm.utf-8","data":"say \\"hi\\"\\n","n": 12 ,"o":{"x":{"y":1}}}'
    assert extract(raw, "request_id") == "a1"
    assert extract(raw, "data") == 'say \\"hi\\"\\n'  # still escaped
    assert extract(raw, "n") == "12"
    assert extract(raw, "o") == '{"x":{"y":1}}'
    assert extract(raw, "missing") == ""


def test_extract_quirks() -> None:
    assert extract('{"object":"data","data":"x"}', "data") == ""  # first occurrence is a value
    assert extract('{"data":"ends with \\\\"}', "data") == ""  # runs past its quote: unterminated
    assert extract('{"data":[1,2]}', "data") == "[1"


def test_unescape() -> None:
    assert unescape('a\\nb\\t\\"c\\\\ \\u007b\\u00e9\\/') == 'a\nb\t"c\\ {é/'
    mangled = unescape("\\ud83d\\ude00")  # a surrogate pair is not decoded properly
    assert mangled == "\\ud83d\ude00"  # the high half as literal text, the low half alone
    assert unescape("\\u12") == "\\u12"


def test_decode_base64_device_flavour() -> None:
    assert decode_base64("aGVsbG8=") == b"hello"
    assert decode_base64("aGVsbG8=garbage!!") == b"hello"  # stops at the first '='
    assert decode_base64("aGVs\\/bG8=") is None
    assert decode_base64("") == b""


def test_decode_stream() -> None:
    chunks: dict[int, str] = {}
    assert decode_stream('{"delta":"ab","index":0,"finish":false}', chunks) is None
    assert decode_stream('{"delta":"cd","index":1,"finish":true}', chunks) == "abcd"
    assert chunks == {}
    assert decode_stream('{"delta":"x","index":0}', chunks) == "x"  # no finish: finished
    with pytest.raises(StreamIndexError):
        decode_stream('{"delta":"x","index":2,"finish":true}', chunks)
    with pytest.raises(StreamIndexError):
        decode_stream('{"delta":"x","finish":true}', chunks)


def test_strip_wav_header() -> None:
    assert strip_wav_header(b"RIFF....WAVEfmt data\x04\x00\x00\x00ABCD") == b"ABCD"
    assert strip_wav_header(b"no marker in this payload") is None
    assert strip_wav_header(b"short") is None


# ----------------------------------------------------------------------------------- scripted engine
P256 = ModelDescriptor.from_json(
    {"mode": "qwen2.5-0.5B-p256-ax630c", "type": "llm", "mode_param": {"tokenizer_type": 2}}
)


async def collect(engine: ScriptedEngine, prompt: str, limit: int) -> list[str]:
    session = await engine.open_llm(P256, LlmSettings(system_prompt="Be brief.", max_token_len=1023))
    return [piece async for piece in session.generate(prompt, images=[], max_new_tokens=limit)]


async def test_scripted_llm_is_deterministic_and_respects_the_limit() -> None:
    engine = ScriptedEngine()
    full = await collect(engine, "Where is the market?", 1000)
    assert (
        "".join(full) == scripted_answer("Where is the market?") == "You said 4 words: Where is the market."
    )
    assert full == scripted_pieces("".join(full))
    assert await collect(engine, "Where is the market?", 3) == full[:3]


async def test_prompt_tokens_are_plausible() -> None:
    for tokenizer in ("auto", "estimate"):
        session = await ScriptedEngine(tokenizer=tokenizer).open_llm(
            P256, LlmSettings(system_prompt="You are a helpful assistant.", max_token_len=1023)
        )
        short, long = session.prompt_tokens("Hi"), session.prompt_tokens("word " * 100)
        assert 15 <= short <= 40, (tokenizer, short)
        assert 100 <= long - short <= 200, (tokenizer, long)
    assert estimate_tokens("你好世界") >= 3


def test_scripted_tts_waveform() -> None:
    short, longer = render_speech("Hi."), render_speech("Hello there, friend.")
    assert len(short) % 2 == 0 and len(longer) > 2 * len(short)
    assert any(short)  # not silent
    assert render_speech("Hi.") == short
    assert len(render_speech("Hi.", speed=2.0)) < len(short)


def test_scripted_asr() -> None:
    speech = render_speech("Hello there")
    assert transcribe_scripted(bytes(32000), "en") == ""
    text = transcribe_scripted(speech, "en")
    assert text and text == transcribe_scripted(speech, "en")
    assert text[0].isupper()


def test_realistic_timing_preset() -> None:
    timing = Timing.realistic()
    assert 0.2 <= timing.time_to_first_token <= 3 and 3 <= timing.tokens_per_second <= 12
    assert timing.setup_delay >= 5
    assert Timing() == Timing(0, 0, 0, 0, 0)


# ----------------------------------------------------------------------------------- catalogue
def test_builtin_catalogue() -> None:
    models = {d.mode: d for d in load_catalogue()}
    required = {
        "qwen2.5-0.5B-p256-ax630c",
        "qwen2.5-0.5B-prefill-20e",
        "internvl2.5-1B-364-ax630c",
        "melotts-en-us",
        "melotts-zh-cn",
        "melotts-ja-jp",
        "single-speaker-english-fast",
        "single-speaker-fast",
        "whisper-tiny",
        "whisper-base",
        "sherpa-ncnn-streaming-zipformer-20M-2023-02-17",
    }
    assert required <= models.keys()
    # The device's own files: cmm_size only where StackFlow's descriptor declares it.
    assert {m for m, d in models.items() if "cmm_size" in d.mode_param} == {
        "qwen2.5-HA-0.5B-ctx-ax630c",
        "internvl3-1B-448-ax630c",
        "qwen3-vl-2B-Int4-ax630c",
    }
    assert models["qwen2.5-0.5B-prefill-20e"].kv_cache_len == 1023


def test_board_catalogues_are_the_branch_files_byte_for_byte() -> None:
    """Every built-in file is StackFlow's (dev for ax630c/ax650, axcl for axcl): checked against the
    mirror when it is there, else against the facts the emulator's board rules rest on."""
    from stackflow_openai.emulator.catalogue import board_catalogue_dir

    boards = {b: {d.mode for d in load_catalogue(board=b)} for b in ("ax630c", "ax650", "axcl")}
    assert len(boards["ax630c"]) == 52 and len(boards["ax650"]) == 41 and len(boards["axcl"]) == 34
    assert {"kokoro-ax650", "CosyVoice2-0.5B-ax650", "melotts-en-us-ax650"} <= boards["ax650"]
    assert {"CosyVoice2-0.5B-axcl", "qwen3-1.7B-Int8-ctx-axcl", "melotts-en-us-axcl"} <= boards["axcl"]
    assert not any(mode.endswith("-ax650") for mode in boards["ax630c"])
    mirror = Path("/work/.mirror/m5stack+StackFlow/repo")
    if not mirror.is_dir():
        return
    for board, branch in (("ax630c", "dev"), ("ax650", "dev"), ("axcl", "axcl")):
        listing = subprocess.run(["git", "--git-dir", str(mirror), "ls-tree", "-r", "--name-only", branch],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        paths = {p.rsplit("/", 1)[-1]: p for p in listing if p.rsplit("/", 1)[-1].startswith("mode_")}
        for file in board_catalogue_dir(board).glob("*.json"):
            command = ["git", "--git-dir", str(mirror), "show", f"{branch}:{paths[file.name]}"]
            original = subprocess.run(command, capture_output=True, check=True).stdout
            assert file.read_bytes() == original, file


def test_extra_catalogue_directory_adds_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "mode_my-model.json").write_text(
        json.dumps({"mode": "my-model", "type": "llm", "mode_param": {"cmm_size": 1}})
    )
    (tmp_path / "mode_whisper-tiny.json").write_text(
        json.dumps({"mode": "whisper-tiny", "type": "asr", "mode_param": {"cmm_size": 7}})
    )
    (tmp_path / "broken.json").write_text("{not json")
    models = {d.mode: d for d in load_catalogue([tmp_path])}
    assert models["my-model"].unit == "llm"
    assert models["whisper-tiny"].cmm_size == 7
    with pytest.raises(FileNotFoundError):
        load_catalogue([tmp_path / "missing"])


# ----------------------------------------------------------------------------------- run_emulator
async def test_run_emulator_prints_its_address_and_stops_when_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(run_emulator("127.0.0.1", 0))
    printed = ""
    for _ in range(300):
        await asyncio.sleep(0.01)
        printed += capsys.readouterr().out
        if "\n" in printed:
            break
    match = re.match(r"StackFlow emulator listening on 127\.0\.0\.1:(\d+)\n", printed)
    assert match, printed
    port = int(match.group(1))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"request_id":"p","work_id":"sys","action":"ping"}')
    assert json.loads(await asyncio.wait_for(reader.readline(), 3))["request_id"] == "p"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    assert await asyncio.wait_for(reader.read(), 3) == b""  # its connections are closed
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_scripted_deepseek_r1_counts_its_prompt_in_qwen_tokens_as_the_device_does() -> None:
    """DeepSeek-R1's distills run Qwen's tokenizer on the device (and in the gateway's count): the scripted
    engine counts them with Qwen's BPE too, not with the rough estimate it keeps for unknown tokenizers."""
    from stackflow_openai.emulator.engines.device_tokens import device_chat_template, qwen_encoder
    from stackflow_openai.emulator.engines.scripted import estimate_tokens

    model = ModelDescriptor.from_json({"mode": "deepseek-r1-1.5B-ax630c", "type": "llm"})
    settings = LlmSettings(system_prompt="Be brief.", max_token_len=1023)
    session = await ScriptedEngine().open_llm(model, settings)
    prompt = "Why is the sky blue on a clear afternoon? Explain it to a child, in two sentences."
    templated = device_chat_template(model, "Be brief.", prompt)
    encoder = qwen_encoder()
    assert encoder is not None
    assert session.prompt_tokens(prompt) == len(encoder(templated)) != estimate_tokens(templated)
