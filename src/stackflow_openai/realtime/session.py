"""One Realtime session: client events in, server events out, in the GA Realtime API's order and shapes.

The socket's reader calls `handle` for every client event; everything slow (transcription, a response)
runs in tasks so the reader keeps taking audio, which is what makes barge-in possible: speech detected while
a response runs cancels it (`turn_detected`). A bad client event gets an `error` event naming it and the
session goes on. `close` cancels what runs and waits for the clean-ups, so no unit outlives the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from stackflow_openai.errors import to_openai_error

from .chain import DeviceChain
from .chained import ChainSlot
from .config import ConfigProblem, SessionConfig, max_output_tokens
from .conversation import Conversation, ItemProblem, client_audio, new_item_id
from .pipeline import VoiceServices
from .responder import ResponseRun
from .turns import transcribe
from .vad import SpeechStarted, TurnDetector

__all__ = ["RealtimeSession"]

log = logging.getLogger(__name__)
Send = Callable[[dict[str, Any]], Awaitable[None]]
_MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio
_MAX_BUFFER_BYTES = 15 * 60 * 48_000  # 15 minutes of pcm16 at 24 kHz: the input buffer's bound


class ClientEventError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


class RealtimeSession:
    def __init__(self, send: Send, services: VoiceServices, config: SessionConfig) -> None:
        self._send_raw = send
        self.services = services
        self.config = config
        self.id = "sess_" + secrets.token_hex(10)
        self.conversation = Conversation()
        self._buffer = bytearray()
        self._detector = self._new_detector()
        self._speech_item_id: str | None = None
        self._turns: asyncio.Task[None] | None = None  # transcriptions and responses, one after another
        self._response: asyncio.Task[None] | None = None
        self._cancel_reason = "client_cancelled"
        self._closed = False
        self.last_run: ResponseRun | None = None  # the last response's outcome (truncate needs it)
        self.chain = ChainSlot(services, enabled=services.pipeline.device_chain)

    # ---- events out --------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            await self._send_raw({"event_id": "event_" + secrets.token_hex(8), **event})
        except Exception:  # the socket is gone (disconnect mid-send): the reader ends the session
            self._closed = True

    async def error(
        self,
        message: str,
        *,
        code: str,
        param: str | None,
        event_id: str | None,
        kind: str = "invalid_request_error",
    ) -> None:
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        await self.send({"type": "error", "error": error})

    async def start(self) -> None:
        await self.send({"type": "session.created", "session": self.config.to_json(self.id)})

    # ---- events in ---------------------------------------------------------------------------------
    async def handle(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            await self.error("The event is not valid JSON.", code="invalid_json", param=None, event_id=None)
            return
        event_id = event.get("event_id") if isinstance(event, dict) else None
        kind = event.get("type") if isinstance(event, dict) else None
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.error(
                f"Unknown or unsupported event type {kind!r}.",
                code="invalid_event_type",
                param="type",
                event_id=event_id,
            )
            return
        try:
            await handler(self, event)
        except (ClientEventError, ConfigProblem, ItemProblem) as exc:
            code = getattr(exc, "code", "invalid_value")
            await self.error(str(exc), code=code, param=exc.param, event_id=event_id)
        except Exception as exc:  # APIError / BackendError, or a bug (logged there): the session goes on
            await self.api_error(exc, event_id)

    async def api_error(self, exc: Exception, event_id: str | None) -> None:
        _, body, _ = to_openai_error(exc)
        err = body["error"]
        await self.error(
            err["message"],
            code=err.get("code") or "error",
            param=err.get("param"),
            event_id=event_id,
            kind=err.get("type") or "server_error",
        )

    async def _session_update(self, event: dict[str, Any]) -> None:
        new = self.config.updated(event.get("session"))
        self.services.check(new.voice if "audio" in new.output_modalities else None)
        changed_vad = new.turn_detection != self.config.turn_detection
        self.config = new
        if changed_vad:
            self._detector = self._new_detector()
        await self.send({"type": "session.updated", "session": self.config.to_json(self.id)})

    async def _append(self, event: dict[str, Any]) -> None:
        try:
            pcm = base64.b64decode(event.get("audio") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ClientEventError("audio must be base64 pcm16 audio.", param="audio") from None
        if len(self._buffer) + len(pcm) > _MAX_BUFFER_BYTES:
            raise ClientEventError(
                "The input audio buffer is full (15 minutes): commit or clear it.",
                param="audio",
                code="input_audio_buffer_full",
            )
        self._buffer += pcm
        if self._detector is None:
            return
        for change in self._detector.feed(pcm):
            if isinstance(change, SpeechStarted):
                await self._speech_started(change.audio_start_ms)
            else:
                await self._speech_stopped(change.audio_end_ms)

    async def _speech_started(self, audio_start_ms: int) -> None:
        self._speech_item_id = new_item_id()
        # Keep only the prefix padding before the speech: the turn is what follows.
        keep = (self._detector.now_ms - audio_start_ms) * 48 if self._detector else 0
        del self._buffer[: max(0, len(self._buffer) - keep)]
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": self._speech_item_id,
            }
        )
        vad = self.config.turn_detection or {}
        if vad.get("interrupt_response", True) and self._response is not None and not self._response.done():
            self._cancel_reason = "turn_detected"
            self._response.cancel()

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._speech_item_id or new_item_id()
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms, "item_id": item_id}
        )
        respond = bool((self.config.turn_detection or {}).get("create_response", True))
        await self._commit(item_id, respond=respond)

    async def _commit_event(self, event: dict[str, Any]) -> None:
        await self._commit(new_item_id(), respond=False)

    async def _commit(self, item_id: str, *, respond: bool) -> None:
        audio, self._buffer = bytes(self._buffer), bytearray()
        self._speech_item_id = None
        if self._detector is not None:
            self._detector.reset()
        if len(audio) < _MIN_COMMIT_MS * 48:
            raise ClientEventError(
                f"Expected at least {_MIN_COMMIT_MS}ms of audio, "
                f"but buffer only has {len(audio) / 48:.2f}ms.",
                code="input_audio_buffer_commit_empty",
                param=None,
            )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio"}],
        }
        previous = self.conversation.add(item)
        await self.send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": copy.deepcopy(item)}
        )
        self._queue(transcribe(self, item, audio, respond=respond))

    async def _clear(self, _event: dict[str, Any]) -> None:
        self._buffer = bytearray()
        self._speech_item_id = None
        if self._detector is not None:
            self._detector.reset()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = self.conversation.client_item(event.get("item"))
        index, audio = client_audio(item)
        previous = self.conversation.add(item, event.get("previous_item_id"))
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": copy.deepcopy(item)}
        )
        if audio is None:
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": copy.deepcopy(item)}
            )
        else:  # the model cannot hear: the audio becomes its transcript first (item.done follows it)
            self._queue(transcribe(self, item, audio, respond=False, index=index))

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        self.conversation.delete(str(item_id))
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.conversation.get(str(event.get("item_id")))
        if item is None:
            raise ItemProblem(f"Item '{event.get('item_id')}' does not exist.", "item_id")
        await self.send({"type": "conversation.item.retrieved", "item": copy.deepcopy(item)})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        """The client played `audio_end_ms` of an assistant item: keep the transcript of what was heard."""
        item_id, end = event.get("item_id"), event.get("audio_end_ms")
        run = self.last_run
        item = self.conversation.get(str(item_id))
        if (
            item is None
            or run is None
            or run.message is not item
            or item["content"][0].get("type") != "output_audio"
        ):
            raise ItemProblem(f"Item '{item_id}' is not an audio answer of this session.", "item_id")
        if not isinstance(end, int) or end < 0:
            raise ClientEventError("audio_end_ms must be a non-negative integer.", param="audio_end_ms")
        item["content"][0]["transcript"] = run.spoken.until(end)
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end,
            }
        )

    async def _response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ClientEventError("response must be an object", param="response")
        await self.start_response(params)

    async def start_response(self, params: dict[str, Any], chain: DeviceChain | None = None) -> None:
        if self._response is not None and not self._response.done():
            raise ClientEventError(
                "Conversation already has an active response in progress.",
                code="conversation_already_has_active_response",
                param=None,
            )
        modalities = params.get("output_modalities", self.config.output_modalities)
        if modalities not in (["audio"], ["text"]):
            raise ClientEventError(
                'output_modalities must be ["audio"] or ["text"]', param="response.output_modalities"
            )
        limit = max_output_tokens(
            params.get("max_output_tokens", self.config.max_output_tokens), "response.max_output_tokens"
        )
        instructions = str(params.get("instructions", self.config.instructions) or "")
        from .respond import run_response  # the response task's body lives beside the session

        # A response asked for while a turn is still being transcribed waits for it (a manual commit then
        # response.create); one started by that transcription itself must not wait for itself.
        pending = self._turns if self._turns is not asyncio.current_task() else None
        self._cancel_reason = "client_cancelled"
        self._response = asyncio.create_task(
            run_response(self, instructions, modalities, limit, pending, chain)
        )

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        if self._response is None or self._response.done():
            raise ClientEventError(
                "There is no active response to cancel.", code="response_cancel_not_active", param=None
            )
        self._cancel_reason = "client_cancelled"
        self._response.cancel()
        await asyncio.wait({self._response})

    # ---- tasks -------------------------------------------------------------------------------------
    def _queue(self, work: Awaitable[None]) -> None:
        """Run `work` after the previous turn work (transcriptions stay in order)."""
        previous = self._turns

        async def chained() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await work

        self._turns = asyncio.create_task(chained())

    @property
    def cancel_reason(self) -> str:
        return self._cancel_reason

    def _new_detector(self) -> TurnDetector | None:
        vad = self.config.turn_detection
        if vad is None:
            return None
        return TurnDetector(vad["threshold"], vad["prefix_padding_ms"], vad["silence_duration_ms"])

    @property
    def busy(self) -> bool:
        """A response or a transcription is running (the idle timeout waits for them)."""
        return any(task is not None and not task.done() for task in (self._response, self._turns))

    async def close(self) -> None:
        """The socket is gone: stop what runs and wait for its clean-up (units paused, leases returned)."""
        self._closed = True
        tasks = [t for t in (self._response, self._turns) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.chain.dissolve("the session ended")

    async def response_settled(self) -> None:
        """Wait for the running response, if any, to end (a cancelled one: its units cleaned up)."""
        if self._response is not None and not self._response.done():
            await asyncio.wait({self._response})


_HANDLERS: dict[str, Callable[[RealtimeSession, dict[str, Any]], Awaitable[None]]] = {
    "session.update": RealtimeSession._session_update,
    "input_audio_buffer.append": RealtimeSession._append,
    "input_audio_buffer.commit": RealtimeSession._commit_event,
    "input_audio_buffer.clear": RealtimeSession._clear,
    "conversation.item.create": RealtimeSession._item_create,
    "conversation.item.delete": RealtimeSession._item_delete,
    "conversation.item.retrieve": RealtimeSession._item_retrieve,
    "conversation.item.truncate": RealtimeSession._item_truncate,
    "response.create": RealtimeSession._response_create,
    "response.cancel": RealtimeSession._response_cancel,
}
