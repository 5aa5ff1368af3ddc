"""A committed user audio turn: its transcript, then (server VAD) the response, on one of two paths.

- The gateway's path: the transcription service transcribes the turn, then a response runs through the
  chat core and the speech service (respond.py).
- The device chain (chain.py, chained.py), for a turn that may take it: the audio goes to the reserved
  transcription unit, and the device's llm and melotts answer it by themselves; the gateway reads each stage
  and sends the same events. If the chain fails before the transcript, the gateway's path takes the turn.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

from stackflow_openai.errors import to_openai_error

if TYPE_CHECKING:
    from .chain import DeviceChain
    from .session import RealtimeSession

__all__ = ["transcribe"]

log = logging.getLogger(__name__)


async def transcribe(
    session: RealtimeSession, item: dict[str, Any], audio: bytes, *, respond: bool, index: int = 0
) -> None:
    if respond and index == 0:
        chain = await session.chain.for_turn(session)
        if chain is not None and await _on_chain(session, chain, item, audio):
            return
    else:  # a turn the device does not hear: it would no longer hold the conversation
        await session.chain.dissolve("an audio item outside server VAD")
    started = time.monotonic()
    try:
        transcript = await session.services.transcribe(
            audio, (session.config.transcription or {}).get("language")
        )
    except Exception as exc:  # APIError / BackendError, or a bug (logged there): no transcript
        item["content"][index]["transcript"] = ""
        if session.config.transcription is not None:
            _, body, _ = to_openai_error(exc)
            await session.send(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item["id"],
                    "content_index": 0,
                    "error": body["error"],
                }
            )
        else:
            await session.api_error(exc, None)
        return
    log.debug(
        "realtime %s: transcribed %.1f s in %.2f s",
        session.id,
        len(audio) / 48000,
        time.monotonic() - started,
    )
    await _transcribed(session, item, index, transcript, len(audio))
    if respond and transcript:
        await session.start_response({})


async def _transcribed(
    session: RealtimeSession, item: dict[str, Any], index: int, transcript: str, audio_bytes: int
) -> None:
    item["content"][index]["transcript"] = transcript
    if session.config.transcription is not None:
        await session.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item["id"],
                "content_index": index,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": round(audio_bytes / 48000, 3)},
            }
        )
    await session.send(
        {"type": "conversation.item.done", "previous_item_id": None, "item": copy.deepcopy(item)}
    )


async def _on_chain(session: RealtimeSession, chain: DeviceChain, item: dict[str, Any], audio: bytes) -> bool:
    """The turn on the device chain; False if the chain failed before anything was sent to the client."""
    try:
        transcript, answered = await chain.hear(audio)
    except Exception as exc:  # the device failed: the units are given back, the gateway's path retries
        await session.chain.dissolve(f"the device chain failed ({type(exc).__name__}: {exc})")
        return False
    session.chain.turns += 1
    await _transcribed(session, item, 0, transcript, len(audio))
    if transcript and answered:
        await session.start_response({}, chain)
    elif answered:  # a bare "." still reaches the device's llm, which answers it: nobody asked
        try:
            await chain.drain()
        except Exception as exc:  # a unit that does not end its output is broken: the chain goes
            await session.chain.dissolve(f"the device chain failed ({type(exc).__name__}: {exc})")
    return True
