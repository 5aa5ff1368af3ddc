"""The contract between the OpenAI services and whatever runs a model (a device unit, an upstream server).

Services speak in OpenAI terms; backends in units and text. A backend knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "BackendBusy",
    "BackendError",
    "BackendInvalidRequest",
    "BackendUnavailable",
    "ChatBackend",
    "ChatModelInfo",
    "ChatUnit",
    "ModelEntry",
    "ProxyBackend",
    "ProxyResponse",
    "SpeechBackend",
    "TranscriptionBackend",
    "UnitSettings",
]


class BackendError(Exception):
    """Base of backend failures; the HTTP layer maps each subclass to one OpenAI error."""

    code: str = "backend_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BackendBusy(BackendError):
    """Every unit is in use and the wait queue is full or its deadline passed → 503 + Retry-After."""

    code = "server_busy"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(BackendError):
    """The device (or upstream) cannot serve now: unreachable, out of memory, failed to load → 503."""

    code = "device_unavailable"


class BackendInvalidRequest(BackendError):
    """The device refused the input itself (e.g. undecodable image data) → 400."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatModelInfo:
    prefill_len: int  # tokens the templated prompt may use (device prefill window)
    max_token_len: int  # prompt + generated tokens the device can hold (KV capacity)
    tokenizer: str  # "qwen" or "llama" (exact BPE), or "estimate" (conservative char-based count)
    template: str  # chat template family used to count template tokens: "qwen" | "llama" | "generic"
    vision: bool = False
    image_tokens: int = 0  # prefill positions one image takes (VLM)
    image_system_prompt: str | None = None  # what the device puts in place of the system prompt with an image
    text_system_prompt: str | None = None  # the same for a text-only prompt ("" : none at all)
    max_images: int | None = None  # images one inference can use (None: no limit); the device keeps the last
    prefill_chunk: int | None = None  # set when `prefill_len` is only the prefill chunk, not the window
    # A ctx model's KV positions kept across inferences (0: single-turn). Its units continue a conversation
    # from their cache (backends/conversations.py); `prefill_len` is then the window of a replay.
    context_len: int = 0
    name: str = ""  # the device model (lsmode mode): its family picks the tool format and reasoning split


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """Fixed at setup on the device; instances are pooled by this signature."""

    system_prompt: str
    max_token_len: int
    temperature: float | None = None
    top_p: float | None = None


class ChatUnit(Protocol):
    # The last generation was ended by the device at its decode mask, not by the model: its finish reason
    # is `length` (only a ctx unit's turn can end there unseen: backends/stackflow_chat.py).
    stopped_at_capacity: bool

    def generate(self, prompt: str, *, images: list[bytes], turn: Any = None) -> AsyncIterator[str]:
        """Text deltas of one generation. Closing the iterator early (aclose) stops the generation on the
        device (pause) and leaves the unit clean for the next generate.

        `turn` is set only for a ctx model (`info.context_len > 0`): a backends.conversations.
        ConversationTurn; the unit then sends only the new message when its cache holds the conversation.
        (Typed Any: this module sits below conversations.py.)"""
        ...


class ChatBackend(Protocol):
    info: ChatModelInfo

    def lease(self, settings: UnitSettings) -> AbstractAsyncContextManager[ChatUnit]:
        """Hold one unit set up with `settings` for the block; raises BackendBusy/BackendUnavailable.

        A ctx model's backend (only) also takes `conversation=`, the digest of the messages before the
        new one, to prefer the unit that holds it: see services/generation.py."""
        ...


@dataclass(frozen=True, slots=True)
class ProxyResponse:
    status_code: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]  # passed through chunk by chunk


class ProxyBackend(Protocol):
    async def forward(self, path: str, body: dict[str, Any]) -> ProxyResponse:
        """POST `body` (with the upstream model name substituted) to the upstream `path`."""
        ...


class SpeechBackend(Protocol):
    voices: list[str]  # OpenAI-facing voice names this model accepts

    def synthesize(self, text: str, *, voice: str) -> AsyncIterator[bytes]:
        """s16le mono 16 kHz PCM, one piece per sentence as the device sends it.

        Closing the iterator early frees the unit."""
        ...


class TranscriptionBackend(Protocol):
    window_seconds: float  # longest audio one inference accepts (whisper: 30 s)
    can_translate: bool  # the model itself can translate to English

    def language(self, requested: str | None) -> str | None:
        """The language code the model transcribes in when a request asks for `requested` (None or a
        code); None when that is not known."""
        ...

    async def transcribe(
        self, pcm: bytes, *, language: str | None, prompt: str | None, translate: bool = False
    ) -> str:
        """One window of s16le mono 16 kHz PCM → its text ('' when nothing was heard)."""
        ...


@dataclass(slots=True)
class ModelEntry:
    """One model as clients see it in /v1/models."""

    id: str
    kind: Literal["chat", "proxy", "speech", "transcription"]
    owned_by: str = "stackflow"
    created: int = 0
    chat: ChatBackend | None = None
    proxy: ProxyBackend | None = None
    speech: SpeechBackend | None = None
    transcription: TranscriptionBackend | None = None
    strict_params: bool = False
    allow_n: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ()  # names of the devices whose lsmode lists it (none for a proxy)
