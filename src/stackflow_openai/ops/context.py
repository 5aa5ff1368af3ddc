"""What is known about the HTTP request being served, for its log line and metrics.

The request middleware sets a fresh `RequestInfo` in a context variable; code deeper down (the device
router, the service observer) fills in the model and the device. Tasks created while serving the
request copy the context, so they see (and update) the same object.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["RequestInfo", "current_request", "note_device", "note_model"]


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    model: str = ""
    device: str = ""
    ttft: float | None = None  # seconds to the first generated text, when a stream showed it


current_request: ContextVar[RequestInfo | None] = ContextVar("stackflow_openai_request", default=None)


def note_model(model: str) -> None:
    info = current_request.get()
    if info is not None and not info.model:
        info.model = model


def note_device(name: str) -> None:
    info = current_request.get()
    if info is not None:
        info.device = name if not info.device or info.device == name else f"{info.device},{name}"
