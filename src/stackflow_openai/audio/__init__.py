"""Audio processing for the speech and transcription endpoints, with FFmpeg (PyAV) doing all coding.

decode (upload → 16 kHz PCM), convert (time-stretch + resample), encode (PCM → OpenAI formats),
windows (split long audio at quiet points), subtitles (srt, vtt). No HTTP and no device logic here.

numpy and PyAV cost ~28 MiB of RSS that a chat-only gateway never needs, so the names that need them
(PcmConverter, decode_to_pcm, open_encoder, split_windows, ...) are loaded on first access (PEP 562).
Importing this package, the constants, the errors and the subtitle writers loads neither. The first
access imports numpy and PyAV (~0.25 s): callers on the event loop make it from a worker thread.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stackflow_openai.audio.errors import AudioDecodeError, AudioError
from stackflow_openai.audio.formats import (
    CONTENT_TYPES,
    DEVICE_RATE,
    MAX_SPEED,
    MIN_SPEED,
    OUTPUT_RATE,
    SAMPLE_WIDTH,
    SPEECH_FORMATS,
    SpeechFormat,
    duration_seconds,
)
from stackflow_openai.audio.subtitles import Cue, format_timestamp, to_srt, to_vtt

if TYPE_CHECKING:
    from stackflow_openai.audio.convert import PcmConverter, atempo_stages
    from stackflow_openai.audio.decode import PcmStream, decode_to_pcm
    from stackflow_openai.audio.encode import StreamEncoder, open_encoder
    from stackflow_openai.audio.windows import AudioWindow, WindowCutter, WindowReader, split_windows

__all__ = [
    "CONTENT_TYPES",
    "DEVICE_RATE",
    "MAX_SPEED",
    "MIN_SPEED",
    "OUTPUT_RATE",
    "SAMPLE_WIDTH",
    "SPEECH_FORMATS",
    "AudioDecodeError",
    "AudioError",
    "AudioWindow",
    "Cue",
    "PcmConverter",
    "PcmStream",
    "SpeechFormat",
    "StreamEncoder",
    "WindowCutter",
    "WindowReader",
    "atempo_stages",
    "decode_to_pcm",
    "duration_seconds",
    "format_timestamp",
    "open_encoder",
    "split_windows",
    "to_srt",
    "to_vtt",
]

# Name → the submodule that defines it; each of these submodules imports numpy and/or PyAV.
_LAZY = {
    "PcmConverter": "convert",
    "atempo_stages": "convert",
    "decode_to_pcm": "decode",
    "PcmStream": "decode",
    "WindowCutter": "windows",
    "WindowReader": "windows",
    "StreamEncoder": "encode",
    "open_encoder": "encode",
    "AudioWindow": "windows",
    "split_windows": "windows",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
