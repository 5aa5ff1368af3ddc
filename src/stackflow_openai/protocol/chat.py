"""`POST /v1/chat/completions` wire types, fields in OpenAI's order.

Requests are lenient (``extra="allow"``): only the fields the gateway acts on are declared and validated;
every other field lands in ``model_extra`` and is reported by the service as ignored (X-Ignored-Params).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import StreamOptions, Usage

__all__ = [
    "MAX_N",
    "MAX_TOKENS_LIMIT",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ContentPart",
    "ImageURL",
    "ResponseMessage",
    "StopParam",
]

MAX_N = 8  # choices run one after another on one device unit: more would only make the client wait
# A max_tokens above what the model can generate is a cap that cannot bind and is clamped (a client set
# up for larger models may send 4096 to a 1023-token model); one beyond any model is a mistake.
MAX_TOKENS_LIMIT = 2**31 - 1
StopParam = str | Annotated[list[str], Field(max_length=4)] | None
FinishReason = Literal["stop", "length"]


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    """One part of a message's content list. Which fields must be present depends on `type`; the service
    checks that, so an unsupported part type gets a precise 400 rather than a union error."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None
    refusal: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["developer", "system", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: StopParam = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # Acted on by the gateway (services/tools.py, services/structured.py), which checks them itself so
    # that a fault gets a 400 naming the exact field.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]  # {"role": "assistant", "content": ""} first, {"content": "..."} then, {} last
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
