"""Emulated StackFlow units: one module per family (llm+vlm, melotts+tts, whisper+asr)."""
