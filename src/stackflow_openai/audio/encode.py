"""Incremental encoders for OpenAI's speech `response_format`s: feed PCM, get container bytes at once.

Every format but `pcm` is produced by FFmpeg (PyAV) muxing into a write-only sink that the encoder
drains after each call. The sink has no `seek`, so FFmpeg treats the output as a non-seekable stream
and writes streaming-friendly headers, exactly as `ffmpeg ... -f FMT pipe:` would:

- wav: the canonical 44-byte header with RIFF and data sizes 0xFFFFFFFF ("unknown length"), which
  players read as "until end of stream"; `bitexact` drops FFmpeg's LIST/INFO chunk so data starts at 44.
- mp3: bare MPEG audio frames (no ID3 tag, no Xing header that could never be filled in).
- opus: Ogg Opus (RFC 7845). Input is 24 kHz, but Opus always decodes at 48 kHz, so decoders report
  48 kHz (the OpusHead records 24 kHz as the input rate). Ogg pages are cut every 100 ms so audio does
  not wait in the muxer for the next sentence.
- aac: ADTS (every frame self-describing, playable from any point), AAC-LC.
- flac: native FLAC; STREAMINFO's total-samples field stays 0 ("unknown"), which decoders accept.
- pcm: raw s16le mono at 24 kHz, OpenAI's definition; no FFmpeg involved.

Codecs hold back a few milliseconds (frame size, look-ahead); those bytes come with the next feed or
with `finish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import av
import av.audio.stream

from stackflow_openai.audio.formats import CONTENT_TYPES, OUTPUT_RATE, SPEECH_FORMATS, SpeechFormat
from stackflow_openai.audio.pcm import pcm_frame, pcm_to_array

__all__ = [
    "CONTENT_TYPES",
    "SPEECH_FORMATS",
    "SpeechFormat",
    "StreamEncoder",
    "open_encoder",
]


@dataclass(frozen=True, slots=True)
class _Spec:
    container: str
    codec: str
    bit_rate: int | None = None
    options: dict[str, str] = field(default_factory=dict)  # the muxer's
    codec_options: dict[str, str] = field(default_factory=dict)


# Encoder speed settings, measured on speech from the device (16 kHz, so nothing above 8 kHz) at the
# same bit rate, 60 s per run (benchmarks/audio_codecs.py):
# - mp3: LAME's algorithm quality -q 7 (FFmpeg's compression_level; FFmpeg leaves LAME at its default
#   -q 3) encodes ~2x faster, byte for byte the same size. Below 8 kHz the error is no larger (SNR
#   25.5 vs 25.1 dB against the input); what -q 7 gives up is detail above 10 kHz, which this audio
#   does not have.
# - aac: the "fast" coder instead of "twoloop" is 2.5x faster, same size within 2 %, and closer to the
#   input below 8 kHz (SNR 31 vs 26 dB).
# - opus is left at complexity 10: lower complexities are 3-4x faster but, at the same nominal
#   32 kb/s, spend 27 % more bytes (VBR decides differently), so they are not a free win.
_SPECS: dict[str, _Spec] = {
    "mp3": _Spec(
        "mp3",
        "libmp3lame",
        64_000,
        {"id3v2_version": "0", "write_xing": "0"},
        {"compression_level": "7"},
    ),
    "opus": _Spec("ogg", "libopus", 32_000, {"page_duration": "100000"}),
    "aac": _Spec("adts", "aac", 64_000, codec_options={"aac_coder": "fast"}),
    "flac": _Spec("flac", "flac"),
    "wav": _Spec("wav", "pcm_s16le", None, {"fflags": "+bitexact"}),
}


class StreamEncoder(Protocol):
    format: str
    content_type: str
    sample_rate: int  # the PCM rate `feed` expects

    def feed(self, pcm: bytes) -> bytes:
        """Encode s16le mono PCM at `sample_rate`; return the bytes ready so far (maybe b"")."""
        ...

    def finish(self) -> bytes:
        """Flush the codec and write the container trailer; return the last bytes."""
        ...


class _Sink:
    """Write-only file object for PyAV. Having no `seek` is deliberate: see the module docstring."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class _RawPcmEncoder:
    content_type = CONTENT_TYPES["pcm"]
    format = "pcm"

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._carry = b""

    def feed(self, pcm: bytes) -> bytes:
        # Keep sample alignment across pieces so the stream never shifts by one byte.
        data = self._carry + pcm
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        return b""


class _ContainerEncoder:
    def __init__(self, fmt: str, spec: _Spec, sample_rate: int) -> None:
        self.format = fmt
        self.content_type = CONTENT_TYPES[fmt]
        self.sample_rate = sample_rate
        self._sink = _Sink()
        # flush_packets: hand every muxed packet to the sink instead of filling a 32 KiB buffer first.
        options = {"flush_packets": "1", **spec.options}
        self._container = av.open(self._sink, mode="w", format=spec.container, options=options)
        stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        self._stream = stream
        if spec.bit_rate:
            self._stream.codec_context.bit_rate = spec.bit_rate
        if spec.codec_options:
            self._stream.codec_context.options = dict(spec.codec_options)
        self._pts = 0
        self._closed = False

    def feed(self, pcm: bytes) -> bytes:
        samples = pcm_to_array(pcm)
        if len(samples):
            frame = pcm_frame(samples, self.sample_rate, self._pts)
            self._pts += len(samples)
            # PyAV re-chunks frames to the codec's frame size (1152 for mp3, 1024 for aac, ...).
            self._container.mux(self._stream.encode(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.drain()


def open_encoder(fmt: str, *, sample_rate: int = OUTPUT_RATE) -> StreamEncoder:
    """A fresh encoder for one stream in `fmt` (one of SPEECH_FORMATS)."""
    if fmt == "pcm":
        return _RawPcmEncoder(sample_rate)
    spec = _SPECS.get(fmt)
    if spec is None:
        raise ValueError(f"unknown speech format {fmt!r}; expected one of {', '.join(SPEECH_FORMATS)}")
    return _ContainerEncoder(fmt, spec, sample_rate)
