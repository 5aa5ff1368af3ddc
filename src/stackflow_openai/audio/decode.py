"""Uploaded audio file → s16le mono PCM at the device rate, with FFmpeg (PyAV) doing all the work.

FFmpeg probes the container itself, so the file name and content type a client sends are not trusted;
anything FFmpeg can read (wav, mp3, m4a/aac, ogg/opus, webm, flac, ...) is accepted.

Decoded frames are gathered into blocks of about a second (`av.AudioFifo`, in C) and mixed down and
resampled a block at a time. Codecs hand out small frames (1152 samples for mp3, 1024 for aac, 960 for
Opus), and resampling each one costs a Python round trip through a filter graph: frame by frame, that
cost more than decoding (60 s of mp3: ~150 ms of round trips for ~50 ms of codec). The resampler keeps
its state across blocks, so the output is the same, sample for sample.
"""

from __future__ import annotations

import io
import logging

import av
import av.error

from stackflow_openai.audio.errors import AudioDecodeError
from stackflow_openai.audio.formats import DEVICE_RATE

__all__ = ["decode_to_pcm"]

_log = logging.getLogger(__name__)

_BLOCK_SECONDS = 1.0  # longer blocks measured no faster, and hold more decoded audio in memory


def _reason(exc: Exception) -> str:
    # FFmpeg errors carry "[Errno N] text: 'file'"; the text alone is what a user can act on.
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().rstrip(".")


def decode_to_pcm(data: bytes, *, rate: int = DEVICE_RATE, max_seconds: float | None = None) -> bytes:
    """Decode the first audio stream of `data`, mixed down to mono and resampled to `rate`, as s16le.

    Raises AudioDecodeError (param `file`) when the data is empty, unreadable, has no audio stream,
    decodes to no samples, or (with `max_seconds`) is longer than allowed.
    """
    if not data:
        raise AudioDecodeError("The uploaded file is empty.", code="empty_file")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise AudioDecodeError(
            f"The uploaded file could not be decoded as audio ({_reason(exc)}). "
            "Supported formats: wav, mp3, m4a/aac, ogg/opus, webm, flac."
        ) from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("The uploaded file contains no audio stream.")
        pcm = _decode_stream(container, rate, max_seconds)
    if not pcm:
        raise AudioDecodeError("The uploaded file contains no audio samples.", code="empty_file")
    return pcm


def _decode_stream(container: av.container.InputContainer, rate: int, max_seconds: float | None) -> bytes:
    stream = container.streams.audio[0]
    blocks = _BlockResampler(rate)
    try:
        for frame in container.decode(stream):
            blocks.add(frame)
            if max_seconds is not None and blocks.seconds > max_seconds:
                raise AudioDecodeError(
                    f"The audio is longer than the {max_seconds:g} s this server accepts.",
                    code="audio_too_long",
                )
    except av.error.FFmpegError as exc:
        if not blocks.seconds:
            raise AudioDecodeError(f"The uploaded file could not be decoded ({_reason(exc)}).") from exc
        # A truncated or partly damaged file: keep what decoded, as the ffmpeg tool would.
        _log.warning("audio decode stopped early after %.2f s of audio: %s", blocks.seconds, exc)
    return blocks.finish()


class _BlockResampler:
    """Decoded frames in, s16le mono PCM at `rate` out, resampled about a second of input at a time.

    A stream may change its sample rate, layout or sample format part-way (ADTS aac, each frame
    self-describing, can): frames of one kind go through one FIFO and resampler, and a change flushes
    them and starts afresh, as the ffmpeg tool reconfigures its filter graph.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.seconds = 0.0  # input decoded so far
        self._pieces: list[bytes] = []
        self._kind: tuple[str, str, int] | None = None
        self._fifo = av.AudioFifo()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._block = 0

    def add(self, frame: av.AudioFrame) -> None:
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if kind != self._kind:
            if self._kind is not None:
                self._flush()
                self._fifo = av.AudioFifo()
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._kind = kind
            self._block = max(1, int(_BLOCK_SECONDS * frame.sample_rate))
        self.seconds += frame.samples / frame.sample_rate
        # The FIFO refuses frames whose timestamps are not contiguous; gaps and overlaps in a damaged
        # file are not this function's business (the frame-by-frame resampler ignored them too).
        frame.pts = None
        self._fifo.write(frame)
        if self._fifo.samples >= self._block:
            self._resample(self._fifo.read())

    def finish(self) -> bytes:
        self._flush()
        return b"".join(self._pieces)

    def _flush(self) -> None:
        if self._fifo.samples:
            self._resample(self._fifo.read())
        self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> None:
        for out in self._resampler.resample(frame):
            self._pieces.append(out.to_ndarray().tobytes())
