"""StackFlow's own asr -> llm -> melotts chain, reserved for one voice session (docs/realtime.md).

On the device an llm instance can take a transcription instance's output as its input, and a melotts
instance the llm's (setup `input` or `link`, protocol-notes.md 27-31): the user's audio goes to the
transcription unit and the answer's text and audio come back from the other two, with no round trip through
the gateway between the stages. The gateway still reads every stage (each unit has `enoutput`), so the
session sends the same events as on its own path.

The chain is formed from three units leased for the session (one device must serve all three models):

- the transcription unit, set up as for /v1/audio/transcriptions;
- the chat unit: a pooled one `link`ed to a sherpa `asr` unit; a `whisper` unit cannot be linked (the llm's
  `link` accepts only "asr"/"kws"), so then a chat unit of its own is set up naming it in its `input`, and
  is exited at the end;
- the melotts unit, `link`ed to the chat unit.

While the session holds them nobody else can use these instances (a board has one transcription and one
speech instance): the session gives them back when another client waits (realtime/chained.py). What the
device answers from is its own context: the setup's system prompt, plus, on a ctx model, every turn it heard
and said. `DeviceChain.holds` is that conversation as chat messages; the session uses the chain only while
it equals the session's conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import AsyncExitStack, aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

from stackflow_openai.backends.base import BackendUnavailable, UnitSettings
from stackflow_openai.backends.conversations import ANSWER_RESERVE, CTX_TURN_MARGIN, TURN_MARKERS
from stackflow_openai.backends.device_lease import device_lease
from stackflow_openai.backends.devices import DeviceRouter
from stackflow_openai.backends.stackflow_audio import StackFlowTranscriptionBackend
from stackflow_openai.backends.stackflow_chat import StackFlowChatBackend, chat_setup
from stackflow_openai.backends.stackflow_speech import (
    StackFlowSpeechBackend,
    decode_pcm,
    output_rate,
    pcm_converter,
)
from stackflow_openai.services.events import ChoiceFinished, ChoiceText
from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, DeviceTimeout
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.pool import DevicePool
from stackflow_openai.stackflow.setups import melotts_setup
from stackflow_openai.stackflow.unit import Unit, reply_text
from stackflow_openai.tokens import TokenCounter

from .pipeline import VoiceServices

__all__ = ["ChainModels", "DeviceChain", "chain_models"]

log = logging.getLogger(__name__)

_INPUT_RATE, _DEVICE_RATE, _OUTPUT_RATE = 24_000, 16_000, 24_000
# A turn's transcript is not known before the device answers it: this much room is kept for it in a ctx
# model's cache (beyond that the session goes back to the gateway's path, which fits the conversation).
_TRANSCRIPT_ROOM = 128


@dataclass(frozen=True, slots=True)
class ChainModels:
    """The three device models of a chain, on one device, with the backends that know how to drive them."""

    pool: DevicePool  # the one device's pool: all three units come from it
    asr: ModelDescriptor
    asr_backend: StackFlowTranscriptionBackend
    chat: ModelDescriptor
    chat_backend: StackFlowChatBackend
    speech: ModelDescriptor


def chain_models(services: VoiceServices, chat_backend: object, voice: str) -> ChainModels | str:
    """The models a chain for this session would use, or why the device cannot chain them."""
    pipeline, registry = services.pipeline, services.registry
    asr_entry = registry.get(pipeline.transcription_model) if pipeline.transcription_model else None
    speech_entry = registry.get(pipeline.speech_model) if pipeline.speech_model else None
    asr = asr_entry.transcription if asr_entry is not None else None
    speech = speech_entry.speech if speech_entry is not None else None
    if not isinstance(chat_backend, StackFlowChatBackend) or chat_backend.model.unit != "llm":
        return "the chat model is not a text llm on a device"
    if not isinstance(asr, StackFlowTranscriptionBackend) or asr.model.unit not in ("asr", "whisper"):
        return "the transcription model is not an asr or whisper unit"
    target = speech.voice(voice) if isinstance(speech, StackFlowSpeechBackend) else None
    if target is None or target.model.unit != "melotts":
        return "the voice is not spoken by a melotts unit"
    router = chat_backend.pool
    if not isinstance(router, DeviceRouter):
        return "the chat model is not served by the gateway's devices"
    for device, chat in router.candidates(chat_backend.model.mode):
        asr_model, speech_model = device.model(asr.model.mode), device.model(target.model.mode)
        if asr_model is not None and speech_model is not None:
            return ChainModels(device.pool, asr_model, asr, chat, chat_backend, speech_model)
    return "no one device serves the chat, transcription and speech models"


class DeviceChain:
    """Three leased units chained on the device; `close` unlinks them and gives them back."""

    def __init__(self, models: ChainModels, settings: UnitSettings, counter: TokenCounter) -> None:
        self.models = models
        self._settings = settings
        self.counter = counter
        # What the device answers from, as the session's chat messages (set by the session when formed).
        self.holds: list[dict[str, Any]] = []
        self._used = 0  # ctx model: positions its cache holds
        self._stack = AsyncExitStack()
        self._asr: Unit | None = None
        self._llm: Unit | None = None
        self._tts: Unit | None = None
        self._idle = models.chat_backend.idle_timeout
        self._language = ""

    # ---- forming and dissolving ---------------------------------------------------------------------
    async def open(self, language: str | None) -> None:
        """Lease and chain the units (on failure everything is given back and the error raised)."""
        models = self.models
        try:
            self._language = models.asr_backend.language(language) or ""
            self._asr = await self._lease(models.asr, models.asr_backend.setup(self._language))
            setup = chat_setup(models.chat, self._settings)
            if models.asr.unit == "asr":
                self._llm = await self._lease(models.chat, setup)
                await models.chat_backend.reset_context(self._llm)  # it may hold another conversation
                await self._llm.link(self._asr.work_id)
                self._stack.push_async_callback(self._unlink, self._llm, self._asr.work_id)
            else:  # whisper: only an llm set up naming it takes its output (llm `link` refuses it)
                own = {**setup, "input": [setup["input"], self._asr.work_id]}
                self._llm = await self._lease(models.chat, own)
                self._stack.callback(self._llm.mark_broken)  # its setup serves this chain only: exit it
            self._tts = await self._lease(models.speech, melotts_setup(models.speech.mode))
            await self._tts.link(self._llm.work_id)
            self._stack.push_async_callback(self._unlink, self._tts, self._llm.work_id)
        except BaseException:
            await self.close()
            raise
        ledger = models.chat_backend.conversations
        if ledger is not None:
            self._stack.callback(ledger.mark_unknown, self._llm)  # the cache now holds this session
            self._used = self.counter.count(self._settings.system_prompt) + TURN_MARKERS

    async def _lease(self, model: ModelDescriptor, setup: dict[str, Any]) -> Unit:
        lease = device_lease(self.models.pool, model, setup, pool_size=None)
        return await self._stack.enter_async_context(lease)

    @staticmethod
    async def _unlink(unit: Unit, source: str) -> None:
        try:
            await unit.unlink(source)
        except Exception as exc:  # it may still follow `source`: the pool must not hand it out again
            log.warning("%s: unlink %s failed (%s); exiting it", unit.work_id, source, exc)
            unit.mark_broken()

    async def close(self) -> None:
        """Unlink and give the units back (shielded: a cancelled session still cleans up)."""
        stack, self._stack = self._stack, AsyncExitStack()
        await asyncio.shield(stack.aclose())

    def describe(self) -> str:
        units = (self._asr, self._llm, self._tts)
        return " -> ".join(u.work_id for u in units if u is not None)

    # ---- one turn ------------------------------------------------------------------------------------
    @property
    def ctx(self) -> bool:
        return self.models.chat_backend.conversations is not None

    def has_room(self) -> bool:
        """A ctx model resets silently when a turn does not fit: stop chaining well before that."""
        if not self.ctx:
            return True
        capacity = self.models.chat.context_len
        return capacity - self._used >= _TRANSCRIPT_ROOM + ANSWER_RESERVE

    async def hear(self, pcm24: bytes) -> tuple[str, bool]:
        """Send the user's turn to the transcription unit: its text, and whether the device's llm is now
        answering it (the unit sent a final with text, even a bare "."); read that with `answer`/`speech`."""
        assert self._asr is not None and self._llm is not None and self._tts is not None
        for unit in (self._llm, self._tts):
            unit.discard_stale()  # e.g. a second end message after the last answer (protocol-notes.md 18)
        pcm16 = await asyncio.to_thread(_resample, pcm24, _INPUT_RATE, _DEVICE_RATE)
        text, answered = await self.models.asr_backend.run(self._asr, pcm16, self._language)
        if answered:  # its output may already be queued: kept, not dropped
            self._llm.expect_output()
            self._tts.expect_output()
        return text, answered

    @property
    def usable(self) -> bool:
        units = (self._asr, self._llm, self._tts)
        return all(u is not None and not u.broken and not u.exited for u in units)

    async def answer(self) -> AsyncGenerator[Any, None]:
        """The llm's answer as the chat core's events: text deltas, then one ChoiceFinished."""
        assert self._llm is not None
        text = ""
        with _device_errors("the device's llm"):
            async with aclosing(self._llm.outputs(idle_timeout=self._idle)) as replies:
                async for reply in replies:
                    if piece := reply_text(reply):
                        text += piece
                        yield ChoiceText(0, piece)
        yield ChoiceFinished(0, "stop", text, self.counter.count(text))

    async def speech(self, speed: float) -> AsyncGenerator[tuple[bytes, bool], None]:
        """Each melotts message as (pcm16 24 kHz, final): one per segment the unit closed, the last one
        `finish:true` with the remainder's audio (or none)."""
        assert self._tts is not None
        rate = output_rate(self.models.speech, self._tts.setup)
        converter = await asyncio.to_thread(pcm_converter, rate, _OUTPUT_RATE, speed)
        with _device_errors("the device's melotts"):
            async with aclosing(self._tts.outputs(idle_timeout=self._idle)) as replies:
                async for reply in replies:
                    final = isinstance(reply.data, dict) and bool(reply.data.get("finish"))
                    pcm = await asyncio.to_thread(converter.feed, decode_pcm(reply_text(reply)))
                    if final:
                        pcm += await asyncio.to_thread(converter.finish)
                    yield pcm, final

    def record(self, user: str, reply: str) -> None:
        """A completed turn: a ctx model keeps it (a single-turn model answers from its setup alone)."""
        if not self.ctx:
            return
        self.holds += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        self._used += self.counter.count(user) + self.counter.count(reply) + TURN_MARKERS + CTX_TURN_MARGIN

    async def drain(self) -> None:
        """The device answers a turn the session does not (an empty transcript): stop and discard it."""
        for consume in (self.answer(), self.speech(1.0)):
            async with aclosing(consume) as items:
                async for _ in items:
                    break  # closing the reader pauses the llm / drains the melotts unit (unit.py)


@contextmanager
def _device_errors(stage: str) -> Iterator[None]:
    """A unit that fails or falls silent mid-answer: the error the gateway's own path gives (the unit is
    marked broken by unit.py, so the chain is dissolved before the next turn)."""
    try:
        yield
    except (DeviceTimeout, ConnectionLost) as exc:
        raise BackendUnavailable(f"{stage} stopped answering: {exc}") from exc
    except DeviceError as exc:
        raise BackendUnavailable(f"{stage} failed: {exc}") from exc


def _resample(pcm: bytes, source: int, target: int) -> bytes:
    converter = pcm_converter(source, target)
    return converter.feed(pcm) + converter.finish()
