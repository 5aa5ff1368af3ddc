"""Wire types shared by several OpenAI resources."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ErrorDetail", "ErrorResponse", "StreamOptions", "Usage"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
