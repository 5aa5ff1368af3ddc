"""The audio constants the HTTP layer needs to validate requests, without loading numpy or PyAV.

Rates, the `speed` range and the speech formats are checked when a request is parsed; the codecs are
only needed once audio flows. Keeping these here lets `stackflow_openai.audio` load numpy and PyAV
(~28 MiB of RSS) on the first audio request instead of at start-up.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CONTENT_TYPES",
    "DEVICE_RATE",
    "MAX_SPEED",
    "MIN_SPEED",
    "OUTPUT_RATE",
    "SAMPLE_WIDTH",
    "SPEECH_FORMATS",
    "SpeechFormat",
    "duration_seconds",
]

DEVICE_RATE = 16_000  # what the device's TTS produces and its ASR consumes
OUTPUT_RATE = 24_000  # what OpenAI's speech endpoint produces (and defines `pcm` as)
SAMPLE_WIDTH = 2  # bytes per s16 sample

MIN_SPEED = 0.25  # OpenAI's range for `speed`
MAX_SPEED = 4.0

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def duration_seconds(pcm: bytes, rate: int) -> float:
    """Length of s16le mono PCM at `rate`, in seconds."""
    return (len(pcm) // SAMPLE_WIDTH) / rate
