"""OpenAI wire types (pydantic v2), mirroring OpenAI's own names and field order."""

from .chat import (
    MAX_N,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    ImageURL,
    ResponseMessage,
)
from .common import ErrorDetail, ErrorResponse, StreamOptions, Usage
from .completions import Completion, CompletionChoice, CompletionRequest
from .models import Model, ModelList

__all__ = [
    "MAX_N",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "ErrorDetail",
    "ErrorResponse",
    "ImageURL",
    "Model",
    "ModelList",
    "ResponseMessage",
    "StreamOptions",
    "Usage",
]
