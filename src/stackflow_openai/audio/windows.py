"""Splitting long audio into windows the device's ASR accepts, cutting at quiet points.

whisper on the device truncates anything beyond 30 s (protocol §5.5), so long uploads are cut into
windows of at most `max_seconds`. A cut in the middle of a word loses that word in both windows, so each
cut is placed at the quietest short frame within the last `search_seconds` of the window; for speech
that is a pause between words or sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stackflow_openai.audio.pcm import DEVICE_RATE, SAMPLE_WIDTH, pcm_to_array

__all__ = ["AudioWindow", "split_windows"]

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
    if max_seconds <= 0 or search_seconds < 0:
        raise ValueError("max_seconds must be positive and search_seconds non-negative")
    samples = pcm_to_array(pcm)
    total = len(samples)
    longest = max(1, int(max_seconds * rate))
    search = min(int(search_seconds * rate), longest // 2)
    frame = max(1, int(_FRAME_SECONDS * rate))
    windows: list[AudioWindow] = []
    start = 0
    while total - start > longest:
        cut = _quietest_cut(samples, start + longest - search, start + longest, frame)
        windows.append(AudioWindow(start, cut, rate))
        start = cut
    if total > start or not windows:
        windows.append(AudioWindow(start, total, rate))
    return windows


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
