"""The gateway's one internal audio representation: headerless s16le mono PCM, and its helpers.

StackFlow's TTS units send and its ASR units expect 16 kHz s16le mono (protocol §5.4, §5.5); OpenAI's
speech output is 24 kHz. Everything in between is bytes in this format plus a sample rate.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

from stackflow_openai.audio.formats import DEVICE_RATE, OUTPUT_RATE, SAMPLE_WIDTH, duration_seconds

__all__ = [
    "DEVICE_RATE",
    "OUTPUT_RATE",
    "SAMPLE_WIDTH",
    "duration_seconds",
    "pcm_frame",
    "pcm_to_array",
]


def pcm_to_array(pcm: bytes) -> npt.NDArray[np.int16]:
    """A read-only int16 view of s16le PCM; an odd trailing byte (a torn sample) is dropped."""
    usable = len(pcm) - len(pcm) % SAMPLE_WIDTH
    return np.frombuffer(pcm, dtype="<i2", count=usable // SAMPLE_WIDTH)


def pcm_frame(samples: npt.NDArray[np.int16], rate: int, pts: int) -> av.AudioFrame:
    """A PyAV mono s16 frame of `samples`, stamped `pts` samples from the start of the stream."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame
