"""The cosy_voice unit (CosyVoice2; `dev:projects/llm_framework/main_cosy_voice/src/main.cpp`).

Unlike melotts and tts it does not cut the text at punctuation: each inference is one utterance,
queued (at most 3 waiting, `inference_async` 585-595) and spoken by a worker thread. Its audio comes
out in chunks as the speech tokens arrive, each `finish:false`, then a last chunk `finish:true`
(`tts` 405-571); a non-stream format sends only that last chunk. The rate is the setup's
`audio_rate`, else the descriptor's, else 48000 (`runner/LLM.hpp` 73-74: mode 24 kHz resampled to
48 kHz). The voice is the prompt directory (`prompt_dir`, default the descriptor's `prompt_data`)
whose recorded prompt the model imitates; a directory the model folder lacks fails the setup (-5).
`.stream` input is reassembled by index like the llm unit's, with -25 and -23 errors; setup errors
name the unit "llm" or "kws" (copied code, 835-893). Up to two instances (MAX_TASK_NUM 2).
"""

from __future__ import annotations

from typing import Any

from stackflow_openai.emulator.units.base import SetupError, UnitService
from stackflow_openai.emulator.units.links import USER
from stackflow_openai.emulator.units.tts import SpeechInstance
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["CosyInstance", "CosyUnit"]

DEFAULT_RATE = 48000
CHUNK_SECONDS = 0.5  # about one token hop of speech per streamed chunk
MAX_QUEUED = 3
# The prompt directories an emulated model folder holds: the one M5Stack's package ships.
PROMPT_DIRS = frozenset({"prompt_data"})


class CosyInstance(SpeechInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued = 0

    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        self.audio_rate = int(params.get("audio_rate", DEFAULT_RATE)) or DEFAULT_RATE
        self.speed = 1.0  # no speed setting in this unit
        prompt_dir = str(params.get("prompt_dir", "prompt_data")).strip("/")
        if prompt_dir not in PROMPT_DIRS:
            raise SetupError(-5)  # readtxt() of the prompt files fails: load_model returns -3
        self.voice = prompt_dir

    async def on_user_data(self, object: str, data: str) -> None:
        payload = self.decode_common(object, data)
        if payload is None:
            return
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        if not text or self.queued >= MAX_QUEUED:
            return  # empty: inference_async returns -1; full: "inference list is full", dropped
        self.queued += 1
        try:
            await self._speak(text)
        finally:
            self.queued -= 1

    async def _speak(self, text: str) -> None:
        pcm = await self.synthesize(text)
        if pcm is None:
            return
        step = max(2, int(self.audio_rate * CHUNK_SECONDS) * 2)
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
        for number, chunk in enumerate(chunks):
            self.send_audio(chunk, finish=number == len(chunks) - 1)


class CosyUnit(UnitService):
    name = "cosy_voice"
    limit = 2
    user_tag = "tts"
    instance_class = CosyInstance
    has_pause = True
    # Setup takes an llm or vlm work_id, `link` only an llm one (865-882, 910-922); both feed
    # `task_user_data`, whose stream input is reassembled by index before the whole text is spoken.
    setup_routes = ((("tts",), USER), (("llm", "vlm"), "on_user_data"), (("kws",), None))
    link_routes = ((("llm",), "on_user_data"), (("kws",), None))
    parse_error_work_id = "kws"
    load_error_work_id = "llm"

    def _error_work_id(self, code: int) -> str:
        return "llm" if code == -21 else super()._error_work_id(code)  # -21 (full) also says "llm"
