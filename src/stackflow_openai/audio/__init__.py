"""Audio processing for the speech and transcription endpoints, with FFmpeg (PyAV) doing all coding.

decode (upload → 16 kHz PCM), convert (time-stretch + resample), encode (PCM → OpenAI formats),
windows (split long audio at quiet points), subtitles (srt, vtt). No HTTP and no device logic here.
"""

from stackflow_openai.audio.convert import MAX_SPEED, MIN_SPEED, PcmConverter, atempo_stages
from stackflow_openai.audio.decode import decode_to_pcm
from stackflow_openai.audio.encode import (
    CONTENT_TYPES,
    SPEECH_FORMATS,
    SpeechFormat,
    StreamEncoder,
    open_encoder,
)
from stackflow_openai.audio.errors import AudioDecodeError, AudioError
from stackflow_openai.audio.pcm import DEVICE_RATE, OUTPUT_RATE, SAMPLE_WIDTH, duration_seconds
from stackflow_openai.audio.subtitles import Cue, format_timestamp, to_srt, to_vtt
from stackflow_openai.audio.windows import AudioWindow, split_windows

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
    "SpeechFormat",
    "StreamEncoder",
    "atempo_stages",
    "decode_to_pcm",
    "duration_seconds",
    "format_timestamp",
    "open_encoder",
    "split_windows",
    "to_srt",
    "to_vtt",
]
