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
import threading

import av
import av.error

from stackflow_openai.audio.errors import AudioDecodeError
from stackflow_openai.audio.formats import DEVICE_RATE

__all__ = ["PcmStream", "decode_to_pcm"]

_log = logging.getLogger(__name__)

_BLOCK_SECONDS = 1.0  # longer blocks measured no faster, and hold more decoded audio in memory


def _reason(exc: Exception) -> str:
    # FFmpeg errors carry "[Errno N] text: 'file'"; the text alone is what a user can act on.
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().rstrip(".")


def _too_long(max_seconds: float, what: str) -> AudioDecodeError:
    return AudioDecodeError(
        f"The audio is longer than the {max_seconds:g} s this model accepts ({what}).", code="audio_too_long"
    )


def decode_to_pcm(data: bytes, *, rate: int = DEVICE_RATE, max_seconds: float | None = None) -> bytes:
    """Decode the first audio stream of `data`, mixed down to mono and resampled to `rate`, as s16le.

    Raises AudioDecodeError (param `file`) when the data is empty, unreadable, has no audio stream,
    decodes to no samples, or (with `max_seconds`) is longer than allowed.
    """
    with PcmStream(data, rate=rate, max_seconds=max_seconds) as stream:
        return b"".join(iter(stream.read, None))


def _demuxed_seconds(data: bytes, limit: float) -> float | None:
    """The end time of the first audio stream's last packet, read without decoding; counting stops
    once past `limit`. None when the packets carry no timing or cannot be read."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            base = stream.time_base
            if base is None:
                return None
            start = stream.start_time or 0
            end = None
            for packet in container.demux(stream):
                if packet.pts is None or not packet.duration:
                    continue
                end = max(end or 0, packet.pts + packet.duration - start)
                if end * base > limit:
                    break
            return float(end * base) if end is not None else None
    except (av.error.FFmpegError, ValueError, IndexError):
        return None  # decoding will say what is wrong


class PcmStream:
    """An upload decoded a block (about a second) at a time, so that memory does not grow with its
    length: the decoded audio of an hour is 115 MB at 16 kHz, and 25 MB of FLAC silence holds 36 h.

    `read` blocks on FFmpeg: call it from a worker thread. `close` may be called from any thread, also
    while a `read` runs there: the read then stops at its next frame and closes the container itself
    (closing it under a running decode would crash FFmpeg).
    """

    def __init__(self, data: bytes, *, rate: int = DEVICE_RATE, max_seconds: float | None = None) -> None:
        if not data:
            raise AudioDecodeError("The uploaded file is empty.", code="empty_file")
        try:
            self._container = av.open(io.BytesIO(data), mode="r")
        except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
            raise AudioDecodeError(
                f"The uploaded file could not be decoded as audio ({_reason(exc)}). "
                "Supported formats: wav, mp3, m4a/aac, ogg/opus, webm, flac."
            ) from exc
        self.max_seconds = max_seconds
        self.declared_seconds = self._declared_seconds()
        self._lock = threading.Lock()
        self._closed = self._reading = self._ended = self._produced = False
        self._blocks = _BlockResampler(rate)
        self._pending: list[bytes] = []
        try:
            if not self._container.streams.audio:
                raise AudioDecodeError("The uploaded file contains no audio stream.")
            if max_seconds is not None:
                self._check_length(data, max_seconds)
            self._frames = self._container.decode(self._container.streams.audio[0])
        except BaseException:
            self._container.close()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def seconds(self) -> float:
        """Input audio decoded so far."""
        return self._blocks.seconds

    def _check_length(self, data: bytes, max_seconds: float) -> None:
        """Refuse before decoding anything when the container says the audio is too long, or, when it
        does not say (a browser's WebM recording, a FLAC written as a stream), when its packets do.
        Counting packets is cheap next to decoding them (1 h of FLAC: 0.27 s), and stops at the limit.
        A file whose packets carry no timing is caught while decoding (see _read)."""
        if self.declared_seconds is not None:
            if self.declared_seconds > max_seconds:
                raise _too_long(max_seconds, f"the file says {self.declared_seconds:.0f} s")
            return
        counted = _demuxed_seconds(data, max_seconds)
        if counted is not None and counted > max_seconds:
            raise _too_long(max_seconds, f"its packets say more than {max_seconds:g} s")

    def _declared_seconds(self) -> float | None:
        # The container's duration (AV_TIME_BASE units) when it has one: FLAC's sample count, a WAV's
        # data size, Ogg's last granule, a Matroska Duration, an MP3's header or bitrate estimate.
        duration = self._container.duration
        return duration / av.time_base if duration is not None and duration > 0 else None

    def __enter__(self) -> PcmStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._reading:
                self._container.close()

    def read(self) -> bytes | None:
        """The next piece of s16le PCM (about a second), or None at the end or once closed."""
        with self._lock:
            if self._closed:
                return None
            self._reading = True
        try:
            return self._read()
        finally:
            with self._lock:
                self._reading = False
                if self._closed:
                    self._container.close()

    def _read(self) -> bytes | None:
        while not self._pending and not self._ended:
            if self._closed:
                return None
            frame = self._next_frame()
            if frame is None:
                self._ended = True
                self._pending = self._blocks.finish()
                if not self._pending and not self._produced:
                    raise AudioDecodeError("The uploaded file contains no audio samples.", code="empty_file")
            else:
                self._pending = self._blocks.add(frame)
                if self.max_seconds is not None and self._blocks.seconds > self.max_seconds:
                    raise _too_long(self.max_seconds, "found while decoding it")
        if not self._pending:
            return None
        self._produced = True
        return self._pending.pop(0)

    def _next_frame(self) -> av.AudioFrame | None:
        try:
            return next(self._frames, None)
        except av.error.FFmpegError as exc:
            if not self._blocks.seconds:
                raise AudioDecodeError(f"The uploaded file could not be decoded ({_reason(exc)}).") from exc
            # A truncated or partly damaged file: keep what decoded, as the ffmpeg tool would.
            _log.warning("audio decode stopped early after %.2f s of audio: %s", self._blocks.seconds, exc)
            return None


class _BlockResampler:
    """Decoded frames in, s16le mono PCM at `rate` out, resampled about a second of input at a time.

    A stream may change its sample rate, layout or sample format part-way (ADTS aac, each frame
    self-describing, can): frames of one kind go through one FIFO and resampler, and a change flushes
    them and starts afresh, as the ffmpeg tool reconfigures its filter graph.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.seconds = 0.0  # input decoded so far
        self._kind: tuple[str, str, int] | None = None
        self._fifo = av.AudioFifo()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._block = 0

    def add(self, frame: av.AudioFrame) -> list[bytes]:
        """The PCM this frame completes (usually none, or about a second of it)."""
        pieces: list[bytes] = []
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if kind != self._kind:
            if self._kind is not None:
                pieces = self._flush()
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
            pieces += self._resample(self._fifo.read())
        return pieces

    def finish(self) -> list[bytes]:
        return self._flush()

    def _flush(self) -> list[bytes]:
        pieces = self._resample(self._fifo.read()) if self._fifo.samples else []
        return pieces + self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> list[bytes]:
        return [out.to_ndarray().tobytes() for out in self._resampler.resample(frame)]
