"""TTS engine: a piper voice (onnxruntime) rendered at the voice's rate, resampled to 16 kHz.

piper-tts is GPL-3.0-or-later, so it lives in the optional `local` extra only; nothing else in the
package imports it. Resampling uses PyAV's (FFmpeg's swr) resampler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

from stackflow_openai.emulator.engines.base import LocalEngineError

__all__ = ["OUTPUT_RATE", "LocalTtsSession", "PiperTtsModel", "resample_s16_mono"]

logger = logging.getLogger(__name__)

OUTPUT_RATE = 16000  # what the device's TTS units hand out (protocol §5.4)
_MIN_SPEED, _MAX_SPEED = 0.1, 10.0


def resample_s16_mono(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """s16le mono at `src_rate` → s16le mono at `dst_rate` (one whole clip: the resampler is flushed)."""
    if src_rate == dst_rate or not pcm:
        return pcm
    import av
    import numpy as np

    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = src_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
    frames = [*resampler.resample(frame), *resampler.resample(None)]  # None flushes the tail
    return b"".join(out.to_ndarray().astype("<i2").tobytes() for out in frames)


class PiperTtsModel:
    """One loaded piper voice. Synthesis is serialised: espeak-ng's phonemizer keeps global state."""

    def __init__(self, voice: Any, path: Path) -> None:
        self._voice = voice
        self.path = path
        self.native_rate: int = int(voice.config.sample_rate)
        self._length_scale: float = float(voice.config.length_scale or 1.0)
        self._speakers: dict[str, int] = dict(voice.config.speaker_id_map or {})
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, n_threads: int) -> PiperTtsModel:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        # Built by hand rather than with PiperVoice.load() to size onnxruntime's thread pool and
        # stop its threads spinning after each sentence: they would steal the cores llama.cpp uses.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
        return cls(PiperVoice(session=session, config=config), path)

    def speaker_id(self, voice: str | None) -> int | None:
        """Speaker index for a multi-speaker voice; None (the default speaker) otherwise."""
        if voice is None or not self._speakers:
            return None
        if voice in self._speakers:
            return self._speakers[voice]
        logger.info("piper voice %s has no speaker %r: using the default speaker", self.path.name, voice)
        return None

    def synthesize(self, text: str, *, speed: float = 1.0, speaker_id: int | None = None) -> bytes:
        """Blocking: text → s16le mono PCM at 16 kHz ('' → b'')."""
        if not text.strip():
            return b""
        if speed <= 0:
            raise LocalEngineError(f"speed must be positive, got {speed}")
        from piper import SynthesisConfig

        # piper's speed knob is phoneme duration: length_scale < 1 speaks faster.
        speed = min(max(speed, _MIN_SPEED), _MAX_SPEED)
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=self._length_scale / speed)
        with self._lock:
            chunks = list(self._voice.synthesize(text, syn_config=config))
        native = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        return resample_s16_mono(native, self.native_rate, OUTPUT_RATE)

    def close(self) -> None:
        self._voice = None


class LocalTtsSession:
    """One melotts/tts instance bound to a voice; each call renders one segment."""

    sample_rate = OUTPUT_RATE

    def __init__(self, model: PiperTtsModel, voice: str | None) -> None:
        self._model = model
        self._speaker = model.speaker_id(voice)

    async def synthesize(self, text: str, *, speed: float = 1.0) -> bytes:
        return await asyncio.to_thread(self._model.synthesize, text, speed=speed, speaker_id=self._speaker)

    async def close(self) -> None:
        return None
