"""ASR engine: faster-whisper (CTranslate2) on a local whisper model directory, greedy decoding.

The model is opened from a directory with `local_files_only=True` and a tokenizer.json present
(checked before loading), so faster-whisper never reaches for the network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

__all__ = ["LocalAsrSession", "WhisperAsrModel"]

logger = logging.getLogger(__name__)

INPUT_RATE = 16000
_FALLBACK_LANGUAGE = "zh"  # the device's whisper unit falls back to zh for unknown codes (§5.5)


class WhisperAsrModel:
    """One loaded whisper model. Calls are serialised: one utterance at a time, like the unit."""

    def __init__(self, model: Any, path: Path) -> None:
        self._model = model
        self.path = path
        self.multilingual: bool = bool(model.model.is_multilingual)
        self._languages: set[str] = set(model.supported_languages)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, n_threads: int) -> WhisperAsrModel:
        from faster_whisper import WhisperModel

        model = WhisperModel(
            str(path), device="cpu", compute_type="int8", cpu_threads=n_threads, local_files_only=True
        )
        return cls(model, path)

    def language_for(self, requested: str) -> str:
        if not self.multilingual:
            return "en"  # English-only (.en) models can do nothing else
        if requested in self._languages:
            return requested
        logger.info("whisper: unknown language %r, falling back to %r", requested, _FALLBACK_LANGUAGE)
        return _FALLBACK_LANGUAGE

    def transcribe(self, pcm: bytes, language: str) -> str:
        """Blocking: s16le mono 16 kHz → text, whitespace-stripped ('' when nothing was heard)."""
        import numpy as np

        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        if samples.size == 0:
            return ""
        audio = samples.astype(np.float32) / 32768.0
        with self._lock:
            segments, _info = self._model.transcribe(
                audio,
                language=self.language_for(language),
                beam_size=1,  # greedy, as the device's whisper decoder
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            # `segments` is lazy: decoding happens while iterating, so keep it under the lock.
            text = " ".join(segment.text.strip() for segment in segments)
        return text.strip()

    def close(self) -> None:
        self._model = None


class LocalAsrSession:
    """One whisper/asr instance."""

    def __init__(self, model: WhisperAsrModel) -> None:
        self._model = model

    async def transcribe(self, pcm: bytes, *, language: str) -> str:
        return await asyncio.to_thread(self._model.transcribe, pcm, language)

    async def close(self) -> None:
        return None
