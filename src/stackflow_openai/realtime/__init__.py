"""The OpenAI Realtime API (GA) over the device's transcription, chat and speech units."""

from .config import SessionConfig
from .pipeline import VoicePipeline, VoiceServices, resolve_pipeline
from .session import RealtimeSession

__all__ = ["RealtimeSession", "SessionConfig", "VoicePipeline", "VoiceServices", "resolve_pipeline"]
