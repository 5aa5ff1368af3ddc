"""Splitting long audio into windows the device's ASR accepts, cutting at quiet points.

whisper on the device truncates anything beyond 30 s (protocol §5.5), so long uploads are cut into
windows of at most `max_seconds`. A cut in the middle of a word loses that word in both windows, so each
cut is placed at the quietest short frame within the last `search_seconds` of the window; for speech
that is a pause between words or sentences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from stackflow_openai.audio.decode import PcmStream
from stackflow_openai.audio.pcm import DEVICE_RATE, SAMPLE_WIDTH, pcm_to_array

__all__ = ["AudioWindow", "WindowCutter", "WindowReader", "split_windows"]

_FRAME_SECONDS = 0.02  # energy is measured on 20 ms frames, the usual speech analysis frame


@dataclass(frozen=True, slots=True)
class AudioWindow:
    start_sample: int
    end_sample: int  # exclusive
    rate: int = DEVICE_RATE

    @property
    def start(self) -> float:
        return self.start_sample / self.rate

    @property
    def end(self) -> float:
        return self.end_sample / self.rate

    @property
    def duration(self) -> float:
        return (self.end_sample - self.start_sample) / self.rate

    def slice(self, pcm: bytes) -> bytes:
        """This window's bytes out of the whole recording's s16le PCM."""
        return pcm[self.start_sample * SAMPLE_WIDTH : self.end_sample * SAMPLE_WIDTH]


def split_windows(
    pcm: bytes, *, rate: int = DEVICE_RATE, max_seconds: float = 28.0, search_seconds: float = 4.0
) -> list[AudioWindow]:
    """Consecutive windows covering all of `pcm`, each at most `max_seconds` long.

    Every cut but the last lies in the final `search_seconds` of its window, at the lowest-energy frame.
    """
    cutter = WindowCutter(rate=rate, max_seconds=max_seconds, search_seconds=search_seconds)
    step = rate * SAMPLE_WIDTH  # a second at a time: the cutter's buffer stays about a window long
    windows = [window for at in range(0, len(pcm), step) for window, _ in cutter.feed(pcm[at : at + step])]
    windows += [window for window, _ in cutter.finish()]
    return windows or [AudioWindow(0, 0, rate)]


class WindowCutter:
    """`split_windows` for PCM that arrives in pieces: the same windows, holding at most one window
    (plus the piece being fed) in memory, so hours of audio are cut in constant memory.

    A cut only looks at the next `max_seconds` of audio, so a window is final as soon as more than
    `max_seconds` are buffered; the rest of the recording cannot move it. Feed pieces of about a
    second: the buffer is trimmed from its front after each cut.
    """

    def __init__(self, *, rate: int = DEVICE_RATE, max_seconds: float = 28.0, search_seconds: float = 4.0):
        if max_seconds <= 0 or search_seconds < 0:
            raise ValueError("max_seconds must be positive and search_seconds non-negative")
        self.rate = rate
        self._longest = max(1, int(max_seconds * rate))
        self._search = min(int(search_seconds * rate), self._longest // 2)
        self._frame = max(1, int(_FRAME_SECONDS * rate))
        self._buffer = bytearray()
        self._start = 0  # sample number of the buffer's first sample
        self._torn = b""  # an odd trailing byte, completed by the next piece

    def feed(self, pcm: bytes) -> list[tuple[AudioWindow, bytes]]:
        """The windows (with their PCM) that `pcm` completes; usually none or one."""
        if self._torn:
            pcm, self._torn = self._torn + pcm, b""
        if len(pcm) % SAMPLE_WIDTH:
            pcm, self._torn = pcm[:-1], pcm[-1:]
        self._buffer += pcm
        done = []
        while len(self._buffer) // SAMPLE_WIDTH > self._longest:
            done.append(self._cut())
        return done

    def finish(self) -> list[tuple[AudioWindow, bytes]]:
        """The last window, if any audio is left."""
        if not self._buffer:
            return []
        samples = len(self._buffer) // SAMPLE_WIDTH
        window = AudioWindow(self._start, self._start + samples, self.rate)
        pcm, self._buffer = bytes(self._buffer), bytearray()
        self._start += samples
        return [(window, pcm)]

    def _cut(self) -> tuple[AudioWindow, bytes]:
        lo = self._longest - self._search  # the cut lies in the window's last `search` samples
        region = pcm_to_array(bytes(self._buffer[lo * SAMPLE_WIDTH : self._longest * SAMPLE_WIDTH]))
        cut = lo + _quietest_cut(region, 0, self._search, self._frame)
        window = AudioWindow(self._start, self._start + cut, self.rate)
        pcm = bytes(self._buffer[: cut * SAMPLE_WIDTH])
        del self._buffer[: cut * SAMPLE_WIDTH]
        self._start += cut
        return window, pcm


class WindowReader:
    """An upload → its windows with their PCM, one at a time, decoded only as far as the next window
    needs: a transcription holds one window of audio, however long the upload (see PcmStream).

    `next_window` blocks on FFmpeg (call it from a worker thread); `close` may come from any thread.
    """

    def __init__(
        self,
        data: bytes,
        *,
        max_seconds: float,
        search_seconds: float,
        max_audio_seconds: float | None = None,
        rate: int = DEVICE_RATE,
    ) -> None:
        self._stream = PcmStream(data, rate=rate, max_seconds=max_audio_seconds)
        self._cutter = WindowCutter(rate=rate, max_seconds=max_seconds, search_seconds=search_seconds)
        self._ready: deque[tuple[AudioWindow, bytes]] = deque()
        self._finished = False

    @property
    def decoded_seconds(self) -> float:
        return self._stream.seconds

    def next_window(self) -> tuple[AudioWindow, bytes] | None:
        """The next window and its s16le PCM; None after the last one, or once closed."""
        while not self._ready and not self._finished:
            pcm = self._stream.read()
            if pcm is not None:
                self._ready.extend(self._cutter.feed(pcm))
            elif self._stream.closed:
                return None
            else:
                self._finished = True
                self._ready.extend(self._cutter.finish())
        return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        self._stream.close()
        self._ready.clear()


def _quietest_cut(samples: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """A cut point in samples[lo:hi]: the middle of its longest run of quietest frames (hi if none fits).

    "Quietest" is within 1.5x (plus a hair, for digital silence) of the lowest frame energy, so a pause
    is cut in its middle rather than at its edge next to a word.
    """
    count = (hi - lo) // frame
    if count < 1:
        return hi
    region = samples[lo : lo + count * frame].astype(np.float64).reshape(count, frame)
    energy = np.einsum("ij,ij->i", region, region)
    quiet = energy <= energy.min() * 1.5 + frame
    best_start, best_len, run_start = 0, 0, 0
    for index in range(count + 1):
        if index < count and quiet[index]:
            continue
        # A run of quiet frames ended just before `index`; later runs win ties (longer windows).
        if index - run_start >= best_len and index > run_start:
            best_start, best_len = run_start, index - run_start
        run_start = index + 1
    return lo + best_start * frame + (best_len * frame) // 2
