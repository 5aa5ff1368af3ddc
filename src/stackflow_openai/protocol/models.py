"""`GET /v1/models` wire types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["Model", "ModelList", "StackFlowModelInfo"]


class StackFlowModelInfo(BaseModel):
    """Gateway addition: what a model is for, so that a UI can filter e.g. speech models out of a chat
    picker (OpenAI's own list says nothing of the kind)."""

    kind: Literal["chat", "vision", "speech", "transcription"]
    device: str | None  # the first device that serves it; None for a model forwarded upstream
    devices: list[str]  # every device that serves it
    alias_of: str | None  # for a name such as tts-1: the model it stands for


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # --- gateway addition ---
    stackflow: StackFlowModelInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
