"""HTTP routers, one per OpenAI resource. HTTP only: parse, pick JSON or SSE, no device logic."""

from .audio import router as audio_router
from .chat import router as chat_router
from .completions import router as completions_router
from .models import router as models_router
from .responses import router as responses_router

__all__ = ["audio_router", "chat_router", "completions_router", "models_router", "responses_router"]
