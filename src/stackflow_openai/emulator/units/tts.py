"""The melotts and tts (SummerTTS, Kokoro) units (`main_melotts`, `main_tts`; protocol §5.4).

Both cut the text after each of `, . ! ? ; ，、。！？；` and synthesize every segment on its own;
what remains when the input finishes gets a `.` appended. Audio goes out as base64 s16le mono, at the
setup's `audio_rate`, else the descriptor's (48000 for the AX650/AXCL melotts and kokoro), else
16 kHz; SummerTTS ignores `audio_rate`. Neither unit buffers `.stream` input by index: each delta is
spoken as it arrives, and bad base64 is dropped without an error. Their output quirks are the
device's, per unit generation (`boards.py`):

- melotts, stream: one `finish:false` message per segment, then a `finish:true` one holding the
  remainder's audio, or `""` when the text ended on punctuation; from dev (and on axcl) an empty
  `finish:true` message always follows the remainder's;
- melotts, non-stream: only the `finish:true` messages are sent (so punctuated text returns `""`);
- tts 1.6, stream: every segment is flagged `finish:true` with an empty delta, so no audio arrives;
- tts 1.6, non-stream: one message per segment and no end marker;
- tts 1.7 (dev), like melotts from dev: segments `finish:false`, the remainder `finish:true`, then an
  empty `finish:true`; non-stream therefore carries only the remainder's audio and the empty end.
  It also runs Kokoro (every model not named `single-speaker*`); 1.6 cannot load one (-5).
"""

from __future__ import annotations

import base64
import logging
import sys
from array import array
from typing import Any, ClassVar

from stackflow_openai.emulator.engines.base import TtsSession
from stackflow_openai.emulator.rawjson import decode_base64, extract, unescape
from stackflow_openai.emulator.units.base import Instance, SetupError, UnitService
from stackflow_openai.emulator.units.links import USER, Route
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["MeloInstance", "MeloUnit", "SummerInstance", "TtsUnit"]

BREAKPOINTS = frozenset(",.!?;，、。！？；")
ENGINE_RATE = 16000
_log = logging.getLogger(__name__)


