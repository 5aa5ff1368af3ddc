"""Builders for the `setup` data of each unit (protocol §4.1, §5.4, §5.5).

They encode the choices that are easy to get wrong: sampling values only work together with their
`enable_*` flag, `None` must never be sent (the unit fails the setup with -5), melotts needs a
stream format while tts needs a non-stream one, and `input` must carry the unit's tag or every
inference is silently dropped.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

__all__ = [
    "ASR_STREAM_INPUT",
    "LLM_TEXT_INPUT",
    "SPEECH_RATE",
    "TTS_TEXT_INPUT",
    "VLM_IMAGE_INPUT",
    "VLM_TEXT_INPUT",
    "WHISPER_STREAM_INPUT",
    "SamplingOptions",
    "asr_setup",
    "cosy_voice_setup",
    "llm_setup",
    "melotts_setup",
    "tts_setup",
    "vlm_setup",
    "whisper_setup",
]

# Inference `object` tags a client sends (the unit matches substrings only, protocol §5.1).
LLM_TEXT_INPUT = "llm.utf-8"
VLM_TEXT_INPUT = "vlm.utf-8"
VLM_IMAGE_INPUT = "vlm.jpeg.base64"
TTS_TEXT_INPUT = "tts.utf-8"
# Audio is sent as one base64 string of 16 kHz mono s16le PCM, sliced into `.stream` chunks.
WHISPER_STREAM_INPUT = "whisper.pcm.stream.base64"
ASR_STREAM_INPUT = "asr.pcm.stream.base64"
# Asked of every speech unit that resamples (melotts, Kokoro, CosyVoice2): their output rate is the setup's
# `audio_rate`, else the descriptor's, which is 48000 on the AX650/AXCL melotts and kokoro models and
# by default on cosy_voice (main_melotts/src/main.cpp CONFIG_AUTO_SET 164-165 and 404-422,
# dev:main_tts/src/main.cpp 212 and 314-345, dev:main_cosy_voice/src/main.cpp 176, runner/LLM.hpp 73-74).
SPEECH_RATE = 16000


def _sampling(temperature: float | None, top_p: float | None, top_k: int | None) -> dict[str, Any]:
    """Sampling fields with their enable flags (the device ignores a value whose flag is off).

    A value the request leaves unset sends nothing, not even a false flag: a field in the setup
    overrides the model's descriptor (`CONFIG_AUTO_SET`), and some descriptors turn sampling on
    (e.g. temperature 0.7 with top-k 40). Without either, the unit samples top-k 10 at temperature 1.
    """
    fields: dict[str, Any] = {}
    if temperature is not None:
        fields.update(enable_temperature=True, temperature=float(temperature))
    if top_p is not None:  # the unit prefers top-p over top-k when both are on
        fields.update(enable_top_p_sampling=True, top_p=float(top_p))
    if top_k is not None:
        fields.update(enable_top_k_sampling=True, top_k=int(top_k))
    return fields


class SamplingOptions(TypedDict, total=False):
    """Optional setup fields of the llm and vlm units; None (the default) leaves the device's own."""

    temperature: float | None
    top_p: float | None
    top_k: int | None
    stream: bool  # default True: `<unit>.utf-8.stream` output


def _chat_setup(
    tag: str, model: str, system_prompt: str, max_token_len: int, options: SamplingOptions
) -> dict[str, Any]:
    stream = options.get("stream", True)
    return {
        "model": model,
        "response_format": f"{tag}.utf-8.stream" if stream else f"{tag}.utf-8",
        "input": f"{tag}.utf-8",
        "enoutput": True,
        # `max_token_len` caps prompt + generated tokens and defaults to 127: always send it (§6).
        "max_token_len": int(max_token_len),
        "prompt": system_prompt,  # `prompt` is the system prompt of the instance
        **_sampling(options.get("temperature"), options.get("top_p"), options.get("top_k")),
    }


def llm_setup(
    model: str, *, system_prompt: str, max_token_len: int, **options: Unpack[SamplingOptions]
) -> dict[str, Any]:
    """Setup data for the llm unit; output object `llm.utf-8.stream` (or `llm.utf-8`)."""
    return _chat_setup("llm", model, system_prompt, max_token_len, options)


def vlm_setup(
    model: str, *, system_prompt: str, max_token_len: int, **options: Unpack[SamplingOptions]
) -> dict[str, Any]:
    """Setup data for the vlm unit; images go as `vlm.jpeg.base64`, text as `vlm.utf-8`."""
    return _chat_setup("vlm", model, system_prompt, max_token_len, options)


def _speech_setup(model: str, response_format: str) -> dict[str, Any]:
    """The fields every speech unit's setup shares: text in, PCM out at `SPEECH_RATE`."""
    return {
        "model": model,
        "response_format": response_format,
        "input": TTS_TEXT_INPUT,
        "enoutput": True,
        "audio_rate": SPEECH_RATE,
    }


def melotts_setup(model: str, *, speed: float | None = None) -> dict[str, Any]:
    """melotts: stream format, because its non-stream format returns only the last segment (§5.4)."""
    setup = _speech_setup(model, "tts.pcm.stream.base64")
    if speed is not None:
        setup["spacker_speed"] = float(speed)  # sic: the unit's spelling
    return setup


def tts_setup(model: str, *, stream: bool = False) -> dict[str, Any]:
    """tts (SummerTTS, Kokoro). Up to 1.6 use the non-stream format: its stream format carries no audio
    (§5.4), and output is one message per text segment with no end marker, so count segments. From 1.7
    use the stream format: non-stream then carries only the last segment (versions.py).

    `audio_rate` is read by Kokoro and ignored by SummerTTS (which speaks at 16 kHz).
    """
    return _speech_setup(model, "tts.pcm.stream.base64" if stream else "tts.pcm.base64")


def cosy_voice_setup(model: str, *, prompt_dir: str | None = None) -> dict[str, Any]:
    """cosy_voice (CosyVoice2): stream format, whose chunks end with `finish:true`; a non-stream format
    sends only the last chunk. `prompt_dir` picks the voice: the folder of recorded prompt files under
    the model's directory (default: the descriptor's, `prompt_data`)."""
    setup = _speech_setup(model, "tts.pcm.stream.base64")
    if prompt_dir is not None:
        setup["prompt_dir"] = prompt_dir
    return setup


def whisper_setup(model: str, language: str) -> dict[str, Any]:
    """whisper: chunked PCM in, exactly one `asr.utf-8` message out per inference (§5.5)."""
    return {
        "model": model,
        "response_format": "asr.utf-8",
        "input": WHISPER_STREAM_INPUT,
        "language": language,
        "enoutput": True,
    }


def asr_setup(model: str, *, stream: bool = True) -> dict[str, Any]:
    """asr (sherpa / sense-voice): chunked PCM in; stream output ends with a `finish:true` message."""
    return {
        "model": model,
        "response_format": "asr.utf-8.stream" if stream else "asr.utf-8",
        "input": ASR_STREAM_INPUT,
        "enoutput": True,
    }
