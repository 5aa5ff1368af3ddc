"""OpenAI requests ⇄ backend calls. No FastAPI here: every service is testable with fake backends."""

from .chat import ChatService
from .common import JsonResult, ProxyResult, ServiceResult, StreamResult
from .completions import CompletionService
from .images import ImageLoader, ImagePolicy
from .models import ModelService
from .registry import ModelRegistry, resolve_model
from .responses import ResponsesService

__all__ = [
    "ChatService",
    "CompletionService",
    "ImageLoader",
    "ImagePolicy",
    "JsonResult",
    "ModelRegistry",
    "ModelService",
    "ProxyResult",
    "ResponsesService",
    "ServiceResult",
    "StreamResult",
    "resolve_model",
]