class SpeechInstance(Instance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: TtsSession | None = None
        self.speed = 1.0
        self.audio_rate = ENGINE_RATE
        self.voice: str | None = None

    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        self.speed = float(params.get("spacker_speed", 1.0)) or 1.0
        self.audio_rate = int(params.get("audio_rate", ENGINE_RATE)) or ENGINE_RATE
        role = params.get("spacker_role")
        self.voice = None if role is None else str(role)

    async def open(self) -> None:
        assert self.model is not None
        engine = self.unit.state.engine_for(self.model)
        self.session = await engine.open_tts(self.model, self.voice)

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()

    @staticmethod
    def finished(flag: str) -> bool:
        raise NotImplementedError

    def read_text(self, object: str, data: str) -> tuple[str, bool] | None:
        """The text of one inference and whether it finishes the input; None to ignore it."""
        if not data or data == "None":
            return None
        text, finish = data, True
        if "stream" in object:
            finish = self.finished(extract(data, "finish"))
            text = extract(data, "delta")
        if "base64" in object:
            payload = decode_base64(text)
            if payload is None:
                return None  # no -23 from these units: the message just vanishes
            text = payload.decode("utf-8", errors="replace")
        return unescape(text), finish

    async def synthesize(self, text: str) -> bytes | None:
        """One segment to PCM at `audio_rate`; on engine failure emit -11 like the channel does."""
        assert self.session is not None
        try:
            pcm = await self.session.synthesize(text, speed=self.speed)
        except Exception:
            _log.exception("%s: synthesis failed", self.work_id)
            self.emit("None", object="None", code=-11)
            return None
        # Engines promise 16 kHz, but trusting their declared rate costs nothing.
        return resample_s16le(pcm, int(getattr(self.session, "sample_rate", ENGINE_RATE)), self.audio_rate)

    def send_audio(self, pcm: bytes, *, finish: bool) -> None:
        """One audio message: in the stream format every one goes out, flagged `finish` or not; otherwise
        only the finish message is sent (so non-stream output holds only the last chunk's audio)."""
        encoded = base64.b64encode(pcm).decode("ascii")
        if self.enstream:
            self.emit({"delta": encoded, "finish": finish, "index": self.next_stream_index(finish=finish)})
        elif finish:
            self.emit(encoded)

    def split(self, pending: str, text: str) -> tuple[list[str], str]:
        """Complete segments (each ending on a breakpoint) and what is left over."""
        segments: list[str] = []
        for char in text:
            pending += char
            if char in BREAKPOINTS:
                segments.append(pending)
                pending = ""
        return segments, pending


class MeloInstance(SpeechInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = ""  # a member of the task object: per instance

    @staticmethod
    def finished(flag: str) -> bool:
        return "true" in flag

    async def on_user_data(self, object: str, data: str) -> None:
        read = self.read_text(object, data)
        if read is None:
            return
        text, finish = read
        segments, self.pending = self.split(self.pending, text)
        for segment in segments:
            await self._speak(segment, finish=False)
        if finish:
            rest, self.pending = self.pending, ""
            await self._speak(rest + "." if rest else "", finish=True)
            if rest and self.unit.state.generation.melotts_extra_end:
                await self._speak("", finish=True)

    async def _speak(self, text: str, *, finish: bool) -> None:
        pcm = await self.synthesize(text) if text else b""
        if pcm is not None:
            self.send_audio(pcm, finish=finish)


class SummerInstance(SpeechInstance):
    unit: TtsUnit
    final_only = False  # tts 1.7's output (set from the unit generation at setup)

    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        self.final_only = self.unit.state.generation.tts_final_only
        if model.mode.startswith("single-speaker"):
            self.audio_rate = ENGINE_RATE  # SummerTTS has no audio_rate: its own 16 kHz
        elif not self.final_only:
            raise SetupError(-5)  # tts 1.6 knows SummerTTS only: no ttsModelName, load fails

    @staticmethod
    def finished(flag: str) -> bool:
        return flag == "true"

    async def on_user_data(self, object: str, data: str) -> None:
        read = self.read_text(object, data)
        if read is None:
            return
        text, finish = read
        # `static faster_stream_buff`: the pending text belongs to the unit, not the instance.
        segments, self.unit.pending = self.split(self.unit.pending, text)
        for segment in segments:
            await self._speak(segment, finish=False)
        if finish and self.unit.pending:
            rest, self.unit.pending = self.unit.pending, ""
            await self._speak(rest + ".", finish=True)
        if finish and self.final_only:
            self.send_audio(b"", finish=True)  # `TTS("", true)`: the end message of 1.7

    async def _speak(self, text: str, *, finish: bool) -> None:
        pcm = await self.synthesize(text)
        if pcm is None:
            return
        if not self.final_only:  # 1.6 flags every segment finished, and empties a stream's finish deltas
            finish = True
            pcm = b"" if self.enstream else pcm
        self.send_audio(pcm, finish=finish)


def resample_s16le(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """Linear-interpolation resampling of s16le mono (only used when `audio_rate` is not 16 kHz)."""
    if source_rate == target_rate or not pcm:
        return pcm
    samples = array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    count = max(1, int(len(samples) * target_rate / source_rate))
    step = (len(samples) - 1) / max(1, count - 1)
    out = array("h", bytes(2 * count))
    for i in range(count):
        pos = i * step
        low = int(pos)
        high = min(low + 1, len(samples) - 1)
        out[i] = int(samples[low] + (samples[high] - samples[low]) * (pos - low))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


class MeloUnit(UnitService):
    name = "melotts"
    limit = 1
    user_tag = "tts"  # "melotts.*" matches too: it contains "tts"
    instance_class = MeloInstance
    has_pause = False
    # A linked llm/vlm's output goes to the same handler as user text, `task_user_data`
    # (dev:main_melotts/src/main.cpp 664-683 and 711-725; main and axcl alike).
    setup_routes: ClassVar[tuple[Route, ...]] = (
        (("tts",), USER),
        (("llm", "vlm"), "on_user_data"),
        (("kws",), None),
    )
    link_routes: ClassVar[tuple[Route, ...]] = ((("llm", "vlm"), "on_user_data"), (("kws",), None))


class TtsUnit(UnitService):
    name = "tts"
    limit = 1
    user_tag = "tts"
    instance_class = SummerInstance
    has_pause = False
    setup_routes = MeloUnit.setup_routes  # dev:main_tts/src/main.cpp 612-631, 659-672 (main 368-387)
    link_routes = MeloUnit.link_routes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = ""
