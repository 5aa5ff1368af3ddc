"""Uploaded audio file → s16le mono PCM at the device rate, with FFmpeg (PyAV) doing all the work.

FFmpeg probes the container itself, so the file name and content type a client sends are not trusted;
anything FFmpeg can read (wav, mp3, m4a/aac, ogg/opus, webm, flac, ...) is accepted.
"""

from __future__ import annotations

import io
import logging

import av
import av.error

from stackflow_openai.audio.errors import AudioDecodeError
from stackflow_openai.audio.pcm import DEVICE_RATE, SAMPLE_WIDTH

__all__ = ["decode_to_pcm"]

_log = logging.getLogger(__name__)


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
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    limit = None if max_seconds is None else int(max_seconds * rate) * SAMPLE_WIDTH
    pieces: list[bytes] = []
    size = 0
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                piece = out.to_ndarray().tobytes()
                pieces.append(piece)
                size += len(piece)
            if limit is not None and size > limit:
                raise AudioDecodeError(
                    f"The audio is longer than the {max_seconds:g} s this server accepts.",
                    code="audio_too_long",
                )
    except av.error.FFmpegError as exc:
        if not pieces:
            raise AudioDecodeError(f"The uploaded file could not be decoded ({_reason(exc)}).") from exc
        # A truncated or partly damaged file: keep what decoded, as the ffmpeg tool would.
        _log.warning("audio decode stopped early after %d bytes of PCM: %s", size, exc)
    for out in resampler.resample(None):
        pieces.append(out.to_ndarray().tobytes())
    return b"".join(pieces)
