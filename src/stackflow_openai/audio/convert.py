"""Streaming PCM conversion: time-stretch (pitch kept) and resample, through one FFmpeg filter graph.

`speed` uses FFmpeg's `atempo` (WSOLA-style time-scale modification), never a sample-rate relabel, so
voices keep their pitch. One atempo stage is used per factor in [0.5, 2.0]: FFmpeg accepts larger
tempos in one stage but then drops samples instead of blending them, so 4.0 is run as 2.0 × 2.0 and
0.25 as 0.5 × 0.5. Resampling is `aresample` (libswresample), the same code ffmpeg's CLI uses.
"""

from __future__ import annotations

import math

import av
import av.error
import av.filter

from stackflow_openai.audio.formats import MAX_SPEED, MIN_SPEED, SAMPLE_WIDTH
from stackflow_openai.audio.pcm import pcm_frame, pcm_to_array

__all__ = ["MAX_SPEED", "MIN_SPEED", "PcmConverter", "atempo_stages"]

_STAGE_MIN = 0.5  # atempo blends (rather than skips) samples only within [0.5, 2.0]
_STAGE_MAX = 2.0
# With atempo, input is pushed in short frames because atempo holds back about one input frame: a
# whole sentence pushed at once would only come out when the next sentence arrives. Resampling alone
# holds back only a few samples whatever the frame size, so then a piece is pushed whole (a push is a
# Python round trip: 1024-sample pushes cost ~6x the resampling itself; the output is identical).
_ATEMPO_PUSH_SAMPLES = 1024


def atempo_stages(speed: float) -> list[float]:
    """Factors in [0.5, 2.0] whose product is `speed` (empty for 1.0): the atempo chain to run."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be within [{MIN_SPEED}, {MAX_SPEED}], got {speed}")
    if math.isclose(speed, 1.0):
        return []
    bound = _STAGE_MAX if speed > 1.0 else _STAGE_MIN
    count = math.ceil(math.log(speed) / math.log(bound) - 1e-9)
    # Equal stages keep every stage well inside the blending range (e.g. 3.0 → 1.732 × 1.732).
    return [speed ** (1.0 / count)] * count


class PcmConverter:
    """Feed s16le mono PCM at `in_rate`, get s16le mono PCM at `out_rate`, played `speed` times faster.

    `feed` returns whatever the graph has ready (possibly b""); `finish` flushes the rest. Not
    thread-safe: one converter per stream, used by one caller at a time.
    """

    def __init__(self, in_rate: int, out_rate: int, *, speed: float = 1.0) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.speed = speed
        stages = atempo_stages(speed)
        self._graph = self._build(stages)
        self._push_samples = _ATEMPO_PUSH_SAMPLES if stages else None
        self._pts = 0
        self._carry = b""  # an odd byte left from a piece that split a sample
        self._finished = False

    def _build(self, stages: list[float]) -> av.filter.Graph:
        graph = av.filter.Graph()
        nodes = [graph.add_abuffer(sample_rate=self.in_rate, format="s16", layout="mono")]
        nodes += [graph.add("atempo", f"{stage:.6f}") for stage in stages]
        if self.out_rate != self.in_rate:
            nodes.append(graph.add("aresample", str(self.out_rate)))
        nodes.append(
            graph.add("aformat", f"sample_fmts=s16:channel_layouts=mono:sample_rates={self.out_rate}")
        )
        nodes.append(graph.add("abuffersink"))
        graph.link_nodes(*nodes).configure()
        return graph

    def feed(self, pcm: bytes) -> bytes:
        if self._finished:
            raise RuntimeError("PcmConverter.feed after finish")
        data = self._carry + pcm
        cut = len(data) - len(data) % SAMPLE_WIDTH
        self._carry = data[cut:]
        samples = pcm_to_array(data[:cut])
        step = self._push_samples or max(1, len(samples))
        out: list[bytes] = []
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            self._graph.push(pcm_frame(chunk, self.in_rate, self._pts))
            self._pts += len(chunk)
            out.append(self._drain())
        return b"".join(out)

    def finish(self) -> bytes:
        """Flush the graph's held-back samples; the converter cannot be fed afterwards."""
        if self._finished:
            return b""
        self._finished = True
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> bytes:
        out: list[bytes] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return b"".join(out)
            out.append(frame.to_ndarray().tobytes())
