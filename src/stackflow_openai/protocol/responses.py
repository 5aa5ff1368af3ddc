"""`POST /v1/responses` request fields, in OpenAI's order (CreateResponse).

Lenient like the chat request (``extra="allow"``): only the fields the gateway acts on are declared;
the rest land in ``model_extra`` and are reported as ignored. Input items stay plain dicts here: the
service walks them itself, so that an unsupported item or content part gets a 400 naming its exact
place (`input[2].content[0].type`) rather than a union error from pydantic.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .chat import MAX_TOKENS_LIMIT

__all__ = ["ResponseCreateRequest", "ResponseInputItemsQuery"]

_METADATA_PAIRS = 16  # OpenAI's limits on `metadata`: 16 pairs, keys up to 64 and values up to 512 chars
_METADATA_KEY = 64
_METADATA_VALUE = 512


class ResponseCreateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > _METADATA_PAIRS:
            raise ValueError(f"at most {_METADATA_PAIRS} key-value pairs")
        for key, item in value.items():
            if len(key) > _METADATA_KEY:
                raise ValueError(f"keys are at most {_METADATA_KEY} characters")
            if len(item) > _METADATA_VALUE:
                raise ValueError(f"values are at most {_METADATA_VALUE} characters")
        return value


class ResponseInputItemsQuery(BaseModel):
    """`GET /v1/responses/{id}/input_items` query parameters (a cursor list, as OpenAI's lists)."""

    model_config = ConfigDict(extra="forbid")

    after: str | None = None
    before: str | None = None
    limit: int = Field(default=20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    include: list[str] | None = None
