"""One Realtime response: the conversation → the chat core → text, and sentence by sentence → speech.

Pipelined for latency: the chat plan streams text; the first clause, then each complete sentence, is queued
for speech at once while the model goes on generating (`SentenceSplitter`), and its pcm16 24 kHz audio is
sent in 200 ms deltas as it comes. In
audio mode the transcript delta of a sentence is sent when its audio starts, so the transcript never runs
ahead of what the user can hear; after a barge-in the item keeps exactly the sentences whose audio was
sent (`Spoken`), and `conversation.item.truncate` can cut it further to what was played.

Cancellation (`response.cancel`, a barge-in, a closed socket) cancels the task running `run`: the chat
core pauses its unit and the speech stream frees its unit, both in their own shielded clean-ups
(services/generation.py), so nothing is left running on the device.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from stackflow_openai.services.events import ChoiceFinished, ChoiceText, ChoiceToolCall, ToolCall

from .conversation import new_item_id

__all__ = ["ResponseRun", "SentenceSplitter", "Speak", "Splitter", "Spoken"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Speak = Callable[[str], AsyncIterator[bytes]]  # a sentence → pcm16 24 kHz pieces


class Splitter(Protocol):
    def feed(self, text: str) -> list[str]: ...  # text deltas in, complete pieces out

    def flush(self) -> list[str]: ...  # the rest, at the end of the answer


AUDIO_DELTA_BYTES = 9600  # 200 ms of pcm16 at 24 kHz per response.output_audio.delta
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；：])|\n+")
_CLAUSE_END = re.compile(r"(?<=[,.!?;:])\s+|(?<=[，、。！？；：])|\n+")
_MIN_SENTENCE = 12  # characters: "Yes." alone is not worth a TTS round trip when more is coming
_MIN_FIRST = 2  # the first piece: "Sure," is spoken at once, as melotts does on the device


class SentenceSplitter:
    """Text deltas in, pieces to speak out (the rest is kept until more text or `flush`).

    The first piece ends at the first clause break (a comma too, as the melotts unit splits its own input),
    so that the first audio comes as early as it can; later pieces are whole sentences of 12 characters or
    more, which sound better and cost fewer speech requests while the first one plays."""

    def __init__(self) -> None:
        self._pending = ""
        self._first = True

    def feed(self, text: str) -> list[str]:
        self._pending += text
        out: list[str] = []
        start = 0
        while True:
            pattern, least = (_CLAUSE_END, _MIN_FIRST) if self._first else (_SENTENCE_END, _MIN_SENTENCE)
            match = next(
                (
                    m
                    for m in pattern.finditer(self._pending, start)
                    if len(self._pending[start : m.end()].strip()) >= least
                ),
                None,
            )
            if match is None:
                break
            out.append(self._pending[start : match.end()])
            start = match.end()
            self._first = False
        self._pending = self._pending[start:]
        return out

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest.strip() else []


@dataclass
class Spoken:
    """What an audio response has delivered so far: sentences and the audio length of each."""

    sentences: list[tuple[str, int]] = field(default_factory=list)  # (text, audio ms)

    @property
    def transcript(self) -> str:
        return "".join(text for text, _ in self.sentences)

    def until(self, audio_end_ms: int) -> str:
        """The transcript of the sentences whose audio had started by `audio_end_ms`."""
        out, at = [], 0
        for text, ms in self.sentences:
            if at >= audio_end_ms:
                break
            out.append(text)
            at += ms
        return "".join(out)


class ResponseRun:
    """Runs one response and writes its events. Its output items (`items`): the assistant message, made
    when its first text comes (none for an answer that is only tool calls), and one `function_call` item
    per tool call, each sent whole as the chat core hands it over (calls are held until complete there)."""

    def __init__(
        self,
        *,
        send: Send,
        response: dict[str, Any],
        events: AsyncIterator[Any],  # the chat plan's choice events
        speak: Speak | None,  # None: text mode
        add_item: Callable[[dict[str, Any]], str | None],  # into the conversation; returns the previous id
    ) -> None:
        self._send = send
        self.response = response
        self._events = events
        self._speak = speak
        self.audio = speak is not None  # else text mode
        self._add_item = add_item
        self.spoken = Spoken()
        self.text = ""
        self.items: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None
        self._message_index = 0
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def _ids(self) -> dict[str, Any]:
        assert self.message is not None
        return {
            "response_id": self.response["id"],
            "item_id": self.message["id"],
            "output_index": self._message_index,
        }

    async def _announce(self, item: dict[str, Any]) -> int:
        """Add an output item: response.output_item.added and conversation.item.added; its index."""
        index = len(self.items)
        self.items.append(item)
        previous = self._add_item(item)
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": self.response["id"],
                "output_index": index,
                "item": copy.deepcopy(item),
            }
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": copy.deepcopy(item)}
        )
        return index

    async def _item_done(self, index: int, item: dict[str, Any]) -> None:
        """An output item is complete: response.output_item.done and conversation.item.done."""
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": self.response["id"],
                "output_index": index,
                "item": copy.deepcopy(item),
            }
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": None, "item": copy.deepcopy(item)}
        )

    async def _open_message(self) -> None:
        if self.message is not None:
            return
        self.message = {
            "id": new_item_id(),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self._message_index = await self._announce(self.message)
        part = {"type": "audio", "transcript": ""} if self.audio else {"type": "text", "text": ""}
        await self._send(
            {"type": "response.content_part.added", **self._ids(), "content_index": 0, "part": part}
        )

    async def run(self) -> None:
        """Until the model and the speech are done (cancel the task to stop it)."""
        if not self.audio:
            await self._run_text()
        else:
            await self._run_audio()
        if not self.items:
            await self._open_message()  # an empty answer is still an (empty) assistant message
        if self.message is not None:
            self.message["status"] = "completed"

    async def _common(self, event: Any) -> None:
        """What both modes do with an event other than answer text."""
        if isinstance(event, ChoiceToolCall):
            await self._tool_call(event.call)
        elif isinstance(event, ChoiceFinished):
            self.finish_reason = event.finish_reason
            self.completion_tokens += event.completion_tokens
        # ChoiceReasoning: a reasoning model's thoughts are neither shown nor spoken here.

    async def _tool_call(self, call: ToolCall) -> None:
        item = {
            "id": new_item_id(),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
        }
        index = await self._announce(item)
        ids = {
            "response_id": self.response["id"],
            "item_id": item["id"],
            "output_index": index,
            "call_id": call.id,
        }
        await self._send({"type": "response.function_call_arguments.delta", **ids, "delta": call.arguments})
        await self._send(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        item.update(arguments=call.arguments, status="completed")
        await self._item_done(index, item)

    async def _run_text(self) -> None:
        async with aclosing(self._events) as events:  # type: ignore[type-var]
            async for event in events:
                if type(event) is ChoiceText:
                    await self._open_message()
                    self.text += event.text
                    await self._send(
                        {
                            "type": "response.output_text.delta",
                            **self._ids(),
                            "content_index": 0,
                            "delta": event.text,
                        }
                    )
                else:
                    await self._common(event)

    async def _run_audio(self) -> None:
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_all(sentences))
        try:
            splitter = self.splitter()
            async with aclosing(self._events) as events:  # type: ignore[type-var]
                async for event in events:
                    if type(event) is ChoiceText:
                        self.text += event.text
                        for sentence in splitter.feed(event.text):
                            sentences.put_nowait(sentence)
                    else:
                        await self._common(event)
            for sentence in splitter.flush():
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await speaker
        finally:
            if not speaker.done():
                speaker.cancel()
                await asyncio.gather(speaker, return_exceptions=True)

    def splitter(self) -> Splitter:
        """How the text is cut into the pieces spoken one after another."""
        return SentenceSplitter()

    async def _speak_all(self, sentences: asyncio.Queue[str | None]) -> None:
        assert self._speak is not None
        while (sentence := await sentences.get()) is not None:
            await self._say(sentence, self._speak(sentence))

    async def _say(self, sentence: str, pieces: AsyncIterator[bytes]) -> None:
        """One sentence: its transcript delta when its audio starts, then the audio in 200 ms deltas."""
        await self._open_message()
        if sentence.strip():
            await self._send(
                {
                    "type": "response.output_audio_transcript.delta",
                    **self._ids(),
                    "content_index": 0,
                    "delta": sentence,
                }
            )
        self.spoken.sentences.append((sentence, 0))
        audio_bytes = 0
        pending = b""
        async with aclosing(pieces) as stream:  # type: ignore[type-var]
            async for piece in stream:
                pending += piece
                while len(pending) >= AUDIO_DELTA_BYTES:
                    await self._audio_delta(pending[:AUDIO_DELTA_BYTES])
                    audio_bytes += AUDIO_DELTA_BYTES
                    pending = pending[AUDIO_DELTA_BYTES:]
                    self.spoken.sentences[-1] = (sentence, audio_bytes // 48)
        if pending:
            await self._audio_delta(pending)
            audio_bytes += len(pending)
        self.spoken.sentences[-1] = (sentence, audio_bytes // 48)  # 48 bytes per ms at 24 kHz

    async def _audio_delta(self, pcm: bytes) -> None:
        await self._send(
            {
                "type": "response.output_audio.delta",
                **self._ids(),
                "content_index": 0,
                "delta": base64.b64encode(pcm).decode("ascii"),
            }
        )

    def final_content(self) -> list[dict[str, Any]]:
        if not self.audio:
            return [{"type": "output_text", "text": self.text}]
        return [{"type": "output_audio", "transcript": self.spoken.transcript}]

    async def send_done_events(self) -> None:
        """The closing events of the message item, if there is one (after a completed or cut run)."""
        if self.message is None:
            return
        ids, content = self._ids(), self.final_content()
        if not self.audio:
            await self._send(
                {"type": "response.output_text.done", **ids, "content_index": 0, "text": self.text}
            )
            part = {"type": "text", "text": self.text}
        else:
            transcript = content[0]["transcript"]
            await self._send({"type": "response.output_audio.done", **ids, "content_index": 0})
            await self._send(
                {
                    "type": "response.output_audio_transcript.done",
                    **ids,
                    "content_index": 0,
                    "transcript": transcript,
                }
            )
            part = {"type": "audio", "transcript": transcript}
        await self._send({"type": "response.content_part.done", **ids, "content_index": 0, "part": part})
        self.message["content"] = content
        await self._item_done(self._message_index, self.message)
