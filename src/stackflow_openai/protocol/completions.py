"""`POST /v1/completions` (legacy text completions) wire types, fields in OpenAI's order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .chat import MAX_N, MAX_TOKENS_LIMIT, StopParam
from .common import StreamOptions, Usage

__all__ = ["Completion", "CompletionChoice", "CompletionRequest"]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    # Token-id prompts (lists of integers) are not accepted: the device takes text only.
    prompt: str | Annotated[list[str], Field(min_length=1)]
    echo: bool | None = None
    # OpenAI's default is 16 (applied by the service); 0 with `echo` scores a prompt without generating.
    max_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: StopParam = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("prompt", mode="before")
    @classmethod
    def _no_token_ids(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(v, int | list) for v in value):
            raise ValueError("token-id prompts are not supported; send the prompt as text")
        return value


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """Both the response and each stream chunk (OpenAI uses one shape for both here)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
