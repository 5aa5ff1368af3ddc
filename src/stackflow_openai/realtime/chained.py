"""When a voice session's turn runs on the device's own chain (chain.py), and the response it then gives.

A turn takes the chain only if the device would answer exactly what the gateway's path would:

- the session allows it (`device_chain: auto`, in `realtime` or its pipeline; off by default) and its models
  can be chained on one device (a text llm that does not reason aloud, a whisper or asr unit, a melotts
  voice);
- the turn is user speech committed by server VAD that asks for a response, spoken (`output_modalities`
  audio), with no tools and no `max_output_tokens` (the device knows neither);
- the conversation before it is what the device answers from (`DeviceChain.holds`): the instructions, and
  on a ctx model the turns the chain itself heard and said. So a single-turn model chains a session's
  first turn only, and a ctx model every turn until the conversation changes in a way the device did not
  see (a text item, a deleted or truncated item, a barge-in, other instructions) or its cache fills up.

Otherwise the chain is dissolved (its units unlinked and given back) before the gateway's path runs, and is
not formed again in that session: from then on the gateway fits and replays the conversation itself. It is
dissolved too when another client waits for a unit of the device between turns (`_yield_to_others`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from stackflow_openai.backends.stackflow_speech import BreakpointSplitter
from stackflow_openai.services.reasoning import default_reasoning

from .chain import DeviceChain, chain_models
from .responder import ResponseRun, Splitter

if TYPE_CHECKING:
    from .pipeline import VoiceServices
    from .session import RealtimeSession

__all__ = ["ChainSlot", "ChainedRun"]

log = logging.getLogger(__name__)
_WATCH_INTERVAL = 0.1  # seconds between looks at the device's queue of waiting requests


class ChainSlot:
    """A session's device chain: formed at the first turn that may take it, dissolved for good after."""

    def __init__(self, services: VoiceServices, *, enabled: bool) -> None:
        self._services = services
        self.chain: DeviceChain | None = None
        self.refused: str | None = None if enabled else "device_chain is off"
        self.turns = 0  # turns the device answered by itself
        self._watcher: asyncio.Task[None] | None = None

    def _refusal(self, session: RealtimeSession) -> str | None:
        config = session.config
        if config.output_modalities != ["audio"]:
            return "text output"
        if config.tools:
            return "tools"
        if config.max_output_tokens is not None:
            return "max_output_tokens"
        before = session.conversation.messages(config.instructions)[:-1]
        holds = self.chain.holds if self.chain is not None else _system(config.instructions)
        if before != holds:
            return "the conversation is not the one the device holds"
        if self.chain is not None and not (self.chain.usable and self.chain.has_room()):
            return "the chain's units are broken or its context is full"
        return None

    async def for_turn(self, session: RealtimeSession) -> DeviceChain | None:
        """The chain this committed audio turn runs on, or None for the gateway's path."""
        if self.refused is not None:
            return None
        await session.response_settled()  # a barge-in's cancelled response cleans up its units first
        reason = self._refusal(session)
        if reason is None and self.chain is None:
            try:
                reason = await self._form(session)
            except Exception as exc:  # a busy or failing device: the gateway's path may still serve
                reason = f"it could not be formed ({exc})"
        if reason is not None:
            await self.dissolve(reason)
            return None
        return self.chain

    async def _form(self, session: RealtimeSession) -> str | None:
        config = session.config
        system = _system(config.instructions)
        # The chat core's own plan names the backend and the unit setup a request of this session gets.
        plan = await self._services.plan({"messages": [*system, {"role": "user", "content": "."}]})
        models = chain_models(self._services, plan.backend, config.voice)
        if isinstance(models, str):
            return models
        if default_reasoning(models.chat.mode) != "off":
            return "a reasoning model (its thoughts would be spoken)"
        chain = DeviceChain(models, plan.settings, plan.counter)
        await chain.open((config.transcription or {}).get("language") or self._services.pipeline.language)
        chain.holds = system
        self.chain = chain
        self._watcher = asyncio.create_task(self._yield_to_others(session, chain))
        log.info("realtime %s: device chain %s", session.id, chain.describe())
        return None

    async def _yield_to_others(self, session: RealtimeSession, chain: DeviceChain) -> None:
        """A board has one transcription and one speech instance: while another client waits for a unit of
        this device, the chain gives its units back at the end of the turn (the session goes on along the
        gateway's path, which shares them), so a voice session never starves HTTP clients or another one."""
        pool = chain.models.pool
        while self.chain is chain:
            await asyncio.sleep(_WATCH_INTERVAL)
            if not session.busy and pool.stats()["waiting"] > 0:
                await self.dissolve("another client waits for the device's units")

    async def dissolve(self, reason: str) -> None:
        """Give the units back; the session goes on along the gateway's path."""
        if self.refused is None:
            self.refused = reason
            log.info("realtime: off the device chain after %d turns on it: %s", self.turns, reason)
        chain, self.chain = self.chain, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        if chain is not None:
            await chain.close()


def _system(instructions: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": instructions}] if instructions else []


async def _one(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


class ChainedRun(ResponseRun):
    """A response whose text comes from the chained llm and whose audio from the chained melotts unit.

    The unit speaks each piece of text closed by a breakpoint as one message, then the remainder with its
    final message (protocol-notes.md 32); the same cut of the text (`BreakpointSplitter`) pairs each
    message with its transcript, so barge-in and truncation keep exactly what was heard, as on the
    gateway's path."""

    def __init__(self, *, chain: DeviceChain, speed: float, **kwargs: Any) -> None:
        super().__init__(events=chain.answer(), speak=None, **kwargs)
        self.audio = True
        self._chain = chain
        self._speed = speed

    def splitter(self) -> Splitter:
        return BreakpointSplitter()

    async def _speak_all(self, sentences: asyncio.Queue[str | None]) -> None:
        ended = False  # the text is complete and every piece of it taken

        async def take(*, rest: bool) -> str:
            nonlocal ended
            text = ""
            while not ended:
                piece = await sentences.get()
                if piece is None:
                    ended = True
                else:
                    text += piece
                    if not rest:
                        break
            return text

        async with aclosing(self._chain.speech(self._speed)) as messages:
            async for pcm, final in messages:
                # The final message speaks the remainder (and anything the unit split otherwise).
                text = await take(rest=final)
                if text or pcm:
                    await self._say(text, _one(pcm))
