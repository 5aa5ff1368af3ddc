"""The whisper and asr units (`main_whisper`, `main_asr`; protocol §5.5).

Input is s16le mono 16 kHz PCM, possibly base64, possibly sent as `.stream` chunks that are
reassembled by index first. With `wav` in the object everything up to and including the first
`data` chunk header is cut off; without such a marker the request is dropped silently.

- whisper: every completed inference is one utterance, cut at 30 s. One message with the text and
  a `.`; for languages other than en/ja an empty result sends nothing at all.
- asr (sherpa streaming models): audio accumulates into the current utterance. Each inference may
  send a partial (the whole hypothesis so far, lowercased, `finish:false`, stream formats only).
  An endpoint needs trailing silence: `rule2` (1.2 s) after speech, `rule1` (2.4 s) without any
  (then nothing is sent), or an utterance of `rule3` (30 s). At an endpoint with text, the final
  `text + "."` goes out with `finish:true` and a new utterance starts. Input `finish` does not flush.
  Without an endpoint nothing is reset: the next inference's audio continues the same utterance.
- asr with other models (sense-voice): each inference is one utterance with one final message, sent
  even when empty; the `.` is appended only when `model_config.sense_voice.use_itn` is off.
- asr of the dev generation (1.10; also axcl's 1.9): a final never gets the `.`; a streaming model sends
  its final at every endpoint, empty ones included; sense-voice cuts the upload at silences (its VAD)
  and sends one `finish:false` message per voiced segment, then the segments' texts joined by spaces
  as the final (dev:main_asr/src/main.cpp `sys_pcm_on_data_onnx`, `task_output` 807-841).
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

from stackflow_openai.emulator.engines.base import AsrSession
from stackflow_openai.emulator.rawjson import strip_wav_header
from stackflow_openai.emulator.units.base import Instance, UnitService
from stackflow_openai.languages import WHISPER_LANGUAGES
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["AsrInstance", "AsrUnit", "WhisperInstance", "WhisperUnit"]

SAMPLE_RATE = 16000
WHISPER_MAX_BYTES = 30 * SAMPLE_RATE * 2  # 3000 mel frames of 10 ms
FRAME_BYTES = SAMPLE_RATE // 100 * 2  # 10 ms
SILENCE_LEVEL = 300  # mean |sample| at or below this counts as silence
USE_ITN = "model_config.sense_voice.use_itn"


class AudioInstance(Instance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: AsrSession | None = None
        self.language = "en"

    async def open(self) -> None:
        assert self.model is not None
        engine = self.unit.state.engine_for(self.model)
        self.session = await engine.open_asr(self.model)

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()

    def read_pcm(self, object: str, data: str) -> bytes | None:
        payload = self.decode_common(object, data)
        if payload is None:
            return None
        pcm = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
        if "wav" in object:
            return strip_wav_header(pcm)
        if "mp3" in object:
            return None  # `decode_mp3` is a stub that returns 0: the request is dropped
        return pcm

    def emit_text(self, text: str, *, finish: bool) -> None:
        if self.enstream:
            self.emit({"delta": text, "finish": finish, "index": self.next_stream_index(finish=finish)})
        elif finish:
            self.emit(text)


class WhisperInstance(AudioInstance):
    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        self.language = config["language"]

    async def on_user_data(self, object: str, data: str) -> None:
        pcm = self.read_pcm(object, data)
        if pcm is None:
            return
        assert self.session is not None
        # A language whisper's table lacks ("english", "en-US", "auto") decodes as Chinese on the device.
        decode_in = self.language if self.language in WHISPER_LANGUAGES else "zh"
        text = await self.session.transcribe(pcm[:WHISPER_MAX_BYTES], language=decode_in)
        if text or self.language in ("en", "ja"):
            self.emit_text(text + ".", finish=True)
        # other languages: OpenCC output is checked, and an empty one sends nothing


class AsrInstance(AudioInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streaming = True
        self.use_itn = False
        self.rule1 = 2.4
        self.rule2 = 1.2
        self.rule3 = 30.0
        self._utterance = bytearray()
        self._speech_flags: list[bool] = []

    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        self.streaming = model.mode.startswith(("sherpa-ncnn", "sherpa-onnx"))
        # `is_using_itn()` only asks the offline (sense-voice) engine.
        self.use_itn = not self.streaming and bool(params.get(USE_ITN, False))
        self.rule1 = float(config.get("rule1", params.get("endpoint_config.rule1.min_trailing_silence", 2.4)))
        self.rule2 = float(config.get("rule2", params.get("endpoint_config.rule2.min_trailing_silence", 1.2)))
        self.rule3 = float(config.get("rule3", params.get("endpoint_config.rule3.min_utterance_length", 30)))

    async def on_user_data(self, object: str, data: str) -> None:
        pcm = self.read_pcm(object, data)
        if pcm is None:
            return
        assert self.session is not None
        new = self.unit.state.generation.asr_empty_finals
        if not self.streaming:
            await (self._segments_then_final(pcm) if new else self._one_final(pcm))
            return
        self._add_audio(pcm)
        text = (await self.session.transcribe(bytes(self._utterance), language=self.language)).lower()
        if text:
            self.emit_text(text, finish=False)
        if self._at_endpoint():
            if new:
                self.emit_text(text, finish=True)  # sent even when empty, and without the "."
            elif text:
                self.emit_text(text + ".", finish=True)
            self._utterance.clear()
            self._speech_flags.clear()

    async def _one_final(self, pcm: bytes) -> None:
        assert self.session is not None
        text = await self.session.transcribe(pcm, language=self.language)
        self.emit_text(text if self.use_itn else text + ".", finish=True)

    async def _segments_then_final(self, pcm: bytes) -> None:
        assert self.session is not None
        texts = []
        for segment in voiced_segments(pcm):
            text = await self.session.transcribe(segment, language=self.language)
            if text:
                self.emit_text(text, finish=False)
                texts.append(text)
        self.emit_text(" ".join(texts), finish=True)

    def _add_audio(self, pcm: bytes) -> None:
        # Frames are classified once, as they complete; a partial frame waits for more audio.
        done = len(self._speech_flags) * FRAME_BYTES
        self._utterance += pcm
        end = len(self._utterance) // FRAME_BYTES * FRAME_BYTES
        for start in range(done, end, FRAME_BYTES):
            self._speech_flags.append(_is_speech(bytes(self._utterance[start : start + FRAME_BYTES])))

    def _at_endpoint(self) -> bool:
        flags = self._speech_flags
        total = len(flags) / 100
        last_speech = max((i for i, speech in enumerate(flags) if speech), default=-1)
        trailing = (len(flags) - 1 - last_speech) / 100
        if last_speech < 0:
            return trailing >= self.rule1
        return trailing >= self.rule2 or total >= self.rule3


def voiced_segments(pcm: bytes, *, min_gap: float = 0.5, min_length: float = 0.1) -> list[bytes]:
    """What a VAD hands the recognizer: voiced stretches split at `min_gap` s of silence, those shorter
    than `min_length` s dropped (the unit skips segments under 0.1 s)."""
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    segments: list[bytes] = []
    current: list[bytes] = []
    silent = 0
    for frame in frames:
        if _is_speech(frame):
            current.append(frame)
            silent = 0
        elif current:
            silent += 1
            current.append(frame)
            if silent >= min_gap * 100:
                segments.append(b"".join(current[:-silent]))
                current, silent = [], 0
    if current:
        segments.append(b"".join(current[: len(current) - silent]))
    return [s for s in segments if len(s) >= min_length * SAMPLE_RATE * 2]


def _is_speech(frame: bytes) -> bool:
    samples = array("h", frame)
    if sys.byteorder == "big":
        samples.byteswap()
    return sum(map(abs, samples)) / max(1, len(samples)) > SILENCE_LEVEL


class WhisperUnit(UnitService):
    name = "whisper"
    limit = 1
    user_tag = "whisper"
    instance_class = WhisperInstance
    load_error_work_id = "asr"
    has_work = True
    # Microphone, kws and vad inputs (main_whisper 846-872, 902-923): nothing the emulator publishes.
    link_routes = ((("sys",), None), (("kws",), None), (("vad",), None))

    def subscribes_user_input(self, source: str) -> bool:
        return "sys" not in source and "whisper" in source  # "sys" means microphone capture


class AsrUnit(UnitService):
    name = "asr"
    limit = 1
    user_tag = "asr"
    instance_class = AsrInstance
    has_work = True
    link_routes = WhisperUnit.link_routes

    def subscribes_user_input(self, source: str) -> bool:
        return "sys" not in source and "asr" in source
