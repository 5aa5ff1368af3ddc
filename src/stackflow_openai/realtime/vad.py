"""Server-side turn detection for the Realtime API: WebRTC's VAD over 20 ms frames.

Why webrtcvad (the `webrtcvad-wheels` build of Google's WebRTC voice activity detector): measured on this
project's 2-core test machine (benchmarks/realtime_latency.py), it costs 0.16 ms of CPU per second of audio
(0.26-0.51 ms with the 24 -> 16 kHz resampling of 100 ms appends), against 4.2-4.7 ms for Silero VAD (v6,
ONNX, onnxruntime with one thread), whose import alone adds 36 MiB of RSS, plus its 2.3 MB model.
On a device that shares its Cortex-A cores with the model runtime, the 8-29x cheaper detector wins; Silero
is better in noisy rooms, which matters less for a push-to-talk or near-field microphone (docs/realtime.md).

OpenAI's `server_vad` settings map as follows:
- `threshold` (0..1) picks WebRTC's aggressiveness (0..3): a higher threshold needs clearer speech;
- `prefix_padding_ms`: audio kept before the detected start (it is part of the committed turn);
- `silence_duration_ms`: silence that ends the turn.
Speech must last `_START_FRAMES` frames (60 ms) to count, so a click does not start a turn.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INPUT_RATE", "SpeechStarted", "SpeechStopped", "TurnDetector"]

INPUT_RATE = 24_000  # the Realtime API's pcm16 rate
_VAD_RATE = 16_000
_FRAME_MS = 20
_FRAME_BYTES = _VAD_RATE * _FRAME_MS // 1000 * 2  # 640 bytes of pcm16 at 16 kHz
_START_FRAMES = 3


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int  # since the session's first appended audio, prefix padding included


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int


class TurnDetector:
    """Feed it the appended audio; it says where speech starts and stops (in session milliseconds)."""

    def __init__(self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500):
        import webrtcvad  # imported here: a gateway that never opens a realtime session does not load it

        from stackflow_openai.audio import PcmConverter  # (PyAV: also loaded on first use only)

        # One streaming resampler per session: each appended piece is resampled as it comes, continuously
        # across pieces, and cut into 16 kHz frames (WebRTC's VAD takes 8/16/32/48 kHz, not 24).
        self._resampler = PcmConverter(INPUT_RATE, _VAD_RATE)
        self._vad = webrtcvad.Vad(min(3, max(0, int(threshold * 4))))
        self.prefix_padding_ms = prefix_padding_ms
        self._silence_frames = max(1, silence_duration_ms // _FRAME_MS)
        self._pending = b""
        self._frames = 0  # frames seen since the session started
        self._voiced_run = 0
        self._silent_run = 0
        self.speaking = False

    def feed(self, pcm24: bytes) -> list[SpeechStarted | SpeechStopped]:
        events: list[SpeechStarted | SpeechStopped] = []
        data = self._pending + self._resampler.feed(pcm24)
        usable = len(data) // _FRAME_BYTES * _FRAME_BYTES
        self._pending = data[usable:]
        for start in range(0, usable, _FRAME_BYTES):
            voiced = self._vad.is_speech(data[start : start + _FRAME_BYTES], _VAD_RATE)
            self._frames += 1
            event = self._step(voiced)
            if event is not None:
                events.append(event)
        return events

    def _step(self, voiced: bool) -> SpeechStarted | SpeechStopped | None:
        if not self.speaking:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run < _START_FRAMES:
                return None
            self.speaking, self._silent_run = True, 0
            start_ms = (self._frames - _START_FRAMES) * _FRAME_MS
            return SpeechStarted(max(0, start_ms - self.prefix_padding_ms))
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run < self._silence_frames:
            return None
        self.speaking, self._voiced_run = False, 0
        return SpeechStopped((self._frames - self._silent_run) * _FRAME_MS)

    def reset(self) -> None:
        """After a commit or clear: the next speech is a new turn (the session clock runs on)."""
        self._voiced_run = self._silent_run = 0
        self.speaking = False

    @property
    def now_ms(self) -> int:
        return self._frames * _FRAME_MS
